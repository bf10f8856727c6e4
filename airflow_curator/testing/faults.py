"""A corpus of bad inputs: each case is a small dataset with one fault, and what the user gets.

``IMAGE_FAULTS`` are records a curation run must flag and get past (one shard holds them all);
``SHARD_FAULTS`` are datasets a step must refuse with an error naming the shard and the reason.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from airflow_curator.testing.dataset import add_member, make_jpeg, write_demo_dataset


def _gif() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (20, 20), (255, 0, 0)).save(out, "GIF")
    return out.getvalue()


def _garbled(rng: random.Random) -> bytes:
    jpeg = make_jpeg(rng, (96, 96))
    return jpeg[:200] + bytes(rng.randrange(256) for _ in range(400)) + jpeg[600:]


# fault -> (member extension or None, image bytes, expected error text or None when it is scored)
def image_faults(rng: random.Random) -> dict[str, tuple[str | None, bytes | None, str | None]]:
    return {
        "ok": ("jpg", make_jpeg(rng), None),
        "corrupt_jpeg": ("jpg", _garbled(rng), "JPEG is corrupt"),
        "truncated_jpeg": ("jpg", make_jpeg(rng, (96, 96))[:700], "truncated"),
        "zero_bytes": ("jpg", b"", "empty"),
        "png_bytes_in_jpg": ("jpg", make_jpeg(rng, fmt="PNG"), None),
        "unsupported_gif": ("jpg", _gif(), "not a JPEG, PNG or WebP"),
        "missing_image": (None, None, "no image"),
        "missing_caption": ("jpg", make_jpeg(rng), None),
        "missing_json": ("jpg", make_jpeg(rng), None),
        "ok_png": ("png", make_jpeg(rng, fmt="PNG"), None),
    }


def write_image_faults(folder: Path, seed: int = 0) -> dict[str, str]:
    """One shard with a record per image fault; returns record id -> fault."""
    rng = random.Random(seed)
    faults = image_faults(rng)
    folder.mkdir(parents=True, exist_ok=True)
    ids: dict[str, str] = {}
    with tarfile.open(folder / "00000.tar", "w", format=tarfile.GNU_FORMAT) as tar:
        for i, (fault, (ext, image, _)) in enumerate(faults.items()):
            rid = f"00000{i:04d}"
            ids[rid] = fault
            if ext:
                add_member(tar, f"{rid}.{ext}", image or b"")
            if fault != "missing_caption":
                add_member(tar, f"{rid}.txt", f"a photo, {fault}".encode())
            if fault != "missing_json":
                add_member(tar, f"{rid}.json", json.dumps({"key": rid}).encode())
    pq.write_table(
        pa.table({"key": list(ids), "fault": list(ids.values())}), folder / "00000.parquet"
    )
    return ids


def _rewrite_tar(
    path: Path, change: Callable[[list[tuple[str, bytes]]], list[tuple[str, bytes]]]
) -> None:
    with tarfile.open(path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]  # type: ignore[union-attr]
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in change(members):
            add_member(tar, name, data)


def _rewrite_parquet(path: Path, change: Callable[[pa.Table], pa.Table]) -> None:
    pq.write_table(change(pq.read_table(path)), path)


def _json_of(rid: str, data: bytes) -> Callable[[list[tuple[str, bytes]]], list[tuple[str, bytes]]]:
    return lambda ms: [(n, data if n == f"{rid}.json" else d) for n, d in ms]


BAD = "000010002"  # a record of shard 00001
# fault -> (how to damage shard 00001 of a fresh 2-shard dataset, failing step, error pattern)
SHARD_FAULTS: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "json_not_json": (
        lambda d: _rewrite_tar(d / "00001.tar", _json_of(BAD, b"{not json")),
        "annotate",
        rf"shard 00001: record {BAD}: \.json is not valid JSON",
    ),
    "json_without_id": (
        lambda d: _rewrite_tar(d / "00001.tar", _json_of(BAD, b'{"caption": "x"}')),
        "annotate",
        rf"shard 00001: record {BAD}: \.json has no 'key' field",
    ),
    "truncated_tar": (
        lambda d: (d / "00001.tar").write_bytes((d / "00001.tar").read_bytes()[:5000]),
        "index",
        r"shard 00001: .*truncated tar",
    ),
    "member_name_not_an_id": (
        lambda d: _rewrite_tar(d / "00001.tar", lambda ms: ms + [("README.txt", b"hello")]),
        "annotate",
        r"shard 00001: 1 records in the tar are not in the Parquet: README",
    ),
    "duplicate_member": (
        lambda d: _rewrite_tar(
            d / "00001.tar", lambda ms: ms[:3] + [(ms[0][0], b"again")] + ms[3:]
        ),
        "index",  # the indexer groups members as the readers do: it refuses the record too
        r"shard 00001: record 000010000: duplicate member '000010000.jpg'",
    ),
    "parquet_ids_differ": (
        lambda d: _rewrite_parquet(
            d / "00001.parquet",
            lambda t: t.set_column(
                0, "key", pa.array(["000019999", *t.column("key").to_pylist()[1:]])
            ),
        ),
        "annotate",
        r"shard 00001: 1 records in the tar are not in the Parquet: 000010000",
    ),
    "duplicate_ids": (
        lambda d: _rewrite_parquet(
            d / "00001.parquet", lambda t: pa.concat_tables([t, t.slice(0, 1)])
        ),
        "annotate",
        r"shard 00001: .*00001.parquet has duplicate ids: 000010000",
    ),
    "missing_id_column": (
        lambda d: _rewrite_parquet(d / "00001.parquet", lambda t: t.drop(["key"])),
        "annotate",
        r"shard 00001: .*has no id column 'key'",
    ),
    "parquet_for_missing_tar": (
        lambda d: (d / "00001.tar").unlink(),
        "discover",
        r"shard 00001: 00001.parquet has no 00001.tar",
    ),
}


def write_shard_fault(folder: Path, fault: str) -> None:
    write_demo_dataset(str(folder), shards=2, records_per_shard=4, seed=1)
    SHARD_FAULTS[fault][0](folder)
