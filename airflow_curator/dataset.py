"""``ImageTextPairDataset``: NeMo Curator 0.x's class, on the same core code as the steps.

``metadata`` is a lazy Dask DataFrame with one partition per shard (``frames``), so NeMo users'
code (column assignment, ``head``, ``compute``, ``isin``, filters) runs unchanged, on Dask's
default scheduler or on a ``dask.distributed`` Client the user started. ``save_metadata`` and
``to_webdataset`` compute the graph once per shard and write through the core: each shard's
Parquet atomically, and the reshard plan, writer and commit of ``airflow-curator to-webdataset``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from airflow_curator.core.dataset.discovery import Manifest, Shard, discover
from airflow_curator.core.dataset.save_metadata import Thresholds
from airflow_curator.core.errors import UsageError
from airflow_curator.core.io import storage
from airflow_curator.frames import ShardRows, footer, metadata_frame

logger = logging.getLogger(__name__)


class ImageTextPairDataset:
    """A WebDataset of image-text pairs with one Parquet of metadata per shard.

    NeMo Curator's class: ``ImageTextPairDataset(path, metadata, tar_files, id_col)``,
    ``from_webdataset``, ``metadata``, ``save_metadata`` and ``to_webdataset`` keep their
    meaning; ids are joined, never matched by position, and every write is atomic.
    """

    def __init__(
        self,
        path: str,
        metadata: Any,
        tar_files: list[str],
        id_col: str = "key",
        *,
        manifest: Manifest | None = None,
        rows: ShardRows | None = None,
    ) -> None:
        self.path = path
        self.metadata = metadata
        self.tar_files = list(tar_files)
        self.id_col = id_col
        self._manifest = manifest
        self._rows = rows

    @classmethod
    def from_webdataset(cls, path: str, id_col: str = "key") -> ImageTextPairDataset:
        """Open a dataset folder (local, ``gs://`` or any fsspec URL): one listing and one
        Parquet footer read per shard; the rows are read when computed."""
        manifest = discover(path, count_records=False)
        frame, rows = metadata_frame(manifest, id_col)
        return cls(
            path, frame, [s.tar for s in manifest.shards], id_col, manifest=manifest, rows=rows
        )

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            self._manifest = discover(self.path, count_records=False)
        return self._manifest

    def shard_rows(self) -> ShardRows:
        """The shards of ``tar_files``, in partition order, and where their rows start."""
        if self._rows is None or [s.tar for s in self._rows.shards] != self.tar_files:
            by_name = {storage.basename(s.tar): s for s in self.manifest.shards}
            missing = [t for t in self.tar_files if storage.basename(t) not in by_name]
            if missing:
                raise UsageError(f"{self.path} has no shard {missing[0]} (of tar_files)")
            shards = [by_name[storage.basename(t)] for t in self.tar_files]
            starts = [0]
            for shard in shards:
                if shard.records is None:
                    shard.records = footer(shard)[1]
                starts.append(starts[-1] + shard.records)
            self._rows = ShardRows(tuple(shards), tuple(starts))
        return self._rows

    def partition_shards(self) -> list[Shard]:
        """The shard of each metadata partition; one partition per shard is required."""
        shards = list(self.shard_rows().shards)
        n = self.metadata.npartitions
        if shards and n != len(shards):
            raise UsageError(
                f"the metadata has {n} partitions for {len(shards)} shards: keep one partition "
                "per shard (no repartition)"
            )
        return shards

    def with_metadata(self, metadata: Any) -> ImageTextPairDataset:
        """The same shards with other (lazy) metadata: what embedders and classifiers return."""
        return type(self)(
            self.path,
            metadata,
            self.tar_files,
            self.id_col,
            manifest=self._manifest,
            rows=self._rows,
        )

    def save_metadata(
        self,
        path: str | None = None,
        columns: list[str] | None = None,
        *,
        min_aesthetic: float | None = None,
        max_nsfw: float | None = None,
        min_clip_score: float | None = None,
        require: tuple[str, ...] = (),
        filter_column: str = "passes_curation",
        min_image_side: int | None = None,
        max_aspect_ratio: float | None = None,
        min_caption_words: int | None = None,
        min_caption_chars: int | None = None,
        caption_languages: tuple[str, ...] | list[str] | str = (),
        min_language_score: float | None = None,
        clip_score_top_fraction: float | None = None,
        preset: str | None = None,
    ) -> dict[str, Any]:
        """Compute the metadata (each shard decoded at most once) and write one Parquet per shard
        to ``path`` (default: replace the dataset's own, atomically): exactly the metadata's
        columns, or exactly ``columns``. Thresholds (and ``require``: boolean columns such as
        ``is_unique``) add ``filter_column``; records with an error or a null value a filter
        needs fail them. The filters are the command line's (``--min-image-side`` is
        ``min_image_side=``, ``--preset datacomp-basic`` is ``preset="datacomp-basic"``, whose
        values the keywords given override). ``clip_score_top_fraction`` is the exact
        threshold over the whole dataset: computed from the saved files' ``clip_score`` once
        they are written, then ANDed into their filter column."""
        import dask

        from airflow_curator.savers import apply_top_fraction, save_partition

        t0 = time.perf_counter()
        in_place = path is None or path.rstrip("/") == self.path.rstrip("/")
        dest = self.path if path is None else path
        frame = self.metadata if columns is None else self.metadata[list(columns)]
        if in_place and self.id_col not in frame.columns:
            raise UsageError(
                f"columns must include the id column {self.id_col!r} to replace the dataset's "
                "own metadata (without it the shards could not be read again)"
            )
        if isinstance(caption_languages, str):
            caption_languages = tuple(c.strip() for c in caption_languages.split(",") if c.strip())
        thresholds = Thresholds.build(
            preset,
            min_aesthetic=min_aesthetic,
            max_nsfw=max_nsfw,
            min_clip_score=min_clip_score,
            require=tuple(require),
            min_image_side=min_image_side,
            max_aspect_ratio=max_aspect_ratio,
            min_caption_words=min_caption_words,
            min_caption_chars=min_caption_chars,
            caption_languages=tuple(caption_languages),
            min_language_score=min_language_score,
        )
        top = None  # checked now, applied once every shard is saved
        if clip_score_top_fraction is not None:
            top = Thresholds(clip_score_top_fraction=clip_score_top_fraction)
        shards = self.partition_shards()
        storage.makedirs(dest)
        tasks = [
            dask.delayed(save_partition)(
                part,
                shard,
                storage.join(dest, f"{shard.stem}.parquet"),
                self.id_col,
                in_place,
                thresholds,
                filter_column,
            )
            for part, shard in zip(frame.to_delayed() if shards else [], shards, strict=True)
        ]
        results = list(dask.compute(*tasks))
        found = None
        if top is not None:
            found = apply_top_fraction(
                shards, dest, results, top, filter_column, with_filter=thresholds.any()
            )
        if in_place:  # the metadata is now what was saved: read it, do not recompute it
            fresh = type(self).from_webdataset(self.path, self.id_col)
            self.metadata, self._manifest, self._rows = fresh.metadata, fresh._manifest, fresh._rows
        passed = [r["passed"] for r in results if r["passed"] is not None]
        summary = {
            "dataset": self.path,
            "path": dest,
            "shards": len(results),
            "records": sum(r["records"] for r in results),
            "filter_column": filter_column if thresholds.any() or top else None,
            "passed": sum(passed) if passed else None,
            "clip_threshold": found,
            "columns": results[0]["columns"] if results else [],
            "seconds": round(time.perf_counter() - t0, 3),
            "per_shard": results,
        }
        logger.info(
            "saved the metadata of %d shards (%d records) to %s in %.1fs",
            summary["shards"],
            summary["records"],
            dest,
            summary["seconds"],
        )
        return summary

    def to_webdataset(
        self,
        path: str,
        filter_column: str,
        samples_per_shard: int = 10000,
        max_shards: int = 5,
        old_id_col: str | None = None,
        *,
        workers: int = 0,
        overwrite: bool = False,
    ) -> ImageTextPairDataset:
        """Write the records whose ``filter_column`` is true as a new dataset at ``path``.

        Computes only the id and ``filter_column`` of the metadata (a column assigned in memory
        counts), merges it by id into each shard's saved Parquet under ``path/_work/metadata``
        and runs the core reshard: records in id order within each input shard, new ids, the
        ``.json`` ids rewritten, member bytes unchanged, ``.idx``, Parquet, ``_manifest.json``,
        ``sizes.json`` and ``_SUCCESS`` last. The output Parquet holds the saved columns plus
        ``filter_column``: ``save_metadata()`` first to keep other in-memory columns. A ``path``
        holding files this job did not plan is refused, unless ``overwrite`` (its shard files
        are removed). The output's lease is held throughout: another run writing ``path`` is
        refused (``core.io.lease``)."""
        import dask

        from airflow_curator.core.io.lease import output_lease
        from airflow_curator.core.layout import metadata_url
        from airflow_curator.core.reshard.plan import check_apart, claim_output
        from airflow_curator.core.reshard.writer import reshard_dataset
        from airflow_curator.savers import write_filter

        check_apart(self.path, path)
        claim_output(path, overwrite)  # before the metadata below is written there
        if filter_column not in self.metadata.columns:
            raise UsageError(
                f"no filter column {filter_column!r} in the metadata "
                f"(columns: {', '.join(self.metadata.columns)})"
            )
        shards = self.partition_shards()
        if not shards:
            raise UsageError(f"{self.path} has no shards to write a dataset from")
        folder = metadata_url(path)
        frame = self.metadata[[self.id_col, filter_column]]
        tasks = [
            dask.delayed(write_filter)(part, shard, folder, self.id_col, filter_column)
            for part, shard in zip(frame.to_delayed(), shards, strict=True)
        ]
        with output_lease(path, last=True):
            dask.compute(*tasks)
            reshard_dataset(
                self.path,
                path,
                filter_column,
                workers=workers,
                metadata=folder,
                id_col=self.id_col,
                samples_per_shard=samples_per_shard,
                max_shards=max_shards,
                old_id_col=old_id_col,
                manifest=self.manifest,  # the shards this dataset was opened with: no listing
                overwrite=overwrite,
            )
        return type(self).from_webdataset(path, self.id_col)

    def __len__(self) -> int:
        return sum(s.records or 0 for s in self.shard_rows().shards)

    def __repr__(self) -> str:
        return (
            f"ImageTextPairDataset({self.path!r}, shards={len(self.tar_files)}, "
            f"id_col={self.id_col!r})"
        )
