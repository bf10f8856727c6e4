"""A small WebDataset with planted image sizes, aspect ratios, caption lengths and languages,
for the filter tests: every record's truth is returned, so tests count what each filter must
keep without the code under test."""

from __future__ import annotations

import io
import json
import random
import tarfile
from dataclasses import dataclass

from airflow_curator.core.io import storage
from airflow_curator.core.wds.naming import record_id, shard_name
from airflow_curator.testing.dataset import add_member, make_jpeg

# (caption, language): sentences lid.176 identifies with confidence, short ones, empty ones
CAPTIONS = (
    ("A small brown dog is playing with a red ball in the garden", "en"),
    ("Two people walking along the beach at sunset", "en"),
    ("Ein kleiner Hund spielt im Garten mit einem roten Ball", "de"),
    ("Die alte Kirche steht mitten in der schönen Stadt", "de"),
    ("Un petit chien joue dans le jardin avec une balle rouge", "fr"),
    ("red car", "en"),  # two words
    ("sunset", "en"),  # one word
    ("a b c", None),  # three words, five characters: language not asserted
    ("", None),  # no caption: null language
    ("   ", None),
)
# (width, height) as stored; EXIF-rotated JPEGs are made too
SIZES = ((256, 224), (200, 600), (640, 200), (180, 400), (600, 201), (96, 96), (220, 660))
FORMATS = ("JPEG", "PNG", "WEBP")


@dataclass(frozen=True)
class PlantedRecord:
    id: str
    width: int  # as decoded (EXIF orientation applied)
    height: int
    caption: str
    language: str | None  # None: not asserted (too short to be sure, or empty)
    format: str


def _image(rng: random.Random, size: tuple[int, int], fmt: str, rotate: bool) -> bytes:
    from PIL import Image

    if not rotate:
        return make_jpeg(rng, size, fmt)
    # stored sideways with EXIF orientation 6: decoded as (height, width)
    img = Image.open(io.BytesIO(make_jpeg(rng, size, "JPEG")))
    exif = img.getexif()
    exif[0x0112] = 6
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=85, exif=exif.tobytes())
    return out.getvalue()


def write_filter_dataset(
    url: str, shards: int = 2, records_per_shard: int = 15, seed: int = 0
) -> list[PlantedRecord]:
    """Write ``NNNNN.tar`` + ``NNNNN.parquet`` shards with planted sizes and captions."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    storage.makedirs(url)
    planted: list[PlantedRecord] = []
    n = 0
    for s in range(shards):
        rows: dict[str, list[str]] = {"key": [], "caption": []}
        stem = shard_name(s, 5)
        with (
            storage.atomic_writer(storage.join(url, f"{stem}.tar")) as f,
            tarfile.open(fileobj=f, mode="w", format=tarfile.GNU_FORMAT) as tar,
        ):
            for i in range(records_per_shard):
                rid = record_id(s, i, 10000, 5)
                caption, language = CAPTIONS[n % len(CAPTIONS)]
                size = SIZES[(n // 2) % len(SIZES)]
                fmt = FORMATS[n % len(FORMATS)]
                rotate = n % 11 == 4
                w, h = (size[1], size[0]) if rotate else size
                ext = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}["JPEG" if rotate else fmt]
                add_member(tar, f"{rid}.{ext}", _image(rng, size, fmt, rotate))
                add_member(tar, f"{rid}.txt", caption.encode())
                add_member(tar, f"{rid}.json", json.dumps({"key": rid}).encode())
                rows["key"].append(rid)
                rows["caption"].append(caption)
                planted.append(
                    PlantedRecord(rid, w, h, caption, language, "JPEG" if rotate else fmt)
                )
                n += 1
        out = io.BytesIO()
        pq.write_table(pa.table(rows), out)
        storage.write_bytes(storage.join(url, f"{stem}.parquet"), out.getvalue())
    return planted
