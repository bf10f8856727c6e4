"""The NeMo Curator-style annotation API over ``ImageTextPairDataset``."""

from __future__ import annotations

import pytest

from airflow_curator import ImageTextPairDataset
from airflow_curator.annotation import AestheticClassifier, ClipImageEmbedder, NsfwClassifier
from airflow_curator.testing.awkward import write_awkward_shard

pytest.importorskip("torch")
pytest.importorskip("nvidia.dali")


def test_embedder_and_classifiers_join_scores_by_id(tmp_path):
    from airflow_curator.testing.models import write_tiny_models

    tiny = write_tiny_models(str(tmp_path / "tiny"))
    kinds = {
        **write_awkward_shard(tmp_path / "ds", 0, seed=5),
        **write_awkward_shard(tmp_path / "ds", 1),
    }
    dataset = ImageTextPairDataset.from_webdataset(str(tmp_path / "ds"))
    embedder = ClipImageEmbedder(tiny["model"], tiny["weights"], device="cpu", batch_size=4)
    embedded = embedder(dataset)
    scored = NsfwClassifier(tiny["nsfw_weights"])(
        AestheticClassifier(tiny["aesthetic_weights"])(embedded)
    )
    meta = scored.metadata
    assert meta.num_rows == len(kinds)
    assert {"caption", "image_embedding", "clip_score", "aesthetic_score", "nsfw_score"} <= set(
        meta.column_names
    )
    errors = dict(zip(meta.column("key").to_pylist(), meta.column("error").to_pylist()))
    assert {k for k, e in errors.items() if e} == {k for k, kind in kinds.items() if kind != "ok"}
    scores = dict(zip(meta.column("key").to_pylist(), meta.column("nsfw_score").to_pylist()))
    assert all((scores[k] is None) == (kinds[k] != "ok") for k in kinds)
    assert (tmp_path / "ds" / "_work" / "annotations" / "00001.parquet").exists()
    # embedding only: heads off, model reused, annotations recomputed for the new inputs
    plain = embedded.metadata
    assert plain.column("aesthetic_score").null_count == plain.num_rows
    assert plain.column("image_embedding").null_count == sum(k != "ok" for k in kinds.values())
    assert len(embedder._annotators) == 2
    first, second = embedder._annotators.values()
    assert first.clip is second.clip  # one model for both passes


def test_classifier_needs_embeddings_first(demo_dataset):
    dataset = ImageTextPairDataset.from_webdataset(demo_dataset[0])
    with pytest.raises(TypeError, match="ClipImageEmbedder first"):
        AestheticClassifier()(dataset)
