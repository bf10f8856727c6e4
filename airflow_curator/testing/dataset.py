"""A small but real image-text WebDataset, for the demo, tests and benchmarks.

Images are real JPEGs (Pillow) unless ``image_bytes`` asks for random filler of a given size, which
is enough for steps that never decode (index, reshard) and fast to make at gigabyte scale.
"""

from __future__ import annotations

import io
import json
import logging
import random
import tarfile

from airflow_curator.core.io import storage
from airflow_curator.core.wds.naming import record_id, shard_name

logger = logging.getLogger(__name__)

WORDS = (
    "a photo of a red cat on a sofa",
    "sunset over the mountains with clouds",
    "close-up of a green leaf with water drops",
    "city street at night with lights",
    "a bowl of fruit on a wooden table",
    "an old car parked near the beach",
    "abstract painting with blue and yellow shapes",
    "a dog running in the snow",
)
TAR_FORMATS = {"gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT, "ustar": tarfile.USTAR_FORMAT}


def make_jpeg(rng: random.Random, size: tuple[int, int] = (64, 64), fmt: str = "JPEG") -> bytes:
    """A small natural-ish image: a random gradient with a few blocks, encoded with Pillow."""
    from PIL import Image, ImageDraw

    w, h = size
    c0 = [rng.randrange(256) for _ in range(3)]
    c1 = [rng.randrange(256) for _ in range(3)]
    img = Image.linear_gradient("L").resize((w, h)).convert("RGB")
    img = Image.merge(
        "RGB",
        [
            b.point(lambda v, a=a, z=z: a + (z - a) * v // 255)
            for b, a, z in zip(img.split(), c0, c1, strict=True)
        ],
    )
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        x0, y0 = rng.randrange(w), rng.randrange(h)
        draw.rectangle(
            (x0, y0, x0 + rng.randrange(1, w // 2 + 2), y0 + rng.randrange(1, h // 2 + 2)),
            fill=tuple(rng.randrange(256) for _ in range(3)),
        )
    out = io.BytesIO()
    img.save(out, format=fmt, quality=90) if fmt == "JPEG" else img.save(out, format=fmt)
    return out.getvalue()


def add_member(tar: tarfile.TarFile, name: str, data: bytes, mtime: float = 0) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = mtime
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def write_demo_dataset(
    url: str,
    shards: int = 2,
    records_per_shard: int = 20,
    *,
    seed: int = 0,
    image_size: tuple[int, int] = (64, 64),
    image_bytes: int | None = None,
    tar_format: str = "gnu",
    samples_per_shard: int = 10000,
    max_shards: int = 5,
) -> list[str]:
    """Write ``NNNNN.tar`` + ``NNNNN.parquet`` shards at ``url``; return the record ids."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    storage.makedirs(url)
    all_ids: list[str] = []
    for s in range(shards):
        rows = {"key": [], "caption": [], "url": [], "width": [], "height": []}
        stem = shard_name(s, max_shards)
        with (
            storage.atomic_writer(storage.join(url, f"{stem}.tar")) as f,
            tarfile.open(fileobj=f, mode="w", format=TAR_FORMATS[tar_format]) as tar,
        ):
            for i in range(records_per_shard):
                rid = record_id(s, i, samples_per_shard, max_shards)
                caption = rng.choice(WORDS)
                if image_bytes is not None:
                    image = rng.randbytes(image_bytes)
                else:
                    image = make_jpeg(rng, image_size)
                meta = {"key": rid, "caption": caption, "url": f"https://example.com/{rid}.jpg"}
                add_member(tar, f"{rid}.jpg", image)
                add_member(tar, f"{rid}.txt", caption.encode())
                add_member(tar, f"{rid}.json", json.dumps(meta, sort_keys=True).encode())
                rows["key"].append(rid)
                rows["caption"].append(caption)
                rows["url"].append(meta["url"])
                rows["width"].append(image_size[0])
                rows["height"].append(image_size[1])
                all_ids.append(rid)
        out = io.BytesIO()
        pq.write_table(pa.table(rows), out)
        storage.write_bytes(storage.join(url, f"{stem}.parquet"), out.getvalue())
        logger.info("demo shard %s: %d records", stem, records_per_shard)
    return all_ids
