"""Curation report data: counts per step and shard, score histograms, record cards.

Everything is read from storage (the manifest, the merged metadata, the output manifest and the
run record the DAG leaves), one shard at a time: histograms are fixed bins, cards are reservoirs
and extremes are bounded heaps, so memory does not grow with the dataset.
"""

from __future__ import annotations

import heapq
import io
import json
import logging
import random
from dataclasses import dataclass, field
from typing import Any

from airflow_curator.core import layout
from airflow_curator.core.dataset.discovery import Manifest, load_manifest
from airflow_curator.core.dataset.save_metadata import INPUT_SUFFIX, filter_marker
from airflow_curator.core.dataset.thresholds import (
    PAIR_COLUMNS,
    Funnel,
    Thresholds,
    add_funnels,
    funnel,
)
from airflow_curator.core.errors import ShardError, UsageError
from airflow_curator.core.io import parquet, storage
from airflow_curator.core.progress import Progress
from airflow_curator.core.reshard.plan import FAILED_DOWNLOAD, load_plan
from airflow_curator.core.wds.records import IMAGE_EXTS
from airflow_curator.core.wds.tarsource import record_locations

logger = logging.getLogger(__name__)

UNIQUE, DUPLICATE_OF = "is_unique", "duplicate_of"  # merged from the dedup stage
# score column -> (label, histogram range, threshold param, threshold kind)
SCORES: dict[str, tuple[str, tuple[float, float], str, str]] = {
    "aesthetic_score": ("Aesthetic score", (0.0, 10.0), "min_aesthetic", "min"),
    "nsfw_score": ("NSFW score", (0.0, 1.0), "max_nsfw", "max"),
    "clip_score": ("CLIP image-text score", (-0.2, 0.6), "min_clip_score", "min"),
}
# the pair statistics' histograms (annotate's pairstats columns) -> (label, range, the filter
# drawn on it, its kind)
PAIRS: dict[str, tuple[str, tuple[float, float], str, str]] = {
    "image_side": ("Smaller image side (px)", (0.0, 1024.0), "min_image_side", "min"),
    "aspect_ratio": ("Aspect ratio (long / short side)", (1.0, 5.0), "max_aspect_ratio", "max"),
    "caption_words": ("Caption words", (0.0, 40.0), "min_caption_words", "min"),
    "caption_chars": ("Caption characters", (0.0, 200.0), "min_caption_chars", "min"),
    "caption_language_score": (
        "Caption language confidence",
        (0.0, 1.0),
        "min_language_score",
        "min",
    ),
}
TOP_LANGUAGES = 12
BINS = 40
THUMB_PX = 112


@dataclass
class Histogram:
    lo: float
    hi: float
    counts: list[int] = field(default_factory=lambda: [0] * BINS)
    below: int = 0
    above: int = 0

    def add(self, values: list[float | None]) -> None:
        width = (self.hi - self.lo) / BINS
        for v in values:
            if v is None or v != v:  # null or NaN: a failed record
                continue
            if v < self.lo:
                self.below += 1
            elif v > self.hi:
                self.above += 1
            else:  # the top edge belongs to the last bin
                self.counts[min(int((v - self.lo) / width), BINS - 1)] += 1

    @property
    def total(self) -> int:
        return sum(self.counts) + self.below + self.above


@dataclass
class Card:
    """A record as the report's grids show it: scores, caption, verdict, thumbnail."""

    shard: str
    id: str
    caption: str | None
    kept: bool | None
    error: str | None
    scores: dict[str, float | None]
    thumbnail: str | None = None  # data URI
    duplicate_of: str | None = None


@dataclass
class ShardRow:
    shard: str
    records: int
    annotated: int
    failures: int
    kept: int | None
    duplicates: int | None = None


@dataclass
class ReportData:
    output: str
    dataset: str | None
    params: dict[str, Any]
    steps: dict[str, list[dict[str, Any]]]
    shards: list[ShardRow]
    histograms: dict[str, Histogram]
    thresholds: dict[str, tuple[str, float]]
    kept: list[Card]
    dropped: list[Card]
    lowest: list[Card]
    highest: list[Card]
    pairs: list[tuple[Card, Card | None]]
    output_manifest: dict[str, Any] | None
    input_manifest: dict[str, Any] | None
    # what the counts alone do not say: e.g. kept rows that could not be written, or a filter
    # column the input brought that save-metadata ANDed with the thresholds
    notes: list[str] = field(default_factory=list)
    # records each filter removed alone and in sequence, from the thresholds save-metadata
    # recorded in each shard's Parquet; the values of those filters
    funnel: Funnel = field(default_factory=dict)
    filters: dict[str, Any] = field(default_factory=dict)
    pair_histograms: dict[str, Histogram] = field(default_factory=dict)
    pair_thresholds: dict[str, tuple[str, float]] = field(default_factory=dict)
    languages: dict[str, int] = field(default_factory=dict)

    @property
    def totals(self) -> dict[str, int | None]:
        kept = [s.kept for s in self.shards if s.kept is not None]
        return {
            "records": sum(s.records for s in self.shards),
            "annotated": sum(s.annotated for s in self.shards),
            "failures": sum(s.failures for s in self.shards),
            "kept": sum(kept) if len(kept) == len(self.shards) else None,
            "duplicates": None
            if all(s.duplicates is None for s in self.shards)
            else sum(s.duplicates or 0 for s in self.shards),
        }


class _Reservoir:
    def __init__(self, size: int, rng: random.Random) -> None:
        self.size, self.rng, self.seen = size, rng, 0
        self.items: list[Card] = []

    def offer(self, item: Card) -> None:
        self.seen += 1
        if len(self.items) < self.size:
            self.items.append(item)
        else:
            j = self.rng.randrange(self.seen)
            if j < self.size:
                self.items[j] = item


def _read_json(url: str) -> dict[str, Any] | None:
    if not storage.exists(url):
        return None
    return json.loads(storage.read_bytes(url))


def gather(
    output: str,
    *,
    metadata: str | None = None,
    manifest: str | None = None,
    run_json: str | None = None,
    filter_column: str = "passes_curation",
    id_col: str = "key",
    thresholds: dict[str, float | None] | None = None,
    per_grid: int = 12,
    extremes: int = 6,
    seed: int = 0,
) -> ReportData:
    """Collect the report's figures and cards (thumbnails included) from storage."""
    metadata = metadata or layout.metadata_url(output)
    run = _read_json(run_json or layout.run_url(output)) or {}
    params: dict[str, Any] = run.get("params", {})
    man_url = manifest or layout.manifest_url(output)
    if not storage.exists(man_url):
        raise UsageError(f"no dataset manifest at {man_url}: run discover first")
    man: Manifest = load_manifest(man_url)
    limits: dict[str, tuple[str, float]] = {}
    for col, (_, _, param, kind) in SCORES.items():
        value: float | str | None = (thresholds or {}).get(param)
        if value is None:
            value = params.get(param)
        if value is not None and value != "":
            limits[col] = (kind, float(value))

    rng = random.Random(seed)
    kept, dropped = _Reservoir(per_grid, rng), _Reservoir(per_grid, rng)
    dups = _Reservoir(max(per_grid // 2, 1), rng)
    low: list[tuple[float, str, Card]] = []
    high: list[tuple[float, str, Card]] = []
    hists = {c: Histogram(*SCORES[c][1]) for c in SCORES}
    pair_hists = {c: Histogram(*PAIRS[c][1]) for c in PAIRS}
    languages: dict[str, int] = {}
    counts: Funnel = {}
    filters: dict[str, Any] = {}
    unfunnelled = 0  # shards whose saved columns do not hold what their filters need
    rows: list[ShardRow] = []
    input_filters = 0
    wanted = (*SCORES, "error", "caption", UNIQUE, DUPLICATE_OF)
    # only the columns drawn (not the embeddings, ~6 KB a record): their chunks alone; with the
    # filters' columns (the funnel, the pair statistics' histograms) and the input's own filter
    optional = (*wanted, *PAIR_COLUMNS, "caption_language_score", filter_column)
    optional += (filter_column + INPUT_SUFFIX,)
    progress = Progress("report", len(man.shards), logger=logger)
    for shard in man.shards:
        url = storage.join(metadata, f"{shard.stem}.parquet")
        if not storage.exists(url):
            rows.append(ShardRow(shard.stem, shard.records or 0, 0, 0, None))
            progress.update()
            continue
        read = parquet.load(url, shard.stem, [id_col], optional=optional)
        table = read.table
        marker = filter_marker(read.schema)
        input_filters += bool(marker.get("input_column"))
        if marker.get("thresholds") and marker.get("column") == filter_column:
            filters = marker["thresholds"]
            table = _with_filter_columns(table, read.schema, url, shard.stem, marker)
            unfunnelled += not _add_funnel(counts, table, marker, shard.stem)
        _add_pairs(table, pair_hists, languages)
        names = set(table.column_names)
        cols = {c: table.column(c).to_pylist() for c in wanted if c in names}
        ids = [str(i) for i in table.column(id_col).to_pylist()]
        flags = table.column(filter_column).to_pylist() if filter_column in names else None
        errors = cols.get("error", [None] * len(ids))
        for c in SCORES:
            if c in cols:
                hists[c].add(cols[c])
        annotated = len(ids) if any(c in cols for c in SCORES) else 0
        failures = sum(e is not None for e in errors)
        rows.append(
            ShardRow(
                shard.stem,
                len(ids),
                annotated,
                failures,
                None if flags is None else sum(bool(f) for f in flags),
                None if UNIQUE not in cols else sum(u is False for u in cols[UNIQUE]),
            )
        )
        for i, rid in enumerate(ids):
            card = Card(
                shard.stem,
                rid,
                (cols.get("caption") or [None] * len(ids))[i],
                None if flags is None else bool(flags[i]),
                errors[i],
                {c: cols[c][i] for c in SCORES if c in cols},
            )
            if flags is not None:
                (kept if flags[i] else dropped).offer(card)
            if UNIQUE in cols and cols[UNIQUE][i] is False and cols.get(DUPLICATE_OF):
                card.duplicate_of = cols[DUPLICATE_OF][i]
                dups.offer(card)
            score = card.scores.get("aesthetic_score")
            if score is not None:
                _push(low, (-score, rid, card), extremes)
                _push(high, (score, rid, card), extremes)
        progress.update()

    lowest = [s for _, _, s in sorted(low, key=lambda t: (-t[0], t[1]))]
    highest = [s for _, _, s in sorted(high, key=lambda t: (-t[0], t[1]))]
    duplicates = sorted(dups.items, key=lambda d: d.id)
    originals = _find(
        man, metadata, id_col, {d.duplicate_of for d in duplicates}, flags_col=filter_column
    )
    pairs = [(d, originals.get(d.duplicate_of or "")) for d in duplicates]
    picked = kept.items + dropped.items + lowest + highest + duplicates + list(originals.values())
    _thumbnails(man, picked)
    notes = []
    if unfunnelled:
        notes.append(
            f"{unfunnelled} shards lack columns their filters need (saved with --columns): "
            "the funnel leaves them out"
        )
    given: dict[str, Any] = dict(thresholds or {})
    drawn = {**filters, **{k: v for k, v in given.items() if v is not None and v != ""}}
    pair_limits = {
        col: (kind, float(drawn[param]))
        for col, (_, _, param, kind) in PAIRS.items()
        if isinstance(drawn.get(param), (int, float))
    }
    top = filters.get("clip_score_top_threshold")
    if top is not None and "clip_score" not in limits:
        limits["clip_score"] = (f"top {filters['clip_score_top_fraction']:g}: min", float(top))
    if input_filters:
        notes.append(
            f"{input_filters} shards brought their own {filter_column!r} column: kept as "
            f"{filter_column + INPUT_SUFFIX!r} and ANDed with the thresholds"
        )
    plan_url = layout.plan_url(output)
    if storage.exists(plan_url):
        failed = sum(i.failed for i in load_plan(plan_url).inputs)
        if failed:
            notes.append(f"{failed} kept records not written: {FAILED_DOWNLOAD}")
    return ReportData(
        notes=notes,
        funnel=counts,
        filters=filters,
        pair_histograms=pair_hists,
        pair_thresholds=pair_limits,
        languages=dict(sorted(languages.items(), key=lambda kv: (-kv[1], kv[0]))),
        output=output,
        dataset=man.dataset,
        params=params,
        steps=run.get("steps", {}),
        shards=rows,
        histograms=hists,
        thresholds=limits,
        pairs=pairs,
        kept=sorted(kept.items, key=lambda s: s.id),
        dropped=sorted(dropped.items, key=lambda s: s.id),
        lowest=lowest,
        highest=highest,
        output_manifest=_read_json(storage.join(output, layout.OUTPUT_MANIFEST)),
        input_manifest=json.loads(man.to_json()),
    )


def _with_filter_columns(
    table: Any, schema: Any, url: str, shard: str, marker: dict[str, Any]
) -> Any:
    """The table with the columns the shard's recorded filters require (``--require``, any
    boolean column) that the first read did not take: one more read, of those only."""
    required = Thresholds.from_dict(marker["thresholds"]).require
    own = marker.get("input_column")
    more = [c for c in (*required, *([own] if isinstance(own, str) else [])) if c in schema.names]
    more = [c for c in dict.fromkeys(more) if c not in table.column_names]
    if not more:
        return table
    extra = parquet.load(url, shard, more).table
    for c in more:
        table = table.append_column(c, extra.column(c))
    return table


def _add_funnel(counts: Funnel, table: Any, marker: dict[str, Any], shard: str) -> bool:
    """Add the shard's funnel, re-evaluated from the thresholds its Parquet records; False
    when the saved columns lack what a filter needs."""
    import pyarrow.compute as pc

    try:
        conditions = Thresholds.from_dict(marker["thresholds"]).conditions(table, shard)
    except ShardError:
        return False
    own = marker.get("input_column")
    if isinstance(own, str) and own in table.column_names:
        conditions.append((own, pc.fill_null(table.column(own), False)))
    add_funnels(counts, funnel(conditions))
    return True


def _add_pairs(table: Any, hists: dict[str, Histogram], languages: dict[str, int]) -> None:
    """The pair statistics' histograms and language counts (records with a value only)."""
    names = set(table.column_names)
    if {"width", "height"} <= names:
        sizes = zip(table.column("width").to_pylist(), table.column("height").to_pylist())
        sides = [(min(w, h), max(w, h)) for w, h in sizes if w is not None and h is not None]
        hists["image_side"].add([float(a) for a, _ in sides])
        hists["aspect_ratio"].add([b / a for a, b in sides if a])
    for c in ("caption_words", "caption_chars", "caption_language_score"):
        if c in names:
            hists[c].add(table.column(c).to_pylist())
    if "caption_language" in names:
        for lang in table.column("caption_language").to_pylist():
            key = lang if lang is not None else "none"
            languages[key] = languages.get(key, 0) + 1


def _find(
    man: Manifest, metadata: str, id_col: str, ids: set[str | None], flags_col: str
) -> dict[str, Card]:
    """The records with these ids (the kept originals of duplicate pairs), one shard at a time."""
    found: dict[str, Card] = {}
    ids = {i for i in ids if i}
    for shard in man.shards:
        if len(found) == len(ids):
            break
        url = storage.join(metadata, f"{shard.stem}.parquet")
        if not ids or not storage.exists(url):
            continue
        drawn = (*SCORES, "caption", "error", flags_col)
        table = parquet.read_table(url, shard.stem, [id_col], optional=drawn)
        names = set(table.column_names)
        for i, rid in enumerate(table.column(id_col).to_pylist()):
            if str(rid) in ids:
                row = {c: table.column(c)[i].as_py() for c in drawn if c in names}
                found[str(rid)] = Card(
                    shard.stem,
                    str(rid),
                    row.get("caption"),
                    row.get(flags_col),
                    row.get("error"),
                    {c: row[c] for c in SCORES if c in row},
                )
    return found


def _push(heap: list, item: tuple, size: int) -> None:
    if len(heap) < size:
        heapq.heappush(heap, item)
    elif item[:2] > heap[0][:2]:
        heapq.heapreplace(heap, item)


def _thumbnails(man: Manifest, cards: list[Card]) -> None:
    """Small JPEG data URIs of the cards' images, read from their shards by range."""
    by_shard: dict[str, list[Card]] = {}
    for s in cards:
        by_shard.setdefault(s.shard, []).append(s)
    tars = {s.stem: s for s in man.shards}
    for stem, group in by_shard.items():
        shard = tars[stem]
        # the same locator reshard uses: the fresh .idx, else one header scan of the tar
        idx = shard.idx if shard.idx_fresh else None
        locations = record_locations(shard.tar, shard.tar_bytes, stem, idx)
        for s in group:
            if s.id not in locations:
                continue
            parts = {ext: (off, size) for ext, off, size in locations[s.id]}
            ext = next((e for e in IMAGE_EXTS if e in parts), None)
            if ext:
                start, size = parts[ext]
                s.thumbnail = _thumbnail(storage.read_range(shard.tar, start, start + size))


def _thumbnail(raw: bytes) -> str | None:
    import base64

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw)) as img:
            img = img.convert("RGB")
            img.thumbnail((THUMB_PX, THUMB_PX))
            out = io.BytesIO()
            img.save(out, format="JPEG", quality=80)
    except (UnidentifiedImageError, OSError, ValueError):
        return None  # a corrupt image: the card shows its error instead
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode()


__all__ = ["IMAGE_EXTS", "ReportData", "gather"]
