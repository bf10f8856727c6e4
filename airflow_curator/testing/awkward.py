"""Small shards with awkward records for the annotation tests (shared by core and runtime tests)."""

from __future__ import annotations

import io
import json
import random
import tarfile

from airflow_curator.testing.dataset import WORDS, add_member, make_jpeg

# how each record's image is made: (member extension, kind)
LAYOUT = [
    ("jpg", "ok"),
    ("png", "ok"),
    ("webp", "ok"),
    ("jpeg", "ok"),
    ("jpg", "truncated"),
    ("jpg", "ok"),
    (None, "missing"),
    ("jpg", "garbled"),
    ("jpg", "ok"),
    ("jpg", "ok"),
]
FORMATS = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}


def write_awkward_shard(folder, shard: int = 0, seed: int = 0) -> dict[str, str]:
    """One shard whose tar order is shuffled against its (sorted) Parquet; returns id -> kind.

    Kinds: ok, truncated (half a JPEG), missing (no image member), garbled (a JPEG whose
    entropy-coded data is overwritten: structurally whole, the decoder fails on it).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    rows = []
    for i, (ext, kind) in enumerate(LAYOUT):
        rid = f"{shard:05d}{i:04d}"
        size = (rng.randrange(40, 90), rng.randrange(40, 90))
        image = make_jpeg(rng, size, FORMATS[ext or "jpg"])
        if kind == "truncated":
            image = image[: len(image) // 2]
        elif kind == "garbled":
            image = image[:200] + bytes(rng.randrange(256) for _ in range(300)) + image[500:]
        rows.append((rid, ext, kind, image, WORDS[i % len(WORDS)] + f" #{i}"))
    order = list(rows)
    rng.shuffle(order)
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / f"{shard:05d}.tar", "w", format=tarfile.GNU_FORMAT) as tar:
        for rid, ext, _, image, caption in order:
            if ext:
                add_member(tar, f"{rid}.{ext}", image)
            add_member(tar, f"{rid}.txt", caption.encode())
            add_member(tar, f"{rid}.json", json.dumps({"key": rid}).encode())
    buf = io.BytesIO()
    pq.write_table(pa.table({"key": [r[0] for r in rows], "caption": [r[4] for r in rows]}), buf)
    (folder / f"{shard:05d}.parquet").write_bytes(buf.getvalue())
    return {r[0]: r[2] for r in rows}


def captions(folder, shard: int = 0) -> dict[str, str]:
    import pyarrow.parquet as pq

    t = pq.read_table(folder / f"{shard:05d}.parquet")
    return dict(zip(t.column("key").to_pylist(), t.column("caption").to_pylist()))


def photo(seed: int, size: tuple[int, int] = (512, 384), quality: int = 85) -> bytes:
    """A noisy tinted gradient as a JPEG: at 512x384, q85 about 60 KB, like a web photo (the
    annotate benchmark's images)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    ramp = np.linspace(0, 255, w)[None, :, None] * np.ones((h, 1, 3)) * rng.uniform(0.4, 1, 3)
    pixels = np.clip(ramp + rng.normal(0, 15, (h, w, 3)), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=quality)
    return out.getvalue()
