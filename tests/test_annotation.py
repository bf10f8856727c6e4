"""Embedders and classifiers of the Python API: the annotate step's pass, joined by id; NeMo's
base classes for a user's own model and head."""

from __future__ import annotations

import io
import tarfile

import pytest

from airflow_curator import (
    AestheticClassifier,
    ClipImageEmbedder,
    ImageClassifier,
    ImageEmbedder,
    ImageTextPairDataset,
    NsfwClassifier,
)
from airflow_curator.core.errors import ShardError
from airflow_curator.testing.awkward import write_awkward_shard

pytest.importorskip("torch")
pytest.importorskip("nvidia.dali")
pytest.importorskip("dask.dataframe")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from airflow_curator.testing.models import write_tiny_models

    return write_tiny_models(str(tmp_path_factory.mktemp("tiny-clip")))


def test_clip_embedder_flags_bad_images_and_scores_the_rest(tmp_path, tiny):
    import numpy as np

    kinds = {
        **write_awkward_shard(tmp_path / "ds", 0, seed=5),
        **write_awkward_shard(tmp_path / "ds", 1),
    }
    dataset = ImageTextPairDataset.from_webdataset(str(tmp_path / "ds"))
    aesthetic = AestheticClassifier(model_path=tiny["aesthetic_weights"])
    nsfw = NsfwClassifier(model_path=tiny["nsfw_weights"])

    def embedder(classifiers=()):
        return ClipImageEmbedder(
            tiny["model"], tiny["weights"], device="cpu", batch_size=4, classifiers=classifiers
        )

    fused = embedder([aesthetic, nsfw])(dataset).metadata.compute()
    assert list(fused.columns) == [
        "key", "caption", "image_embedding", "text_embedding", "clip_score", "aesthetic_score",
        "nsfw_score", "error",
    ]  # fmt: skip
    assert sorted(fused["key"]) == list(fused["key"]) == sorted(kinds)
    failed = {k for k, e in zip(fused["key"], fused["error"]) if isinstance(e, str)}
    assert failed == {k for k, kind in kinds.items() if kind != "ok"}
    for column in ("image_embedding", "clip_score", "aesthetic_score", "nsfw_score"):
        assert fused[column].isna().tolist() == [kinds[k] != "ok" for k in fused["key"]]
    # the same heads on the joined embeddings, in a second map_partitions, agree
    stacked = nsfw(aesthetic(embedder()(dataset))).metadata.compute()
    for column in ("aesthetic_score", "nsfw_score", "clip_score"):
        a = fused[column].to_numpy(dtype=float, na_value=np.nan)
        b = stacked[column].to_numpy(dtype=float, na_value=np.nan)
        assert np.allclose(a, b, atol=1e-5, equal_nan=True)


def test_annotators_with_other_heads_share_the_loaded_model(tmp_path, tiny):
    from airflow_curator.core.annotate.annotator import Annotator
    from airflow_curator.workers import loaded

    write_awkward_shard(tmp_path / "ds", 0)
    dataset = ImageTextPairDataset.from_webdataset(str(tmp_path / "ds"))
    plain = ClipImageEmbedder(tiny["model"], tiny["weights"], device="cpu", batch_size=4)
    scored = ClipImageEmbedder(
        tiny["model"],
        tiny["weights"],
        device="cpu",
        batch_size=4,
        classifiers=[AestheticClassifier(model_path=tiny["aesthetic_weights"])],
    )
    plain(dataset).metadata.compute()
    scored(dataset).metadata.compute()
    ours = [
        a
        for a, _ in (o for o in loaded() if isinstance(o, tuple))
        if isinstance(a, Annotator) and a.options.weights == tiny["weights"]
    ]
    assert len({id(a) for a in ours}) >= 2
    assert len({id(a.clip) for a in ours}) == 1  # one model in memory for both passes


def test_a_classifier_needs_an_embedding_column(demo_dataset):
    dataset = ImageTextPairDataset.from_webdataset(demo_dataset[0])
    with pytest.raises(ValueError, match="embed the images first"):
        AestheticClassifier()(dataset)


class MeanColour(ImageEmbedder):
    """A user's own embedder as NeMo documents it: images from the tar, a callable model."""

    def __init__(self, drop: str | None = None) -> None:
        super().__init__("mean-colour", "colour", [FirstChannel()])
        self.drop = drop

    def load_dataset_shard(self, tar_path):
        import numpy as np
        import torch
        from PIL import Image

        with tarfile.open(tar_path) as tar:
            members = [m for m in tar.getmembers() if m.name.endswith((".jpg", ".png"))]
            for m in members:  # tar order, one record per batch
                rid = m.name.split(".")[0]
                if rid == self.drop:
                    continue
                image = Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB")
                batch = torch.from_numpy(np.asarray(image, dtype=np.float32)[None])
                yield batch, [{"key": rid}]

    def load_embedding_model(self, device):
        return lambda batch: batch.mean(dim=(1, 2)) / 255.0


class FirstChannel(ImageClassifier):
    def __init__(self) -> None:
        super().__init__("first", "colour", "redness", float, batch_size=2, embedding_size=3)

    def load_model(self, device):
        return lambda x: x[:, 0]

    def postprocess(self, series):
        return series * 10


def test_a_users_embedder_and_classifier_plug_in(tmp_path):
    import numpy as np
    from PIL import Image

    from airflow_curator.testing.dataset import write_demo_dataset

    ids = write_demo_dataset(str(tmp_path / "ds"), shards=2, records_per_shard=4, seed=2)
    dataset = ImageTextPairDataset.from_webdataset(str(tmp_path / "ds"))
    frame = MeanColour()(dataset).metadata.compute()
    assert list(frame.columns)[-2:] == ["colour", "redness"]
    expected = {}
    for s in range(2):
        with tarfile.open(tmp_path / "ds" / f"{s:05d}.tar") as tar:
            for m in tar.getmembers():
                if m.name.endswith(".jpg"):
                    image = Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB")
                    expected[m.name[:-4]] = np.asarray(image, dtype=np.float32).mean((0, 1)) / 255
    assert list(frame["key"]) == ids
    for key, colour, red in zip(frame["key"], frame["colour"], frame["redness"]):
        assert np.allclose(colour, expected[key], atol=1e-6)
        assert red == pytest.approx(10 * expected[key][0], abs=1e-5)
    with pytest.raises(ShardError, match="1 metadata rows have no embedding: 000010002"):
        MeanColour(drop=ids[6])(dataset).metadata.compute()


def test_a_classifier_for_other_embeddings_is_refused(tmp_path):
    from airflow_curator.testing.dataset import write_demo_dataset

    write_demo_dataset(str(tmp_path / "ds"), shards=1, records_per_shard=2, seed=2)
    dataset = ImageTextPairDataset.from_webdataset(str(tmp_path / "ds"))
    embedded = MeanColour()(dataset)
    wide = FirstChannel()
    wide.embedding_size = 768
    with pytest.raises(Exception, match="expects 768-wide embeddings"):
        wide(embedded).metadata.compute()


def test_a_selected_partition_is_embedded_from_its_own_shard(tmp_path):
    """Dask pushes ``.partitions[i]`` and ``tail`` below map_partitions (renumbering the
    partitions); the shard comes from the rows themselves."""
    from airflow_curator.testing.dataset import write_demo_dataset

    ids = write_demo_dataset(str(tmp_path / "ds"), shards=3, records_per_shard=3, seed=2)
    embedded = MeanColour()(ImageTextPairDataset.from_webdataset(str(tmp_path / "ds")))
    second = embedded.metadata.partitions[1].compute()
    assert list(second["key"]) == ids[3:6]
    assert second["colour"].notna().all()
    assert list(embedded.metadata.tail(2)["key"]) == ids[-2:]
