from __future__ import annotations

import io
import tarfile

import pytest

from airflow_curator.core.errors import TarFormatError
from airflow_curator.core.wds.tarstream import TarScanner, parse_pax
from airflow_curator.testing.tars import make_tar, record_members

LONG = "d/" * 80  # > 100 characters: GNU long names / PAX paths


def reference(raw: bytes) -> list[tuple[str, int, int]]:
    with tarfile.open(fileobj=io.BytesIO(raw)) as t:
        return [(m.name, m.offset_data, m.size) for m in t if m.isreg()]


def scan(raw: bytes, chunk: int = 4096, with_data: bool = True):
    scanner = TarScanner(io.BytesIO(raw), len(raw), chunk=chunk)
    return list(scanner.members(with_data=with_data))


@pytest.mark.parametrize("fmt", ["ustar", "gnu", "pax"])
@pytest.mark.parametrize("chunk", [1024, 4096, 1 << 20])
def test_members_match_tarfile(fmt, chunk):
    members = record_members(5)
    if fmt != "ustar":
        members += [(LONG + "000000009.jpg", b"x" * 3000), ("ünï/000000010.txt", b"caption")]
    raw = make_tar(members, fmt, mtime=1.5 if fmt == "pax" else 0)
    got = scan(raw, chunk)
    assert [(m.name, m.data_offset, m.size) for m, _ in got] == reference(raw)
    assert [d for _, d in got] == [data for _, data in members]


def test_member_larger_than_chunk():
    raw = make_tar([("000000000.jpg", bytes(range(256)) * 100), ("000000000.txt", b"hi")])
    got = scan(raw, chunk=1024)
    assert got[0][1] == bytes(range(256)) * 100 and got[1][1] == b"hi"


def test_local_file_is_mapped(tmp_path):
    raw = make_tar(record_members(3), "pax", mtime=2.5)
    path = tmp_path / "00000.tar"
    path.write_bytes(raw)
    with open(path, "rb") as f:
        scanner = TarScanner(f)
        assert scanner.mm is not None
        got = [(m.name, m.data_offset, m.size) for m, _ in scanner.members()]
        scanner.close()
    assert got == reference(raw)


def test_truncated_mid_member_is_an_error():
    raw = make_tar(record_members(3))
    cut = raw[: reference(raw)[4][1] + 3]  # inside the 5th member's data
    with pytest.raises(TarFormatError, match="truncated"):
        scan(cut)


def test_truncated_mid_header_is_an_error():
    raw = make_tar(record_members(2))
    with pytest.raises(TarFormatError, match="truncated"):
        scan(raw[: reference(raw)[1][1] - 200])


def test_garbage_after_end_marker_is_ignored():
    raw = make_tar(record_members(2))
    assert [m.name for m, _ in scan(raw + b"\xff" * 5000)] == [n for n, *_ in reference(raw)]


def test_garbage_instead_of_header_is_an_error():
    raw = make_tar(record_members(2))
    bad = raw[:1024] + b"\x7f" * 512 + raw[1536:]  # overwrite the second header
    with pytest.raises(TarFormatError, match="bad checksum"):
        scan(bad)


def test_missing_end_marker_reads_all_members():
    raw = make_tar(record_members(2))
    last = reference(raw)[-1]
    end = last[1] + (last[2] + 511) // 512 * 512
    assert len(scan(raw[:end])) == 6


def test_parse_pax_records():
    data = b"18 path=a/b/c.jpg\n11 size=42\n"
    assert parse_pax(data, 0) == {"path": "a/b/c.jpg", "size": "42"}
    with pytest.raises(TarFormatError):
        parse_pax(b"xx path\n", 0)


def test_memory_filesystem(tmp_path):
    import fsspec

    from airflow_curator.core.wds.records import iter_records

    raw = make_tar(record_members(4), "pax", mtime=1.25)
    with fsspec.open("memory://bucket/ds/00000.tar", "wb") as f:
        f.write(raw)
    records = list(iter_records("memory://bucket/ds/00000.tar", "00000"))
    assert [r.id for r in records] == [f"{i:09d}" for i in range(4)]
    assert records[2].data["txt"] == b"txt-2-" * 75
