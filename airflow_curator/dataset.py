"""``ImageTextPairDataset``: the seed's notebook API, backed by the same core code as the steps."""

from __future__ import annotations

import logging
from typing import Any

from airflow_curator.core.discovery import Manifest, discover

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

            from airflow_curator.core.metadata import read_table

            tables = []
            for s in self.manifest.shards:
                t = read_table(s.parquet, s.stem)  # type: ignore[arg-type]
                tables.append(t.append_column("_shard", pa.array([s.stem] * t.num_rows)))
            self._metadata = pa.concat_tables(tables, promote_options="default") if tables else None
        return self._metadata

    def __len__(self) -> int:
        return self.manifest.records or 0

    def __repr__(self) -> str:
        return (
            f"ImageTextPairDataset({self.path!r}, shards={len(self.manifest.shards)}, "
            f"records={self.manifest.records}, id_col={self.id_col!r})"
        )
