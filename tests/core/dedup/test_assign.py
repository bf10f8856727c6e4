from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from airflow_curator.core.dedup.assign import assign_shards
from airflow_curator.core.dedup.fit import fit_centroids, load_centroids, nearest
from airflow_curator.core.dedup.store import file_meta
from airflow_curator.testing.annotations import write_synthetic_annotations


def test_assign_writes_one_row_group_per_part_sorted_by_cluster(tmp_path):
    out = str(tmp_path / "o")
    planted = write_synthetic_annotations(
        out + "/_work/annotations", shards=2, records_per_shard=120, failed_fraction=0.1, seed=6
    )
    fit_centroids(out, n_clusters=9, parts=3, device="cpu")
    r = assign_shards(out, "1", device="cpu")
    assert r["shards"] == 1
    cent = load_centroids(out)
    pf = pq.ParquetFile(out + "/_work/dedup/assign/00001.parquet")
    assert file_meta(pf.schema_arrow)["centroids"] == cent.digest
    table = pf.read()
    clusters = table["cluster"].to_numpy()
    assert np.all(np.diff(clusters) >= 0)
    # failed records (no embedding) are left out; the rest are all there
    failed = {i for i in planted.failed if i.startswith("00001")}
    assert failed and not failed & set(table["id"].to_pylist())
    assert table.num_rows == r["records"] == 120 - len(failed)
    # each row group holds exactly one part's clusters
    parts = [
        set(cent.parts.part_of(pf.read_row_group(g)["cluster"].to_numpy()))
        for g in range(pf.num_row_groups)
    ]
    assert all(len(p) == 1 for p in parts) and len(parts) == len(set.union(*parts))
    # the stored cluster is the nearest centroid of the stored (unit) embedding
    x = np.stack(table["embedding"].to_numpy(zero_copy_only=False))
    assert np.array_equal(nearest(x, cent.vectors)[0], clusters)
    assert np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
