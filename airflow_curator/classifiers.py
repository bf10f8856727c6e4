"""NeMo Curator's image classifiers: a head over an embedding column of the metadata.

``classifier(dataset)`` returns a dataset whose metadata gains ``pred_column`` lazily
(``map_partitions``): the head runs on the embedding column alone, so a dataset whose embeddings
were saved is scored without decoding an image. Given to an embedder's ``classifiers=[...]``,
the same head runs inside the embedder's pass instead. ``ImageClassifier`` is the base class
users subclass (``load_model(device)``, optionally ``postprocess(series)``), as in NeMo.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from airflow_curator.core.annotate.heads import DEFAULTS, Head, input_width
from airflow_curator.core.annotate.weights import read_state_dict, resolve
from airflow_curator.core.errors import UsageError
from airflow_curator.frames import empty_columns, with_columns
from airflow_curator.workers import on_worker

if TYPE_CHECKING:
    from airflow_curator.dataset import ImageTextPairDataset

logger = logging.getLogger(__name__)

__all__ = ["AestheticClassifier", "ImageClassifier", "NsfwClassifier"]


def embedding_matrix(column: Any) -> tuple[Any, Any]:
    """``(valid, matrix)`` of an Arrow list column: a boolean numpy mask of the non-null rows
    and their ``(n, dim)`` float32 embeddings."""
    import numpy as np
    import pyarrow as pa

    from airflow_curator.core.dedup.store import to_matrix

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    valid = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    return valid, to_matrix(arr.filter(pa.array(valid)), "embeddings")


class ImageClassifier(ABC):
    """A classifier over image embeddings; subclasses say how its model is loaded."""

    head_kind: str | None = None  # a LAION head the annotator can run in its own pass

    def __init__(
        self,
        model_name: str,
        embedding_column: str,
        pred_column: str,
        pred_type: str | type,
        batch_size: int,
        embedding_size: int | None,
    ) -> None:
        self.model_name = model_name
        self.embedding_column = embedding_column
        self.pred_column = pred_column
        self.pred_type = pred_type
        self.batch_size = batch_size
        self.embedding_size = embedding_size
        self.device = "auto"

    def __call__(self, dataset: ImageTextPairDataset) -> ImageTextPairDataset:
        """Score every row's ``embedding_column`` (lazily): no image is decoded."""
        frame = dataset.metadata
        if self.embedding_column not in frame.columns:
            raise UsageError(
                f"{type(self).__name__}: the metadata has no {self.embedding_column!r} column: "
                "embed the images first (embedder(dataset)), or pass the classifier to the "
                "embedder's classifiers=[...]"
            )
        meta = with_columns(frame._meta, self.empty())
        return dataset.with_metadata(frame.map_partitions(self.classify_partition, meta=meta))

    @abstractmethod
    def load_model(self, device: str) -> Callable:
        """The model: called with a ``(n, dim)`` float32 tensor of embeddings on ``device``,
        it returns ``n`` scores (or ``(n, 1)``)."""

    def postprocess(self, series: Any) -> Any:
        """Change the predictions (a pandas Series) before they join the metadata."""
        return series

    def arrow_type(self) -> Any:
        import numpy as np
        import pyarrow as pa

        if self.pred_type in (float, "float", "float32"):
            return pa.float32()
        return pa.from_numpy_dtype(np.dtype(self.pred_type))

    def empty(self) -> Any:
        return empty_columns({self.pred_column: self.arrow_type()})

    def classify_partition(self, partition: Any) -> Any:
        import pyarrow as pa

        if not len(partition):
            return with_columns(partition, self.empty())
        column = pa.array(partition[self.embedding_column].array)
        return with_columns(partition, self.scores_frame(column, partition.index))

    def scores_frame(self, embeddings: Any, index: Any) -> Any:
        """The ``pred_column`` frame of an Arrow column of embeddings (null ones score null)."""
        import numpy as np
        import pandas as pd
        import pyarrow as pa

        valid, matrix = embedding_matrix(embeddings)
        full = np.zeros(len(valid), dtype=np.float32)
        if len(matrix):
            full[valid] = self.predict(matrix)
        scores = pa.array(full, mask=~valid).cast(self.arrow_type())
        series = pd.Series(pd.arrays.ArrowExtensionArray(scores), index=index)
        return pd.DataFrame({self.pred_column: self.postprocess(series)}, index=index)

    def cache_key(self) -> tuple[Any, ...]:
        """What identifies the loaded model within a worker process."""
        return (type(self).__qualname__, self.model_name)

    def loader(self, device: str, width: int) -> Callable[[], Any]:
        return lambda: self.load_model(device)

    def predict(self, matrix: Any) -> Any:
        """Scores (float32 numpy, one per row) of ``(n, dim)`` float32 embeddings."""
        import torch

        from airflow_curator.core.device import pick_device

        width = int(matrix.shape[1])
        if self.embedding_size and width != self.embedding_size:
            raise UsageError(
                f"{self.model_name} expects {self.embedding_size}-wide embeddings but column "
                f"{self.embedding_column!r} has {width}-wide ones: use the embedding model the "
                "classifier was trained on"
            )
        device = pick_device(self.device)
        model = on_worker(
            ("classifier", *self.cache_key(), device, width), self.loader(device, width)
        )
        x = torch.from_numpy(matrix if matrix.flags.writeable else matrix.copy()).to(device)
        step = self.batch_size if self.batch_size > 0 else len(x)
        with torch.inference_mode():
            scores = torch.cat([model(x[i : i + step]).float() for i in range(0, len(x), step)])
        out = scores.cpu().numpy()
        if out.ndim == 2 and out.shape[1] == 1:
            out = out[:, 0]
        if out.shape != (len(x),):
            raise UsageError(f"{self.model_name} returned {out.shape} scores for {len(x)} rows")
        return out


class _LaionHead(ImageClassifier):
    """A LAION head (the core's ``Head``): pinned or sha256-logged weights from a path, URL or
    hub id, refused when its input width is not the embeddings'. ``pred_column`` defaults to
    ``<kind>_score``, ``model_path`` to the head's default file."""

    def __init__(
        self,
        embedding_column: str = "image_embedding",
        pred_column: str | None = None,
        batch_size: int = -1,
        model_path: str | None = None,
        *,
        model_sha256: str | None = None,
        device: str = "auto",
    ) -> None:
        assert self.head_kind is not None
        super().__init__(
            model_name=f"{self.head_kind}_classifier",
            embedding_column=embedding_column,
            pred_column=pred_column or f"{self.head_kind}_score",
            pred_type=float,
            batch_size=batch_size,
            embedding_size=None,  # the checkpoint's own width, checked against the embeddings
        )
        self.model_path = model_path or DEFAULTS[self.head_kind]
        self.model_sha256 = model_sha256
        self.device = device

    def cache_key(self) -> tuple[Any, ...]:
        return (self.head_kind, self.model_path, self.model_sha256)

    def loader(self, device: str, width: int) -> Callable[[], Any]:
        return lambda: self.load_model(device, width)

    def load_model(self, device: str, embedding_size: int | None = None) -> Head:
        assert self.head_kind is not None
        weights = resolve(self.model_path, self.model_sha256)
        width = embedding_size or input_width(
            self.head_kind, read_state_dict(weights.path, f"{self.head_kind} head"), weights.uri
        )
        return Head(self.head_kind, weights, width, device)


class AestheticClassifier(_LaionHead):
    """LAION-Aesthetics predictor V2 (scores 0-10, into ``aesthetic_score``) over OpenAI CLIP
    ViT-L/14 image embeddings; default weights: the pinned LAION file."""

    head_kind = "aesthetic"


class NsfwClassifier(_LaionHead):
    """LAION's CLIP-based NSFW detector (probability 0-1, into ``nsfw_score``) over ViT-L/14
    image embeddings; default weights: NeMo Curator's ``clip_autokeras_binary_nsfw.pth`` from
    LAION's zip (no published digest: its sha256 is logged, pin it with ``model_sha256``)."""

    head_kind = "nsfw"
