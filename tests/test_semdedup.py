"""Semantic dedup through NeMo's Python names gives the CLI steps' results."""

from __future__ import annotations

import glob
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_curator import (
    ClusteringModel,
    DocumentDataset,
    ImageTextPairDataset,
    SemanticClusterLevelDedup,
)
from airflow_curator.runtime.cli import main
from airflow_curator.testing.annotations import write_synthetic_annotations
from airflow_curator.testing.dataset import write_demo_dataset

pytest.importorskip("torch")
pytest.importorskip("dask.dataframe")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A dataset whose saved metadata holds embeddings (with planted near-duplicates, failed
    images) and aesthetic scores, as after embedding and save_metadata()."""
    root = tmp_path_factory.mktemp("semdedup")
    path = str(root / "ds")
    write_demo_dataset(path, shards=3, records_per_shard=60, image_bytes=64, seed=1)
    planted = write_synthetic_annotations(str(root / "ann"), shards=3, records_per_shard=60, seed=2)
    for s in range(3):
        base = pq.read_table(os.path.join(path, f"{s:05d}.parquet"))
        ann = pq.read_table(root / "ann" / f"{s:05d}.parquet")
        assert base["key"].to_pylist() == ann["key"].to_pylist()
        for name in ("image_embedding", "aesthetic_score"):
            base = base.append_column(name, ann[name])
        pq.write_table(base, os.path.join(path, f"{s:05d}.parquet"))
    return path, planted


def cli_removed(dataset: str, job: str, keep: str, eps: float) -> set[str]:
    common = ["--output", job, "--annotations", dataset]
    steps = [
        ["dedup-fit", *common, "--n-clusters", "4", "--cluster-groups", "2", "--seed", "7",
         "--iterations", "10", "--device", "cpu"],
        ["dedup-assign", *common, "--device", "cpu"],
        ["dedup", *common, "--eps", str(eps), "--keep", keep, "--exact", "off",
         "--device", "cpu"],
        ["dedup-result", *common],
    ]  # fmt: skip
    for argv in steps:
        assert main(argv) == 0, argv
    removed = set()
    for path in glob.glob(os.path.join(job, "_work", "dedup", "result", "*.parquet")):
        t = pq.read_table(path)
        removed |= {k for k, u in zip(t["key"].to_pylist(), t["is_unique"].to_pylist()) if not u}
    return removed


@pytest.mark.parametrize("keep", ["hard", "easy", "random", "aesthetic"])
def test_python_api_gives_the_cli_steps_results(dataset, tmp_path, keep):
    path, planted = dataset
    ds = ImageTextPairDataset.from_webdataset(path, id_col="key")
    out = str(tmp_path / "clustering")
    clustered = ClusteringModel(
        id_column="key",
        embedding_column="image_embedding",
        max_iter=10,
        n_clusters=4,
        random_state=7,
        clustering_output_dir=out,
        cluster_groups=2,
        device="cpu",
    )(DocumentDataset(ds.metadata))
    frame = clustered.df.compute()
    assert len(frame) == 180 - len(planted.failed)  # a failed image has no embedding
    assert set(frame["nearest_cent"]) <= {0, 1, 2, 3}
    assert os.path.exists(os.path.join(out, "kmeans_centroids.npy"))
    dedup = SemanticClusterLevelDedup(
        n_clusters=4,
        emb_by_clust_dir=os.path.join(out, "embs_by_nearest_center"),
        id_column="key",
        which_to_keep=keep,
        embedding_column="image_embedding",
        output_dir=str(tmp_path / "dups"),
        device="cpu",
    )
    with pytest.raises(ValueError, match="Run compute_semantic_match_dfs"):
        dedup.extract_dedup_data(eps_to_extract=0.01)
    dedup.compute_semantic_match_dfs()
    for eps in (0.01, 0.3):  # one match pass, any threshold
        removed = set(dedup.extract_dedup_data(eps_to_extract=eps).df["key"].compute())
        assert removed == cli_removed(path, str(tmp_path / f"job-{eps}"), keep, eps)
        if eps == 0.01:
            assert len(removed) == len(planted.pairs)  # one of each planted pair
            if keep == "aesthetic":  # this project's rule: the higher score is kept
                assert removed == {r for _, r in planted.pairs}
    summary = (tmp_path / "dups" / "dedup_summary_0.3.csv").read_text().splitlines()
    assert summary[0] == "eps,kept,removed,total"
    assert pq.read_table(tmp_path / "dups" / "unique_ids_0.3.parquet").num_rows == len(removed)


def test_parameters_are_checked(dataset, tmp_path):
    path, _ = dataset
    ds = ImageTextPairDataset.from_webdataset(path, id_col="key")
    with pytest.raises(ValueError, match='Expected embedding column "embeddings"'):
        ClusteringModel(id_column="key", clustering_output_dir=str(tmp_path))(
            DocumentDataset(ds.metadata)
        )
    with pytest.raises(ValueError, match="Number of clusters is greater"):
        ClusteringModel(
            id_column="key",
            embedding_column="image_embedding",
            n_clusters=1000,
            clustering_output_dir=str(tmp_path),
        )(DocumentDataset(ds.metadata))
    with pytest.raises(ValueError, match="which_to_keep must be one of"):
        SemanticClusterLevelDedup(which_to_keep="best")


def test_document_dataset_reads_and_writes_parquet(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["x", "y"]}), folder / "part.parquet")
    docs = DocumentDataset.read_parquet(str(folder), backend="cudf")
    assert len(docs) == 2
    docs.to_parquet(str(tmp_path / "copy"))
    assert DocumentDataset.read_parquet(str(tmp_path / "copy")).df.compute()["id"].tolist() == [
        "a",
        "b",
    ]
