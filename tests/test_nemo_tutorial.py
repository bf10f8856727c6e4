"""NeMo Curator 0.x's image curation tutorial and docs snippets, ported by changing imports.

Written from NeMo Curator's public docs (the ``image-curation`` tutorial and the user guide's
image pages): the same calls in the same order, on a generated dataset with a tiny random timm
model on the CPU instead of ViT-L/14 on a GPU. The only other changes are the weights (local
files instead of downloads) and, where said, a check of the result.
"""

from __future__ import annotations

import os

import pytest

from airflow_curator.testing.pairs import check_curated, write_pairs_dataset

pytest.importorskip("torch")
pytest.importorskip("nvidia.dali")
pytest.importorskip("timm")
pytest.importorskip("dask.dataframe")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from airflow_curator.testing.models import write_tiny_timm

    return write_tiny_timm(str(tmp_path_factory.mktemp("tiny-timm")))


def forbid_decoding(monkeypatch):
    """Any image decode (or tar scan) from here on fails the test."""
    from airflow_curator.core.annotate import annotator, decode

    def refuse(*args, **kwargs):
        raise AssertionError("an image was decoded")

    monkeypatch.setattr(decode.Decoder, "decode_tar", refuse)
    monkeypatch.setattr(annotator, "scan_shard", refuse)


def test_image_curation_tutorial(tmp_path, tiny, monkeypatch):
    import pandas as pd
    import pyarrow.parquet as pq

    from airflow_curator import (
        AestheticClassifier,
        ClusteringModel,
        DocumentDataset,
        ImageTextPairDataset,
        SemanticClusterLevelDedup,
        TimmImageEmbedder,
    )

    data = write_pairs_dataset(tmp_path / "mscoco")

    # Load the Dataset
    dataset_path = data.path
    id_col = "key"
    dataset = ImageTextPairDataset.from_webdataset(dataset_path, id_col)
    assert dataset.metadata.npartitions == 3

    # Choose the Embedder
    embedding_model = TimmImageEmbedder(
        tiny["model"],
        pretrained=True,
        batch_size=4,
        num_threads_per_worker=2,
        normalize_embeddings=True,
        autocast=False,
        weights=tiny["weights"],
    )
    dataset = embedding_model(dataset)  # Dask is lazy, so this will not compute embeddings
    dataset.save_metadata()  # This triggers the computation
    dataset = ImageTextPairDataset.from_webdataset(dataset_path, id_col)
    head = dataset.metadata.head()
    columns = ["key", "caption", "width", "source", "image_embedding", "error"]
    assert list(head.columns) == columns  # exactly: no passes_curation, no _shard
    assert list(head["key"]) == data.shard_ids(0)[:5]  # each partition sorted by id
    for s in range(3):
        saved = pq.read_table(os.path.join(dataset_path, f"{s:05d}.parquet"))
        assert saved.column_names == columns
        assert saved.column("key").to_pylist() == data.shard_ids(s)
        failed = {k for k, e in zip(saved["key"].to_pylist(), saved["error"].to_pylist()) if e}
        assert failed == ({data.corrupt} if data.corrupt in data.shard_ids(s) else set())
        assert saved.column("image_embedding").null_count == len(failed)

    # Aesthetic Classifier: from the saved embeddings, so no image is decoded
    forbid_decoding(monkeypatch)
    aesthetic_dataset_path = str(tmp_path / "aesthetic_dataset")
    aesthetic_classifier = AestheticClassifier(model_path=tiny["aesthetic_weights"])
    dataset = aesthetic_classifier(dataset)
    scores = dataset.metadata[["key", "aesthetic_score"]].compute()
    assert scores["aesthetic_score"].isna().tolist() == [k == data.corrupt for k in data.ids]
    threshold = float(scores["aesthetic_score"].median())  # the tutorial's 6, for random heads

    dataset.metadata["passes_aesthetic_check"] = dataset.metadata["aesthetic_score"] > threshold
    dataset.to_webdataset(
        aesthetic_dataset_path,
        filter_column="passes_aesthetic_check",
        samples_per_shard=4,
        old_id_col="old_key",
    )
    passing = scores["aesthetic_score"].fillna(threshold) > threshold
    kept = scores.loc[passing, "key"].tolist()
    assert 0 < len(kept) < len(data.ids)
    check_curated(aesthetic_dataset_path, data, kept, "old_key", samples_per_shard=4)

    # the assigned column is saved like any other, and reloads
    dataset.save_metadata()
    reloaded = ImageTextPairDataset.from_webdataset(dataset_path, id_col).metadata.compute()
    assert list(reloaded.columns) == [*columns, "aesthetic_score", "passes_aesthetic_check"]
    assert reloaded.loc[reloaded["passes_aesthetic_check"], "key"].tolist() == kept

    # Semantic Deduplication
    embeddings_dataset = DocumentDataset(dataset.metadata)
    semantic_dedup_outputs = str(tmp_path / "semantic_deduplication")
    os.makedirs(semantic_dedup_outputs, exist_ok=True)
    clustering_output = os.path.join(semantic_dedup_outputs, "cluster_output")
    clustering_model = ClusteringModel(
        id_column=id_col,
        embedding_column="image_embedding",
        max_iter=10,
        n_clusters=1,
        random_state=42,
        clustering_output_dir=clustering_output,
    )
    clustered_dataset = clustering_model(embeddings_dataset)
    clustered = clustered_dataset.df.compute()
    assert sorted(clustered["key"]) == sorted(k for k in data.ids if k != data.corrupt)
    assert set(clustered["nearest_cent"]) == {0}

    emb_by_cluster_output = os.path.join(clustering_output, "embs_by_nearest_center")
    duplicate_output = os.path.join(semantic_dedup_outputs, "duplicates")
    semantic_dedup = SemanticClusterLevelDedup(
        n_clusters=1,
        emb_by_clust_dir=emb_by_cluster_output,
        id_column=id_col,
        which_to_keep="hard",
        sim_metric="cosine",
        embedding_column="image_embedding",
        batched_cosine_similarity=1024,
        output_dir=duplicate_output,
    )
    semantic_dedup.compute_semantic_match_dfs()
    deduplicated_dataset_ids = semantic_dedup.extract_dedup_data(eps_to_extract=0.01)
    removed = set(deduplicated_dataset_ids.df["key"].compute())
    assert len(removed) == len(data.duplicates)  # one of each planted pair, nothing else
    assert all(len(removed & set(pair)) == 1 for pair in data.duplicates)

    # Remove Duplicates
    deduplicated_dataset_path = str(tmp_path / "deduplicated_dataset")
    dataset.metadata["is_unique"] = ~dataset.metadata["key"].isin(
        deduplicated_dataset_ids.df["key"].compute()
    )
    dataset.to_webdataset(deduplicated_dataset_path, "is_unique")
    check_curated(deduplicated_dataset_path, data, [k for k in data.ids if k not in removed])

    # Visualize Duplicates: the pruning table the tutorial reads
    cluster_path = os.path.join(duplicate_output, "semdedup_pruning_tables", "cluster_0.parquet")
    df = pd.read_parquet(cluster_path)
    df = df[df["cosine_sim_score"] >= (1 - 0.01)]
    assert set(df["id"]) == removed
    assert {(i, m) for i, m in zip(df["id"], df["max_id"])} <= {
        p for pair in data.duplicates for p in (pair, pair[::-1])
    }


def test_docs_fused_classifiers_match_the_annotate_step(tmp_path, tiny, monkeypatch):
    """The docs' "Performance Considerations" snippet: classifiers=[...] score in the embedding
    pass, with the annotate step's own code (same bytes as ``airflow-curator annotate``), and
    agree with classifiers run on the saved embeddings."""
    import numpy as np
    import pyarrow.parquet as pq

    from airflow_curator import (
        AestheticClassifier,
        ImageTextPairDataset,
        NsfwClassifier,
        TimmImageEmbedder,
    )
    from airflow_curator.runtime.cli import main
    from airflow_curator.workers import load_counts

    data = write_pairs_dataset(tmp_path / "ds", seed=3)
    dataset = ImageTextPairDataset.from_webdataset(data.path, id_col="key")
    before = load_counts().get("annotator", 0)
    embedding_model = TimmImageEmbedder(
        tiny["model"],
        pretrained=True,
        batch_size=4,
        num_threads_per_worker=2,
        normalize_embeddings=True,
        classifiers=[
            AestheticClassifier(model_path=tiny["aesthetic_weights"]),
            NsfwClassifier(model_path=tiny["nsfw_weights"]),
        ],
        weights=tiny["weights"],
    )
    from airflow_curator.core.annotate.cpu_decoder import CpuDecoder
    from airflow_curator.core.annotate.decode import Decoder

    decoded: list[str] = []

    def counted(decode):
        def run(self, tar, *args, **kwargs):
            decoded.append(os.path.basename(tar))
            return decode(self, tar, *args, **kwargs)

        return run

    # the CPU's decoder or DALI's on a GPU, whichever the annotator uses
    monkeypatch.setattr(CpuDecoder, "decode", counted(CpuDecoder.decode))
    monkeypatch.setattr(Decoder, "decode_tar", counted(Decoder.decode_tar))
    dataset_with_scores = embedding_model(dataset)
    dataset_with_scores.save_metadata()  # Metadata will have new columns
    assert sorted(decoded) == ["00000.tar", "00001.tar", "00002.tar"]  # each shard once
    assert load_counts()["annotator"] == before + 1  # once for the three shards
    assert main(
        [
            "annotate", "--dataset", data.path, "--output", str(tmp_path / "job"),
            "--model", f"timm:{tiny['model']}", "--weights", tiny["weights"],
            "--aesthetic-weights", tiny["aesthetic_weights"], "--nsfw-weights",
            tiny["nsfw_weights"], "--device", "cpu", "--batch-size", "4",
        ]
    ) == 0  # fmt: skip
    rescored = NsfwClassifier(model_path=tiny["nsfw_weights"])(
        AestheticClassifier(model_path=tiny["aesthetic_weights"])(
            ImageTextPairDataset.from_webdataset(data.path, id_col="key")
        )
    ).metadata.compute()
    for s in range(3):
        saved = pq.read_table(os.path.join(data.path, f"{s:05d}.parquet"))
        step = pq.read_table(str(tmp_path / "job" / "_work" / "annotations" / f"{s:05d}.parquet"))
        step = step.take(
            [step["key"].to_pylist().index(k) for k in saved["key"].to_pylist()]
        )  # the step keeps the Parquet's row order, the API the id order
        for column in ("image_embedding", "aesthetic_score", "nsfw_score", "error"):
            assert saved[column].to_pylist() == step[column].to_pylist(), column
    saved = pq.read_table([os.path.join(data.path, f"{s:05d}.parquet") for s in range(3)])
    saved = saved.to_pandas()
    ordered = rescored.set_index("key").loc[saved["key"]]
    for column in ("aesthetic_score", "nsfw_score"):
        a = saved[column].to_numpy(dtype=float, na_value=np.nan)
        b = ordered[column].to_numpy(dtype=float, na_value=np.nan)
        assert np.allclose(a, b, atol=1e-5, equal_nan=True), column


def test_reannotating_a_saved_dataset_keeps_one_column_each(tmp_path, tiny):
    """Regression: save, reload, annotate again used to hold every annotation column twice
    (``Field "aesthetic_score" exists 2 times``)."""
    import pyarrow.parquet as pq

    from airflow_curator import AestheticClassifier, ImageTextPairDataset, TimmImageEmbedder

    data = write_pairs_dataset(tmp_path / "ds", shards=2, records=4, seed=5)

    def annotate(dataset):
        return TimmImageEmbedder(
            tiny["model"],
            pretrained=True,
            weights=tiny["weights"],
            batch_size=4,
            classifiers=[AestheticClassifier(model_path=tiny["aesthetic_weights"])],
        )(dataset)

    first = annotate(ImageTextPairDataset.from_webdataset(data.path, "key"))
    first.save_metadata()
    again = annotate(ImageTextPairDataset.from_webdataset(data.path, "key"))
    columns = list(again.metadata.columns)
    assert len(columns) == len(set(columns))
    assert columns == ["key", "caption", "width", "source", "image_embedding",
                       "aesthetic_score", "error"]  # fmt: skip
    frame = again.metadata.compute()
    assert list(frame.columns) == columns
    assert frame["aesthetic_score"].notna().sum() == len(data.ids) - 1
    again.save_metadata()
    saved = pq.read_table(os.path.join(data.path, "00000.parquet"))
    assert saved.column_names == columns


@pytest.mark.slow
@pytest.mark.integration
def test_tutorial_on_a_local_cluster_of_two_worker_processes(tmp_path, tiny):
    """The tutorial's embed, save, reload, classify, filter and reshard with the user's own
    ``dask.distributed`` client: each worker process loads the model once, and the results are
    the default scheduler's."""
    import numpy as np
    import pandas as pd
    from dask.distributed import Client, LocalCluster

    from airflow_curator import (
        AestheticClassifier,
        ImageTextPairDataset,
        NsfwClassifier,
        TimmImageEmbedder,
    )
    from airflow_curator.workers import load_counts

    def embed(path):
        embedding_model = TimmImageEmbedder(
            tiny["model"],
            pretrained=True,
            weights=tiny["weights"],
            batch_size=4,
            num_threads_per_worker=1,
            classifiers=[AestheticClassifier(model_path=tiny["aesthetic_weights"])],
        )
        embedding_model(ImageTextPairDataset.from_webdataset(path, "key")).save_metadata()
        dataset = ImageTextPairDataset.from_webdataset(path, "key")
        return NsfwClassifier(model_path=tiny["nsfw_weights"])(dataset)

    local = write_pairs_dataset(tmp_path / "local", shards=4, records=4, seed=7)
    expected = embed(local.path).metadata.compute()
    threshold = float(expected["nsfw_score"].median())
    data = write_pairs_dataset(tmp_path / "cluster", shards=4, records=4, seed=7)
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            scheduler_port=0,
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        dataset = embed(data.path)
        dataset.metadata["passes"] = dataset.metadata["nsfw_score"] < threshold
        got = dataset.metadata.compute()
        out = str(tmp_path / "curated")
        dataset.to_webdataset(out, "passes", old_id_col="old_key")
        loads = client.run(load_counts)
    assert len(loads) == 2
    assert sum(c.get("annotator", 0) for c in loads.values()) <= 2  # 4 shards, <= 1 per worker
    assert all(c.get("annotator", 0) <= 1 for c in loads.values())
    assert list(got.columns) == [*expected.columns, "passes"]
    assert got["key"].tolist() == expected["key"].tolist()
    for column in ("aesthetic_score", "nsfw_score"):
        a = got[column].to_numpy(dtype=float, na_value=np.nan)
        b = expected[column].to_numpy(dtype=float, na_value=np.nan)
        assert np.allclose(a, b, atol=1e-5, equal_nan=True)
    kept = got.loc[got["passes"].fillna(False).astype(bool), "key"].tolist()
    assert 0 < len(kept) < len(got)
    check_curated(out, data, kept, "old_key")
    assert isinstance(got, pd.DataFrame)
