"""NeMo Curator-style annotation of an ``ImageTextPairDataset``: an embedder and classifiers.

As in NeMo Curator, an embedder and classifiers are applied to a dataset::

    dataset = ImageTextPairDataset.from_webdataset("gs://bucket/dataset")
    embedder = ClipImageEmbedder("ViT-L-14", batch_size=256)
    scored = NsfwClassifier(weights="gs://bucket/nsfw.pth")(AestheticClassifier()(embedder(dataset)))
    scored.metadata  # the Parquet rows with embeddings, clip_score, aesthetic_score, nsfw_score

Unlike NeMo Curator, the steps are fused: nothing runs until the result is needed, then one pass
per shard decodes, embeds and scores (the same core code as ``airflow-curator annotate``), and
rows are joined to the metadata by id, never by position.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

from airflow_curator.core.annotate.annotator import (
    NONE,
    Annotator,
    Options,
    annotate_dataset,
    annotations_url,
)
from airflow_curator.core.io import parquet, storage
from airflow_curator.dataset import ImageTextPairDataset

logger = logging.getLogger(__name__)

__all__ = ["AestheticClassifier", "AnnotatedDataset", "ClipImageEmbedder", "NsfwClassifier"]


class ClipImageEmbedder:
    """CLIP image (and caption) embeddings with an open_clip model; the model loads once per
    embedder, however many datasets or shards it annotates."""

    def __init__(
        self,
        model: str = "ViT-L-14",
        weights: str | None = None,
        *,
        weights_sha256: str | None = None,
        device: str = "auto",
        batch_size: int = 64,
    ) -> None:
        self.options = Options(
            model=model,
            weights=weights,
            weights_sha256=weights_sha256,
            device=device,
            batch_size=batch_size,
            aesthetic_weights=NONE,
            nsfw_weights=NONE,
        )
        self._annotators: dict[tuple[Any, ...], Annotator] = {}

    def annotator(self, options: Options) -> Annotator:
        key = tuple(
            sorted((k, v) for k, v in vars(options).items() if k not in ("force", "id_col"))
        )
        if key not in self._annotators:
            annotator = Annotator(options)
            for other in self._annotators.values():
                annotator.share(other)
            self._annotators[key] = annotator
        return self._annotators[key]

    def __call__(self, dataset: ImageTextPairDataset) -> AnnotatedDataset:
        return AnnotatedDataset(dataset, self)


class _Classifier:
    kind = ""

    def __init__(self, weights: str | None = None, *, weights_sha256: str | None = None) -> None:
        self.weights = weights
        self.weights_sha256 = weights_sha256

    def __call__(self, annotated: AnnotatedDataset) -> AnnotatedDataset:
        if not isinstance(annotated, AnnotatedDataset):
            raise TypeError(
                f"{type(self).__name__} scores CLIP embeddings: apply a ClipImageEmbedder first, "
                "e.g. classifier(embedder(dataset))"
            )
        heads = {**annotated.heads, self.kind: (self.weights, self.weights_sha256)}
        return replace(annotated, heads=heads, _result=None)


class AestheticClassifier(_Classifier):
    """LAION improved aesthetic predictor (0-10) over the CLIP image embedding
    (default: the pinned LAION checkpoint)."""

    kind = "aesthetic"


class NsfwClassifier(_Classifier):
    """LAION CLIP-based NSFW detector (probability 0-1); pass its PyTorch state dict."""

    kind = "nsfw"


@dataclass
class AnnotatedDataset:
    """A dataset with the annotations asked for; computed on first use, once."""

    dataset: ImageTextPairDataset
    embedder: ClipImageEmbedder
    heads: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    output: str | None = None
    _result: dict[str, Any] | None = None

    def options(self, force: bool = False) -> Options:
        base = self.embedder.options
        aesthetic = self.heads.get("aesthetic", (NONE, None))
        nsfw = self.heads.get("nsfw", (NONE, None))
        return replace(
            base,
            aesthetic_weights=aesthetic[0],
            aesthetic_sha256=aesthetic[1],
            nsfw_weights=nsfw[0],
            nsfw_sha256=nsfw[1],
            id_col=self.dataset.id_col,
            force=force,
        )

    @property
    def output_url(self) -> str:
        """Where annotations go: ``<output>/_work/annotations`` (default output: the dataset
        folder, whose ``_work`` is ignored by discovery)."""
        return self.output or self.dataset.path

    def annotate(
        self, output: str | None = None, shards: str | None = None, force: bool = False
    ) -> dict[str, Any]:
        """Run (or reuse) the annotation; returns the step result (counts, failures, images/s)."""
        if output is not None:
            self.output = output
        options = self.options(force)
        self._result = annotate_dataset(
            self.dataset.path, self.output_url, shards, options, self.embedder.annotator(options)
        )
        return self._result

    @property
    def annotations(self) -> Any:
        """All shards' annotation rows as one pyarrow Table."""
        import pyarrow as pa

        if self._result is None:
            self.annotate()
        folder = annotations_url(self.output_url)
        tables = []
        for shard in self.dataset.manifest.shards:
            url = storage.join(folder, f"{shard.stem}.parquet")
            tables.append(parquet.read_table(url, shard.stem).replace_schema_metadata(None))
        return pa.concat_tables(tables)

    @property
    def metadata(self) -> Any:
        """The dataset's metadata with the annotation columns, joined by id."""
        import pyarrow as pa

        meta = self.dataset.metadata
        ann = self.annotations
        id_col = self.dataset.id_col
        position = {rid: i for i, rid in enumerate(ann.column(id_col).to_pylist())}
        rows = pa.array(
            [position.get(str(rid)) for rid in meta.column(id_col).to_pylist()], pa.int64()
        )
        joined = ann.take(rows)
        for name in ann.column_names:
            if name != id_col:
                meta = meta.append_column(name, joined.column(name))
        return meta
