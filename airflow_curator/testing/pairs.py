"""A small dataset for the Python API tests and a check of a curated copy of it.

Each shard's tar members and Parquet rows are in a shuffled order (so id order is something the
code must produce), two records repeat another record's image bytes exactly (near-duplicates by
any embedding), and one image is truncated (its record gets an ``error``).
"""

from __future__ import annotations

import io
import json
import os
import random
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from airflow_curator.testing.dataset import WORDS, add_member, make_jpeg


@dataclass
class PairsDataset:
    path: str
    ids: list[str]  # in shard, then id order
    images: dict[str, bytes]
    captions: dict[str, str]
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (copy, original)
    corrupt: str = ""

    def shard_ids(self, shard: int) -> list[str]:
        return [i for i in self.ids if i.startswith(f"{shard:05d}")]


def write_pairs_dataset(
    path: Path, shards: int = 3, records: int = 8, seed: int = 0
) -> PairsDataset:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    path.mkdir(parents=True, exist_ok=True)
    out = PairsDataset(str(path), [], {}, {})
    for s in range(shards):
        ids = [f"{s:05d}{i:04d}" for i in range(records)]
        for i, rid in enumerate(ids):
            size = (rng.randrange(40, 96), rng.randrange(40, 96))
            out.images[rid] = make_jpeg(rng, size)
            out.captions[rid] = f"{WORDS[(s + i) % len(WORDS)]} #{s}.{i}"
        out.ids += ids
    assert shards >= 2 and records >= 4
    first, second, last = out.ids[1], out.ids[records + 1], out.ids[-1]
    out.images[second] = out.images[first]  # across shards
    out.images[last] = out.images[out.ids[-records]]  # within the last shard
    out.duplicates = [(second, first), (last, out.ids[-records])]
    out.corrupt = out.ids[records + 3]
    out.images[out.corrupt] = out.images[out.corrupt][:300]
    for s in range(shards):
        ids = out.shard_ids(s)
        order = list(ids)
        rng.shuffle(order)
        with tarfile.open(path / f"{s:05d}.tar", "w", format=tarfile.GNU_FORMAT) as tar:
            for rid in order:
                add_member(tar, f"{rid}.jpg", out.images[rid])
                add_member(tar, f"{rid}.txt", out.captions[rid].encode())
                meta = {"key": rid, "caption": out.captions[rid]}
                add_member(tar, f"{rid}.json", json.dumps(meta).encode())
        rng.shuffle(order)
        table = pa.table(
            {
                "key": order,
                "caption": [out.captions[r] for r in order],
                "width": pa.array([rng.randrange(40, 96) for _ in order], pa.int32()),
                "source": [None if i % 3 == 0 else "web" for i in range(len(order))],
            }
        )
        buf = io.BytesIO()
        pq.write_table(table, buf)
        (path / f"{s:05d}.parquet").write_bytes(buf.getvalue())
    return out


def read_tar(path: str) -> list[tuple[str, bytes]]:
    """(member name, bytes) in tar order."""
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]


def check_curated(path, data, old_ids, old_id_col=None, samples_per_shard=10000):
    """The curated dataset at ``path`` holds exactly ``old_ids``, in that order, under new ids,
    with the input's bytes (the ``.json`` id rewritten) and open_clip's ``sizes.json``."""
    import pyarrow.parquet as pq

    from airflow_curator.core.wds.naming import record_id

    assert os.path.exists(os.path.join(path, "_SUCCESS"))
    shards = sorted(f for f in os.listdir(path) if f.endswith(".tar"))
    assert len(shards) == -(-len(old_ids) // samples_per_shard)
    with open(os.path.join(path, "sizes.json")) as f:
        sizes = json.load(f)
    assert sizes == {
        name: min(samples_per_shard, len(old_ids) - i * samples_per_shard)
        for i, name in enumerate(shards)
    }
    position = 0
    for s, name in enumerate(shards):
        members = read_tar(os.path.join(path, name))
        table = pq.read_table(os.path.join(path, name.replace(".tar", ".parquet")))
        new_ids = [record_id(s, i, samples_per_shard, 5) for i in range(sizes[name])]
        assert table.column("key").to_pylist() == new_ids
        if old_id_col:
            olds = old_ids[position : position + len(new_ids)]
            assert table.column(old_id_col).to_pylist() == olds
        for i, new in enumerate(new_ids):
            old = old_ids[position + i]
            records = dict(members[3 * i : 3 * i + 3])
            assert records[f"{new}.jpg"] == data.images[old]
            assert records[f"{new}.txt"].decode() == data.captions[old]
            assert json.loads(records[f"{new}.json"]) == {"key": new, "caption": data.captions[old]}
        position += len(new_ids)
    assert position == len(old_ids)
