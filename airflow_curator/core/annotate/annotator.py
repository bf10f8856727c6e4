"""Annotate shards: CLIP image and text embeddings, CLIP score, aesthetic and NSFW scores.

One ``Annotator`` per invocation loads the model and heads once, then per shard: scan the tar
(ids, captions, a structural check of each image), decode (on the CPU as the scan goes, see
``cpu_decoder``; on a GPU with DALI), embed and score batch by batch, check the ids against the
Parquet and each ``.json``, and write ``<annotations>/NNNNN.parquet`` atomically, rows in the
Parquet's order, joined by id. A bad image gets an ``error`` and null values; the rest of the
shard is annotated. A shard whose annotation was made from the same inputs is skipped unless
``force``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from airflow_curator.core.annotate import pairstats
from airflow_curator.core.annotate.clip import ClipModel, load_model, model_spec, resolve_weights
from airflow_curator.core.annotate.cpu_decoder import CpuDecoder
from airflow_curator.core.annotate.decode import Batch, Decoder, Preprocess, inspect_image
from airflow_curator.core.annotate.heads import DEFAULTS, Head
from airflow_curator.core.annotate.threads import ThreadPlan, cpu_cores, plan_threads, torch_threads
from airflow_curator.core.annotate.weights import WeightsFile, resolve
from airflow_curator.core.dataset.discovery import Manifest, Shard, shards_of
from airflow_curator.core.dataset.metadata import check_json_id, compare_ids, read_shard_ids
from airflow_curator.core.device import pick_device
from airflow_curator.core.errors import DataError, ShardError
from airflow_curator.core.io import parquet, storage
from airflow_curator.core.layout import annotations_url
from airflow_curator.core.progress import Progress
from airflow_curator.core.stats import Result, Stats, per_second
from airflow_curator.core.wds.index import index_text, read_index
from airflow_curator.core.wds.naming import split_member
from airflow_curator.core.wds.records import iter_records
from airflow_curator.core.wds.tarstream import Member

logger = logging.getLogger(__name__)

NONE = "none"
META_KEY = b"airflow_curator.annotate"  # the inputs: equal means the annotation is reused
THREADS_KEY = b"airflow_curator.annotate.threads"  # the thread plan the values were made with
MAX_ERRORS = 5  # error examples per shard in the result


@dataclass
class Options:
    """What the command line sets; ``None`` weights mean the pinned defaults."""

    model: str
    weights: str | None = None
    weights_sha256: str | None = None
    aesthetic_weights: str | None = None
    aesthetic_sha256: str | None = None
    nsfw_weights: str | None = None
    nsfw_sha256: str | None = None
    device: str = "auto"
    batch_size: int = 64
    id_col: str = "key"
    force: bool = False
    torch_threads: int | None = None  # None: from cores, model FLOPs and batch (threads.py)
    decode_threads: int | None = None  # None: the cores torch leaves (CPU), up to 8 (GPU)
    normalize: bool = True  # timm models: L2-normalise the embeddings (CLIP ones always are)
    autocast: bool = True  # timm models on a GPU: run under torch.autocast


FAILED_DOWNLOAD = "no image: the Parquet row says its download failed"


@dataclass
class ScannedRecord:
    id: str
    image: Member | None
    caption: str
    error: str | None
    size: tuple[int, int] | None = None  # the image as decoded, from its header (pairstats)


@dataclass
class Outcome:
    shard: str
    action: str  # annotated | skipped
    records: int = 0
    failed: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = {
            "shard": self.shard,
            "action": self.action,
            "records": self.records,
            "failed": self.failed,
        }
        if self.action == "annotated":
            d["seconds"] = round(self.seconds, 3)
            d["records_per_s"] = per_second(self.records, self.seconds)
            d["errors"] = self.errors
        return d


def scan_shard(
    tar: str, shard: str, id_col: str, size: int | None = None, source: str | None = None
) -> Iterator[ScannedRecord]:
    """Records in tar order with their caption and, for unusable images, the reason;
    ``source``: the dataset URI of ``tar`` when it is a local copy."""
    for rec in iter_records(tar, shard, size=size, source=source):
        check_json_id(rec, id_col, shard)
        ext = rec.image_ext()
        error, dims = (
            inspect_image(rec.data[ext])
            if ext
            else ("record has no image (jpg, jpeg, png or webp)", None)
        )
        caption = rec.data.get("txt", b"").decode("utf-8", "replace")
        yield ScannedRecord(rec.id, rec.parts[ext] if ext else None, caption, error, dims)


class Annotator:
    """The model, heads and decoder of one invocation."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.device = pick_device(options.device)
        self.spec = model_spec(options.model)
        self.weights = resolve_weights(self.spec, options.weights, options.weights_sha256)
        self.head_files: dict[str, WeightsFile] = {}
        for kind, uri, sha in (
            ("aesthetic", options.aesthetic_weights, options.aesthetic_sha256),
            ("nsfw", options.nsfw_weights, options.nsfw_sha256),
        ):
            if uri == NONE:
                continue
            self.head_files[kind] = resolve(uri or DEFAULTS[kind], sha)
        self._clip: ClipModel | None = None
        self.heads: dict[str, Head] = {}
        self.decoder: CpuDecoder | Decoder | None = None
        self.threads: ThreadPlan | None = None

    def inputs(self, shard: Shard) -> dict[str, Any]:
        """What an annotation depends on; equal inputs mean the annotation can be reused."""
        return {
            "tar": storage.basename(shard.tar),
            "tar_bytes": shard.tar_bytes,
            "tar_mtime": shard.tar_mtime,
            "model": self.inputs_model,
            "heads": {k: w.sha256 for k, w in sorted(self.head_files.items())},
            "id_col": self.options.id_col,
            "pairstats": pairstats.VERSION,
        }

    def share(self, other: Annotator) -> None:
        """Reuse ``other``'s loaded CLIP model when it is the same model on the same device."""
        if (
            other._clip is not None
            and self._clip is None
            and (other.inputs_model == self.inputs_model and other.device == self.device)
        ):
            self._clip = other._clip

    @property
    def inputs_model(self) -> str:
        raw = "" if self.options.normalize else "+raw"  # unnormalised timm embeddings
        return f"{self.spec.key}{raw}@{self.weights.sha256 if self.weights else 'random'}"

    @property
    def clip(self) -> ClipModel:
        """Loaded on first use: an invocation whose shards are all done loads nothing."""
        if self.decoder is None:
            import pyarrow as pa

            t0 = time.perf_counter()
            if self._clip is None:
                self._clip = load_model(
                    self.spec,
                    self.weights,
                    self.device,
                    normalize=self.options.normalize,
                    autocast=self.options.autocast,
                )
            for kind, wf in self.head_files.items():
                self.heads[kind] = Head(kind, wf, self._clip.embed_dim, self.device)
            opts = self.options
            gpu = self.device.startswith("cuda")
            self.threads = plan_threads(
                self.device,
                cpu_cores(),
                0 if gpu else self._clip.flops_per_image,
                opts.batch_size,
                opts.torch_threads,
                opts.decode_threads,
            )
            if gpu:
                self.decoder = Decoder(
                    Preprocess.from_open_clip(self._clip.preprocess),
                    self.device,
                    opts.batch_size,
                    self.threads.decode_threads,
                )
            else:
                self.decoder = CpuDecoder(
                    self._clip.image_transform(),
                    self._clip.image_size,
                    self.threads.decode_threads,
                    opts.batch_size,
                )
                self.decoder.start()
            # loaded with the model, not in the first shard's time: the language ID, and pandas,
            # which pyarrow imports on its first array (~1 s)
            pairstats.language_id()
            pa.array([0.0])
            logger.info(
                "model %s (%d-d) and heads %s on %s loaded in %.1fs",
                self.spec.label,
                self._clip.embed_dim,
                ", ".join(self.heads) or "none",
                self.device,
                time.perf_counter() - t0,
            )
        assert self._clip is not None
        return self._clip

    def close(self) -> None:
        """Stop the CPU decoder's processes (also done when the annotator is collected); the
        next shard starts them again."""
        if isinstance(self.decoder, CpuDecoder):
            self.decoder.close()

    def is_done(self, shard: Shard, url: str) -> bool:
        """Whether ``url`` holds this shard's annotation from the same inputs (one footer
        read). Missing, or bytes that are not Parquet: annotate again (the write replaces it
        atomically); a storage failure is not an answer: it propagates (``TransientError``)."""
        if self.weights is None:  # random weights: never reuse
            return False
        try:
            meta = parquet.read_schema(url, shard.stem).metadata or {}
        except DataError:  # missing or unreadable bytes
            return False
        return meta.get(META_KEY) == self._fingerprint(shard)

    def _fingerprint(self, shard: Shard) -> bytes:
        return json.dumps(self.inputs(shard), sort_keys=True).encode()

    def annotate_shard(self, shard: Shard, url: str) -> Outcome:
        """Annotate one shard into the Parquet file ``url`` (written atomically)."""
        table, outcome = self.annotate_table(shard)
        assert self.threads is not None
        threads = json.dumps(self.threads.metadata(), sort_keys=True).encode()
        parquet.write_table(
            url, table, metadata={META_KEY: self._fingerprint(shard), THREADS_KEY: threads}
        )
        return outcome

    def annotate_table(self, shard: Shard) -> tuple[Any, Outcome]:
        """One shard's annotation table (the Parquet's ids, in its order) and its outcome."""
        clip = self.clip
        assert self.threads is not None
        with torch_threads(self.threads.torch_threads):
            return self._annotate_table(shard, clip)

    def _annotate_table(self, shard: Shard, clip: ClipModel) -> tuple[Any, Outcome]:
        t0 = time.perf_counter()
        with storage.spool("annotate-") as tmp:  # DALI reads a local file: one streamed GET
            tar = storage.local_path(shard.tar)
            if not storage.is_local(shard.tar):
                tar = os.path.join(tmp, f"{shard.stem}.tar")
                storage.download(shard.tar, tar, shard.tar_bytes)
            assert shard.parquet is not None  # discovery pairs every shard with its Parquet
            pq_ids, failed = read_shard_ids(
                shard.parquet, self.options.id_col, shard.stem, shard.parquet_bytes
            )
            records: list[ScannedRecord] = []
            scan = scan_shard(tar, shard.stem, self.options.id_col, shard.tar_bytes, shard.tar)
            # the scan is consumed as the decoder needs records: reading overlaps decoding
            results = self._run(shard, tar, _kept(scan, records), clip)
            records.extend(scan)  # whatever the decoder did not need (none usable, say)
            present = {r.id for r in records}
            compare_ids(pq_ids, present, shard.stem, allowed_missing=failed)
        # img2dataset's failed downloads: a Parquet row and no members, carried with an error
        records += [ScannedRecord(rid, None, "", FAILED_DOWNLOAD) for rid in failed - present]
        table = self._table(pq_ids, records, results, clip.embed_dim)
        captions = {r.id: r.caption for r in records}
        sizes = {r.id: r.size for r in records}
        table = pairstats.with_pair_stats(
            table, self.options.id_col, captions.__getitem__, sizes.get
        )
        errors = {r.id: r.error for r in records if r.error}
        return table, Outcome(
            shard.stem,
            "annotated",
            len(records),
            len(errors),
            time.perf_counter() - t0,
            [f"{k}: {v}" for k, v in sorted(errors.items())[:MAX_ERRORS]],
        )

    def _run(
        self, shard: Shard, tar: str, records: Iterator[ScannedRecord], clip: ClipModel
    ) -> dict[str, tuple[Any, ...]]:
        """id -> (image_emb, text_emb, clip_score, aesthetic, nsfw) as numpy rows, for the
        usable records among ``records``."""
        by_id: dict[str, ScannedRecord] = {}

        def good() -> Iterator[ScannedRecord]:
            for r in records:
                if r.error is None:
                    by_id[r.id] = r
                    yield r

        out: dict[str, tuple[Any, ...]] = {}
        for batch in self._batches(shard, tar, good()):
            for rid, error in batch.errors.items():
                by_id[rid].error = error
            if not batch.ids:
                continue
            tokens = clip.tokenize([by_id[rid].caption for rid in batch.ids])
            img, txt = clip.encode(batch.images, tokens)
            cols = [img, txt, None if txt is None else (img * txt).sum(-1)]
            cols += [self.heads[k](img) if k in self.heads else None for k in ("aesthetic", "nsfw")]
            arrays = [None if c is None else c.cpu().numpy() for c in cols]
            for i, rid in enumerate(batch.ids):
                out[rid] = tuple(None if a is None else a[i] for a in arrays)
        return out

    def _batches(self, shard: Shard, tar: str, records: Iterator[ScannedRecord]) -> Iterator[Batch]:
        """Decoded batches of the usable images, in tar order: on the CPU straight from their
        members as the scan reaches them; on a GPU through DALI's reader, which needs an index
        of them all first."""
        if isinstance(self.decoder, CpuDecoder):
            return self.decoder.decode(tar, _images(records))
        assert self.decoder is not None
        good = list(records)
        if not good:
            return iter(())
        by_id = {r.id: r for r in good}

        def read(rid: str) -> bytes:
            m = by_id[rid].image
            assert m is not None  # a record without an image has an error, and is not here
            with open(tar, "rb") as f:
                f.seek(m.data_offset)
                return f.read(m.size)

        text = self._index(shard, good)
        return self.decoder.decode_tar(tar, text, [r.id for r in good], read)

    def _index(self, shard: Shard, good: list[ScannedRecord]) -> str:
        """The DALI index of the usable images; the shard's ``.idx``, when present, must agree."""
        images = [r.image for r in good if r.image is not None]
        text, _ = index_text(images, shard.stem)
        if shard.idx:
            try:
                theirs = read_index(shard.idx, shard.stem)
                stale = any(
                    r.id not in theirs
                    or (split_member(m.name)[1], m.data_offset, m.size) not in theirs[r.id]
                    for r, m in zip(good, images, strict=True)
                )
                if stale:
                    logger.warning(
                        "shard %s: %s is stale, run `index --force`", shard.stem, shard.idx
                    )
            except (OSError, ShardError) as e:
                logger.warning("shard %s: %s is unreadable (%s)", shard.stem, shard.idx, e)
        return text

    def _table(
        self,
        ids: list[str],
        records: list[ScannedRecord],
        results: dict[str, tuple[Any, ...]],
        dim: int,
    ) -> Any:
        import numpy as np
        import pyarrow as pa

        errors = {r.id: r.error for r in records}
        n = len(ids)
        ok = np.array([rid in results and errors[rid] is None for rid in ids], dtype=bool)
        zeros = np.zeros(dim, dtype=np.float32)

        def column(j: int, width: int | None) -> Any:
            head_off = j >= 1 and results and next(iter(results.values()))[j] is None
            if not results or head_off:
                return pa.nulls(n, pa.list_(pa.float32(), width) if width else pa.float32())
            rows = [
                results[rid][j] if flag else (zeros if width else 0.0) for rid, flag in zip(ids, ok)
            ]
            values = np.asarray(rows, dtype=np.float32)
            if width:
                flat = pa.array(values.reshape(-1), pa.float32())
                return pa.FixedSizeListArray.from_arrays(flat, width, mask=pa.array(~ok))
            return pa.array(values, pa.float32(), mask=~ok)

        return pa.table(
            {
                self.options.id_col: pa.array(ids, pa.string()),
                "image_embedding": column(0, dim),
                "text_embedding": column(1, dim),
                "clip_score": column(2, None),
                "aesthetic_score": column(3, None),
                "nsfw_score": column(4, None),
                "error": pa.array([errors[rid] for rid in ids], pa.string()),
            }
        )


def _images(records: Iterator[ScannedRecord]) -> Iterator[tuple[str, Member]]:
    """(id, image member) of usable records (a record without an image has an error)."""
    for r in records:
        assert r.image is not None
        yield r.id, r.image


def _kept(records: Iterator[ScannedRecord], into: list[ScannedRecord]) -> Iterator[ScannedRecord]:
    """``records``, each also appended to ``into``."""
    for r in records:
        into.append(r)
        yield r


def annotate_dataset(
    dataset: str,
    output: str,
    shards: str | None,
    options: Options,
    annotator: Annotator | None = None,
    manifest: Manifest | str | None = None,
) -> Result:
    """Annotate the selected shards into ``<output>/_work/annotations``; the step's result.
    ``manifest``: discover's (object or URI), so no listing."""
    stats = Stats()
    selected = shards_of(dataset, manifest, on_invalid="skip").select(shards)
    own = annotator is None
    annotator = annotator or Annotator(options)
    folder = annotations_url(output)
    try:
        outcomes = _annotate_shards(annotator, selected, folder, options)
    finally:
        if own:
            annotator.close()
    done = [o for o in outcomes if o.action == "annotated"]
    return stats.result(
        dataset=dataset,
        output=output,
        annotations=folder,
        device=annotator.device,
        threads=None
        if annotator.threads is None
        else {"torch": annotator.threads.torch_threads, "decode": annotator.threads.decode_threads},
        model=options.model,
        heads=sorted(annotator.head_files),
        shards=len(outcomes),
        annotated=len(done),
        skipped=len(outcomes) - len(done),
        records=sum(o.records for o in done),
        failed=sum(o.failed for o in done),
        per_shard=[o.as_dict() for o in outcomes],
    )


def _annotate_shards(
    annotator: Annotator, selected: list[Shard], folder: str, options: Options
) -> list[Outcome]:
    """Each selected shard annotated into ``folder``, or skipped when done, in order."""
    storage.makedirs(folder)
    outcomes: list[Outcome] = []
    progress = Progress("annotate", len(selected), logger=logger)
    for shard in selected:
        url = storage.join(folder, f"{shard.stem}.parquet")
        if not options.force and annotator.is_done(shard, url):
            outcome = Outcome(shard.stem, "skipped")
        else:
            outcome = annotator.annotate_shard(shard, url)
            if outcome.failed:
                logger.warning(
                    "shard %s: %d of %d images failed, e.g. %s",
                    shard.stem,
                    outcome.failed,
                    outcome.records,
                    outcome.errors[0],
                )
        outcomes.append(outcome)
        progress.update(items=outcome.records if outcome.action == "annotated" else 0)
    return outcomes
