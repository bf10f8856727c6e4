"""NeMo Curator's image embedders over an ``ImageTextPairDataset``, on the annotate step's code.

``embedder(dataset)`` returns a dataset whose metadata gains the embedding column (and the
columns of ``classifiers=[...]``) lazily, through ``map_partitions``. For ``TimmImageEmbedder``
and ``ClipImageEmbedder`` a partition is one pass over its shard by the core ``Annotator`` of
``airflow-curator annotate``: its decoder (DALI on a GPU; on the CPU, JPEGs decoded small, then
the model's own preprocessing; corrupt images flagged in ``error``), the model embeds, the LAION
heads given as classifiers score in the same batches, and rows join the metadata by id. The
annotator (model and heads) is loaded once per worker process. Subclass ``ImageEmbedder``
(``load_dataset_shard``, ``load_embedding_model``) to plug in your own model.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from airflow_curator.classifiers import AestheticClassifier, ImageClassifier, NsfwClassifier
from airflow_curator.core.annotate.annotator import NONE, Annotator, Options
from airflow_curator.core.dataset.discovery import Shard
from airflow_curator.core.device import pick_device
from airflow_curator.core.errors import ShardError
from airflow_curator.frames import ShardRows, empty_columns, join_by_id, with_columns
from airflow_curator.workers import loaded, on_worker

if TYPE_CHECKING:
    from airflow_curator.dataset import ImageTextPairDataset

logger = logging.getLogger(__name__)

__all__ = [
    "AestheticClassifier",
    "ClipImageEmbedder",
    "ImageClassifier",
    "ImageEmbedder",
    "NsfwClassifier",
    "TimmImageEmbedder",
]


class ImageEmbedder:
    """Image embeddings of every record, as a new metadata column (NeMo's base class).

    Subclasses define ``load_dataset_shard(tar_path)`` (yielding ``(batch, metadata)``, the
    metadata a list of dicts holding the record id) and ``load_embedding_model(device)`` (a
    callable from a batch to a ``(n, dim)`` tensor); classifiers run on the embeddings in the same
    task, and rows are joined by id.
    """

    def __init__(
        self,
        model_name: str,
        image_embedding_column: str,
        classifiers: Iterable[ImageClassifier],
    ) -> None:
        self.model_name = model_name
        self.image_embedding_column = image_embedding_column
        self.classifiers = list(classifiers)

    def __call__(self, dataset: ImageTextPairDataset) -> ImageTextPairDataset:
        import dask

        frame = dataset.metadata
        rows = dask.delayed(dataset.shard_rows(), pure=True)  # one graph key, not one per task
        meta = with_columns(frame._meta, empty_columns(self.output_types()))
        for classifier in self.after():
            meta = with_columns(meta, classifier.empty())
        out = frame.map_partitions(self.embed_partition, rows, dataset.id_col, meta=meta)
        return dataset.with_metadata(out)

    def load_dataset_shard(self, tar_path: str) -> Iterable[tuple[Any, list[dict[str, Any]]]]:
        raise NotImplementedError(f"{type(self).__name__} must define load_dataset_shard")

    def load_embedding_model(self, device: str) -> Callable:
        raise NotImplementedError(f"{type(self).__name__} must define load_embedding_model")

    def output_types(self) -> dict[str, Any]:
        """The Arrow types of the columns ``embed_shard`` gives (besides the id)."""
        import pyarrow as pa

        return {self.image_embedding_column: pa.list_(pa.float32())}

    def fused(self) -> list[ImageClassifier]:
        """Classifiers that ``embed_shard`` scores itself."""
        return []

    def after(self) -> list[ImageClassifier]:
        """Classifiers that run on the embedding column once it is joined (same task)."""
        fused = self.fused()
        return [c for c in self.classifiers if not any(c is f for f in fused)]

    def embed_partition(
        self, partition: Any, rows: ShardRows, id_col: str, partition_info: Any = None
    ) -> Any:
        """One partition with its shard's embeddings joined by id, then classified."""
        if not len(partition):
            out = with_columns(partition, empty_columns(self.output_types()))
        else:
            number = partition_info.get("number") if partition_info else None
            shard = rows.locate(partition, id_col, number)
            table = self.embed_shard(shard, id_col)
            out = join_by_id(partition, table, id_col, shard.stem, self.output_types())
        for classifier in self.after():
            out = classifier.classify_partition(out)
        return out

    def embed_shard(self, shard: Shard, id_col: str) -> Any:
        """The shard's embeddings as an Arrow table (id and ``output_types`` columns)."""
        import numpy as np
        import pyarrow as pa
        import torch

        device = pick_device("auto")
        model = on_worker(
            ("embedder", type(self).__qualname__, self.model_name, device),
            lambda: self.load_embedding_model(device),
        )
        ids: list[str] = []
        chunks = []
        with torch.inference_mode():
            for batch, metadata in self.load_dataset_shard(shard.tar):
                chunks.append(model(batch).float().cpu().numpy())
                ids.extend(str(m[id_col]) for m in metadata)
        matrix = np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
        if len(ids) != len(matrix):
            raise ShardError(shard.stem, f"{len(matrix)} embeddings for {len(ids)} records")
        flat = pa.array(matrix.reshape(-1), pa.float32())
        width = matrix.shape[1] if matrix.ndim == 2 else 0
        column = pa.FixedSizeListArray.from_arrays(flat, width) if width else pa.nulls(0)
        return pa.table({id_col: pa.array(ids, pa.string()), self.image_embedding_column: column})


class _AnnotatorEmbedder(ImageEmbedder):
    """An embedder whose shard pass is the core ``Annotator`` (decode, embed, LAION heads)."""

    # annotator column -> this embedder's output column (None: not kept)
    extra_columns: dict[str, str] = {}

    def __init__(
        self,
        model: str,
        *,
        weights: str | None,
        weights_sha256: str | None,
        device: str,
        batch_size: int,
        num_threads_per_worker: int,
        image_embedding_column: str,
        classifiers: Iterable[ImageClassifier],
        normalize_embeddings: bool = True,
        autocast: bool = True,
    ) -> None:
        super().__init__(model, image_embedding_column, classifiers)
        heads: dict[str, Any] = {"aesthetic": (NONE, None), "nsfw": (NONE, None)}
        self._fused: list[ImageClassifier] = []
        for c in self.classifiers:
            kind = c.head_kind
            if kind and heads[kind][0] == NONE and c.embedding_column == image_embedding_column:
                heads[kind] = (c.model_path, c.model_sha256)  # type: ignore[attr-defined]
                self._fused.append(c)
        self.options = Options(
            model=model,
            weights=weights,
            weights_sha256=weights_sha256,
            aesthetic_weights=heads["aesthetic"][0],
            aesthetic_sha256=heads["aesthetic"][1],
            nsfw_weights=heads["nsfw"][0],
            nsfw_sha256=heads["nsfw"][1],
            device=device,
            batch_size=batch_size,
            decode_threads=num_threads_per_worker or None,  # NeMo's: the decoder's
            normalize=normalize_embeddings,
            autocast=autocast,
        )

    def fused(self) -> list[ImageClassifier]:
        return list(self._fused)

    def embedding_dim(self) -> int | None:
        return None

    def columns(self) -> dict[str, str]:
        """Annotator column -> output column, in output order."""
        names = {"image_embedding": self.image_embedding_column, **self.extra_columns}
        for c in self._fused:
            names[f"{c.head_kind}_score"] = c.pred_column
        return {**names, "error": "error"}

    def output_types(self) -> dict[str, Any]:
        import pyarrow as pa

        dim = self.embedding_dim()
        vector = pa.list_(pa.float32(), dim) if dim else pa.list_(pa.float32())
        types = {"image_embedding": vector, "text_embedding": vector, "error": pa.string()}
        names = self.columns()
        return {names[c]: types.get(c, pa.float32()) for c in names}

    def annotator(self, id_col: str) -> tuple[Annotator, threading.Lock]:
        """This worker's annotator for these options (sharing a loaded model with the
        annotators other heads made), and the lock that runs one shard at a time on it."""
        options = dataclasses.replace(self.options, id_col=id_col)

        def load() -> tuple[Annotator, threading.Lock]:
            annotator = Annotator(options)
            for other in loaded():
                if isinstance(other, tuple) and isinstance(other[0], Annotator):
                    annotator.share(other[0])
            return annotator, threading.Lock()

        return on_worker(("annotator", *dataclasses.astuple(options)), load)

    def embed_shard(self, shard: Shard, id_col: str) -> Any:
        annotator, lock = self.annotator(id_col)
        with lock:
            table, outcome = annotator.annotate_table(shard)
        logger.log(
            logging.WARNING if outcome.failed else logging.INFO,
            "shard %s: %d records embedded in %.1fs; %d failed (%s)",
            shard.stem,
            outcome.records,
            outcome.seconds,
            outcome.failed,
            "; ".join(outcome.errors) or "none",
        )
        names = self.columns()
        return table.select([id_col, *names]).rename_columns([id_col, *names.values()])

    def load_embedding_model(self, device: str) -> Callable:
        """The image tower: a callable from a batch of preprocessed images to embeddings."""
        from airflow_curator.core.annotate.clip import load_model, model_spec, resolve_weights

        spec = model_spec(self.options.model)
        weights = resolve_weights(spec, self.options.weights, self.options.weights_sha256)
        model = load_model(
            spec,
            weights,
            device,
            normalize=self.options.normalize,
            autocast=self.options.autocast,
        )
        return lambda images: model.encode(images, None)[0]


class TimmImageEmbedder(_AnnotatorEmbedder):
    """Image embeddings from a timm model (NeMo's default for the LAION heads:
    ``vit_large_patch14_clip_quickgelu_224.openai``), with NeMo's parameters.

    ``pretrained=True`` loads the model's timm hub checkpoint (or ``weights``: a path, URL or
    ``hf-hub:`` id, pinned with ``weights_sha256``); ``pretrained=False`` without ``weights``
    keeps random weights, as in NeMo. Adds ``error`` (why an image could not be decoded; its
    embedding is null). ``use_index_files`` is accepted: the pass always indexes the shard
    itself (and checks a ``.idx`` that is there)."""

    def __init__(
        self,
        model_name: str,
        pretrained: bool = False,
        batch_size: int = 1,
        num_threads_per_worker: int = 4,
        image_embedding_column: str = "image_embedding",
        normalize_embeddings: bool = True,
        classifiers: Iterable[ImageClassifier] = (),
        autocast: bool = True,
        use_index_files: bool = False,
        *,
        weights: str | None = None,
        weights_sha256: str | None = None,
        device: str = "auto",
    ) -> None:
        from airflow_curator.core.annotate.clip import RANDOM
        from airflow_curator.core.annotate.timm_model import PREFIX

        if weights is None and not pretrained:
            weights = RANDOM
        super().__init__(
            PREFIX + model_name,
            weights=weights,
            weights_sha256=weights_sha256,
            device=device,
            batch_size=batch_size,
            num_threads_per_worker=num_threads_per_worker,
            image_embedding_column=image_embedding_column,
            classifiers=classifiers,
            normalize_embeddings=normalize_embeddings,
            autocast=autocast,
        )
        self.model_name = model_name
        self.pretrained = pretrained
        self.use_index_files = use_index_files

    def embedding_dim(self) -> int | None:
        from airflow_curator.core.annotate.timm_model import check_name, output_width

        return output_width(check_name(self.model_name))


class ClipImageEmbedder(_AnnotatorEmbedder):
    """CLIP image and caption embeddings with an open_clip model (``ViT-L-14``, or a model-config
    JSON), plus ``clip_score`` (image-caption cosine similarity) and ``error``: the richer
    choice. Weights default to the architecture's pinned OpenAI checkpoint."""

    extra_columns = {"text_embedding": "text_embedding", "clip_score": "clip_score"}

    def __init__(
        self,
        model: str = "ViT-L-14",
        weights: str | None = None,
        *,
        weights_sha256: str | None = None,
        device: str = "auto",
        batch_size: int = 64,
        num_threads_per_worker: int = 0,
        image_embedding_column: str = "image_embedding",
        classifiers: Iterable[ImageClassifier] = (),
    ) -> None:
        super().__init__(
            model,
            weights=weights,
            weights_sha256=weights_sha256,
            device=device,
            batch_size=batch_size,
            num_threads_per_worker=num_threads_per_worker,
            image_embedding_column=image_embedding_column,
            classifiers=classifiers,
        )

    def embedding_dim(self) -> int | None:
        import open_clip

        from airflow_curator.core.annotate.clip import model_spec

        spec = model_spec(self.options.model)
        config = spec.config or open_clip.get_model_config(spec.name) or {}
        return int(config["embed_dim"]) if "embed_dim" in config else None
