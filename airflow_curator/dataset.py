"""``ImageTextPairDataset``: the seed's notebook API, backed by the same core code as the steps."""

from __future__ import annotations

import logging
from typing import Any

from airflow_curator.core.dataset.discovery import Manifest, discover

logger = logging.getLogger(__name__)


class ImageTextPairDataset:
    """A WebDataset of image-text pairs with one Parquet of metadata per shard.

    Compatible with NeMo Curator's class of the same name: ``from_webdataset``, ``metadata``,
    ``save_metadata`` and ``to_webdataset`` keep their meaning; ids are joined, never matched by
    position.
    """

    def __init__(self, path: str, manifest: Manifest, id_col: str = "key") -> None:
        self.path = path
        self.manifest = manifest
        self.id_col = id_col
        self._metadata: Any = None

    @classmethod
    def from_webdataset(cls, path: str, id_col: str = "key") -> ImageTextPairDataset:
        """Open a dataset folder (local, ``gs://`` or any fsspec URL) by one listing."""
        return cls(path, discover(path), id_col)

    @property
    def tar_files(self) -> list[str]:
        return [s.tar for s in self.manifest.shards]

    @property
    def metadata(self) -> Any:
        """All shards' Parquet rows as one pyarrow Table (loaded on first use), with a
        ``_shard`` column naming each row's shard."""
        if self._metadata is None:
            import pyarrow as pa

            from airflow_curator.core.io import parquet

            tables = []
            for s in self.manifest.shards:
                assert s.parquet is not None  # discovery pairs every shard with its Parquet
                t = parquet.read_table(s.parquet, s.stem, size=s.parquet_bytes)
                tables.append(t.append_column("_shard", pa.array([s.stem] * t.num_rows)))
            self._metadata = pa.concat_tables(tables, promote_options="default") if tables else None
        return self._metadata

    def save_metadata(
        self,
        path: str | None = None,
        columns: list[str] | None = None,
        *,
        annotations: str | list[str] | None = None,
        min_aesthetic: float | None = None,
        max_nsfw: float | None = None,
        min_clip_score: float | None = None,
        require: tuple[str, ...] = (),
        filter_column: str = "passes_curation",
    ) -> dict[str, Any]:
        """Write each shard's metadata to ``path`` (default: replace the dataset's own Parquet,
        atomically), joined by id with ``annotations`` (folders of ``NNNNN.parquet``) when
        given; ``columns`` keeps a subset (the id always); thresholds and ``require`` (boolean
        columns such as ``is_unique``) write ``filter_column``."""
        from airflow_curator.core.dataset.save_metadata import Thresholds, save_metadata

        result = save_metadata(
            self.path,
            annotations=annotations,
            path=path,
            columns=columns,
            id_col=self.id_col,
            thresholds=Thresholds(min_aesthetic, max_nsfw, min_clip_score, tuple(require)),
            filter_column=filter_column,
        )
        if path is None:  # the Parquet changed under us: reload lazily
            self.manifest = discover(self.path)
            self._metadata = None
        return result

    def to_webdataset(
        self,
        path: str,
        filter_column: str,
        samples_per_shard: int = 10000,
        max_shards: int = 5,
        old_id_col: str | None = None,
        *,
        metadata: str | None = None,
        workers: int = 0,
    ) -> ImageTextPairDataset:
        """Write the records whose ``filter_column`` is true as a new dataset at ``path``: new ids,
        ``.json`` ids rewritten, member bytes unchanged, ``.idx`` and Parquet per shard, then a
        manifest and ``_SUCCESS``. Same code as the plan-reshard, reshard and commit steps."""
        from airflow_curator.core.reshard.writer import reshard_dataset

        reshard_dataset(
            self.path,
            path,
            filter_column,
            workers=workers,
            metadata=metadata,
            id_col=self.id_col,
            samples_per_shard=samples_per_shard,
            max_shards=max_shards,
            old_id_col=old_id_col,
        )
        return type(self).from_webdataset(path, self.id_col)

    def __len__(self) -> int:
        return self.manifest.records or 0

    def __repr__(self) -> str:
        return (
            f"ImageTextPairDataset({self.path!r}, shards={len(self.manifest.shards)}, "
            f"records={self.manifest.records}, id_col={self.id_col!r})"
        )
