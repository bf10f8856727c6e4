from __future__ import annotations

import errno
import fcntl
import io
import os
import tarfile

import pytest

from airflow_curator.core.wds.index import build_index, index_text
from airflow_curator.core.wds.tarstream import BLOCK, TarScanner
from airflow_curator.core.wds.tarwriter import BATCH, TarWriter, header

MEMBERS = [
    ("000000000.jpg", b""),
    ("000000000.txt", b"x" * 511),
    ("000000001.jpg", b"y" * 512),
    ("000000001.txt", b"z" * 513),
    ("d/" + "n" * 120 + ".json", b'{"key": "1"}'),  # GNU long name
    ("big.bin", bytes(range(256)) * 300),  # > 64 KiB path: written in pieces
]


def write(members, checksum=True) -> tuple[bytes, TarWriter]:
    buf = io.BytesIO()
    w = TarWriter(buf, checksum=checksum)
    for name, data in members:
        w.add_record([(name, memoryview(data))])
    w.close()
    return buf.getvalue(), w


def test_tarfile_reads_every_member_with_fixed_attributes():
    data, _ = write(MEMBERS)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        infos = tar.getmembers()
        assert [i.name for i in infos] == [n for n, _ in MEMBERS]
        for info, (_, payload) in zip(infos, MEMBERS, strict=True):
            assert tar.extractfile(info).read() == payload
            assert (info.mtime, info.uid, info.gid, info.mode) == (0, 0, 0, 0o644)
            assert (info.uname, info.gname) == ("", "")


def test_members_offsets_match_the_scanner_and_hash_matches():
    import hashlib

    data, w = write(MEMBERS)
    scanned = [m for m, _ in TarScanner(io.BytesIO(data), len(data)).members()]
    assert [(m.name, m.offset, m.data_offset, m.size) for m in scanned] == [
        (m.name, m.offset, m.data_offset, m.size) for m in w.members
    ]
    assert w.pos == len(data)
    assert w.sha256 == hashlib.sha256(data).hexdigest()


def test_index_from_written_members_equals_index_of_the_file(tmp_path):
    members = [(f"{i:09d}.{ext}", bytes([i]) * (i * 97 + 1)) for i in range(5) for ext in "ab"]
    data, w = write(members, checksum=False)
    path = tmp_path / "00000.tar"
    path.write_bytes(data)
    assert w.sha256 is None
    assert index_text(w.members)[0] == build_index(str(path))[0]


def test_same_members_same_bytes():
    assert write(MEMBERS)[0] == write(list(MEMBERS))[0]


@pytest.mark.parametrize("size", [0, 1, 8**11 - 1])
def test_header_checksum_is_valid(size):
    h = header("a.txt", size)
    info = tarfile.TarInfo.frombuf(h, "utf-8", "surrogateescape")  # raises on a bad checksum
    assert info.size == size


RECORDS = [
    [(f"{i:09d}.{ext}", bytes([i % 256]) * (i * 37 % 5000)) for ext in ("jpg", "json", "txt")]
    for i in range(900)  # several staging batches
] + [[("000000900.bin", bytes(range(256)) * 9000)]]  # a member bigger than a batch


def write_records(path, direct: bool, reserve: bool) -> TarWriter:
    """Write RECORDS to ``path``; ``reserve``: through reserve/commit where it applies."""
    with open(path, "wb") as f:
        w = TarWriter(f, direct=direct)
        for r in RECORDS:
            key = r[0][0].split(".")[0]
            slots = w.reserve([len(d) for _, d in r]) if reserve else None
            if slots is None:
                w.add_record(r)
                continue
            for slot, (_, data) in zip(slots, r, strict=True):
                slot[:] = b"\xff" * BLOCK + data + b"\xee" * (len(slot) - BLOCK - len(data))
            assert w.commit(key, [n.split(".", 1)[1] for n, _ in r])
        w.close()
    return w


@pytest.mark.parametrize("direct", [False, True])
@pytest.mark.parametrize("reserve", [False, True])
def test_file_writes_equal_the_plain_writes(tmp_path, direct, reserve):
    """Staged batches, direct I/O and filling reserved slots (junk where headers and padding
    go) all give the bytes of plain member-by-member writes."""
    path = tmp_path / "t.tar"
    w = write_records(path, direct, reserve)
    expected, plain = write([m for r in RECORDS for m in r])
    assert path.read_bytes() == expected
    assert w.sha256 == plain.sha256 and w.pos == len(expected)
    assert [(m.name, m.offset, m.data_offset, m.size) for m in w.members] == [
        (m.name, m.offset, m.data_offset, m.size) for m in plain.members
    ]


def test_direct_io_refused_midway_falls_back_to_plain_writes(tmp_path, monkeypatch):
    real_write, refused = os.write, []

    def write_once_refused(fd, data):
        if not refused and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write_once_refused)
    path = tmp_path / "t.tar"
    w = write_records(path, direct=True, reserve=True)
    assert refused and not w.sink.direct
    assert path.read_bytes() == write([m for r in RECORDS for m in r])[0]


def test_reserve_refuses_long_names_and_huge_records(tmp_path):
    w = TarWriter(io.BytesIO())
    assert w.reserve([BATCH]) is None
    assert w.reserve([10]) is not None
    assert not w.commit("k" * 98, ["json"])  # 103 bytes: needs a GNU long name
    assert w.reserve([10, 20]) is not None
    assert not w.commit("k", ["jpg", "x" * 99])  # nothing written for the first member either
    assert w.members == [] and w.pos == 0
    w.add_record([("k" * 98 + ".json", b"{}")])  # the general path writes it
    w.close()
    assert w.members[0].name == "k" * 98 + ".json"
