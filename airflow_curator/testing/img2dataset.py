"""Datasets laid out the way img2dataset 1.47 writes its ``webdataset`` output (no network).

- keys are ``shard digits + len(str(number_sample_per_shard - 1))`` wide (7 digits for 100);
- members in download-completion order, each preceded by a PAX header (fractional mtimes);
- one Parquet row per input URL, unsorted, failed downloads included with no tar members;
- ``NNNNN_stats.json`` beside each shard; PNG/WEBP bytes under ``.jpg`` names and a truncated
  JPEG marked ``success`` when re-encoding is disabled.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from airflow_curator.testing.dataset import make_jpeg


@dataclass
class Img2DatasetShard:
    ok: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    png_as_jpg: list[str] = field(default_factory=list)
    webp_as_jpg: list[str] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)
    images: dict[str, bytes] = field(default_factory=dict)


SCHEMA = pa.schema(
    [
        ("url", pa.string()),
        ("caption", pa.string()),
        ("key", pa.string()),
        ("status", pa.string()),
        ("error_message", pa.string()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("original_width", pa.int64()),
        ("original_height", pa.int64()),
        ("exif", pa.string()),
        ("sha256", pa.string()),
    ]
)


def write_img2dataset_like(
    folder: str, shards: int = 2, per_shard: int = 100, seed: int = 0, odd_images: bool = True
) -> dict[str, Img2DatasetShard]:
    import os

    os.makedirs(folder, exist_ok=True)
    rng = random.Random(seed)
    width = len(str(per_shard - 1))
    out: dict[str, Img2DatasetShard] = {}
    for s in range(shards):
        info = Img2DatasetShard()
        stem = f"{s:05d}"
        rows = []
        samples = []
        n_urls = min(per_shard, 12)
        for i in range(n_urls):
            key = f"{stem}{i:0{width}d}"
            caption = f"caption {key}"
            url = f"https://img.example/{key}.jpg"
            if i % 5 == 3:  # a failed download: a row, no members
                info.failed.append(key)
                rows.append(
                    dict(
                        url=url,
                        caption=caption,
                        key=key,
                        status="failed_to_download",
                        error_message="HTTP Error 404: Not Found",
                        width=None,
                        height=None,
                        original_width=None,
                        original_height=None,
                        exif=None,
                        sha256=None,
                    )
                )
                continue
            image = make_jpeg(rng, (40 + i, 32))
            if odd_images and i == 1:
                image = make_jpeg(rng, (40, 32), fmt="PNG")
                info.png_as_jpg.append(key)
            elif odd_images and i == 2:
                image = make_jpeg(rng, (40, 32), fmt="WEBP")
                info.webp_as_jpg.append(key)
            elif odd_images and i == 4:
                image = image[: len(image) // 2]
                info.truncated.append(key)
            else:
                info.ok.append(key)
            info.images[key] = image
            meta = dict(
                url=url,
                caption=caption,
                key=key,
                status="success",
                error_message=None,
                width=40 + i,
                height=32,
                original_width=80 + 2 * i,
                original_height=64,
                exif=json.dumps({"Image Make": "Camera"}),
                sha256=hashlib.sha256(image).hexdigest(),
            )
            rows.append(meta)
            samples.append((key, image, caption, meta))
        rng.shuffle(samples)  # download-completion order
        rng.shuffle(rows)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for key, image, caption, meta in samples:
                for ext, data in (
                    ("jpg", image),
                    ("txt", caption.encode()),
                    ("json", json.dumps(meta, indent=4).encode()),
                ):
                    ti = tarfile.TarInfo(f"{key}.{ext}")
                    ti.size = len(data)
                    ti.mtime = 1732460000.123456 + rng.random()  # fractional: PAX headers
                    tar.addfile(ti, io.BytesIO(data))
        with open(f"{folder}/{stem}.tar", "wb") as f:
            f.write(buf.getvalue())
        pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), f"{folder}/{stem}.parquet")
        stats = {
            "count": n_urls,
            "successes": n_urls - len(info.failed),
            "failed_to_download": len(info.failed),
            "failed_to_resize": 0,
            "status_dict": {
                "success": n_urls - len(info.failed),
                "failed_to_download": len(info.failed),
            },
        }
        with open(f"{folder}/{stem}_stats.json", "w") as f:
            json.dump(stats, f, indent=4)
        out[stem] = info
    return out
