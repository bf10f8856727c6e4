"""The curation filters save-metadata turns into its boolean filter column, and their presets.

Each filter is a typed value (never an evaluated string) and one named condition over the
merged table. A record passes when it has no ``error`` and every given condition holds; a null
value that a condition needs fails it (a failed image has null scores and sizes, an empty
caption a null language). The named conditions also give the report its funnel: what each
filter removes alone and in sequence.

| filter | passes when | needs |
|---|---|---|
| ``min_aesthetic`` | ``aesthetic_score >= X`` | ``aesthetic_score`` |
| ``max_nsfw`` | ``nsfw_score <= X`` | ``nsfw_score`` |
| ``min_clip_score`` | ``clip_score >= X`` | ``clip_score`` |
| ``clip_score_top_fraction`` | ``clip_score >= T``, T: the run's top-F threshold | ``clip_score`` |
| ``min_image_side`` | ``min(width, height) >= N`` | ``width``, ``height`` |
| ``max_aspect_ratio`` | ``max(width, height) / min(width, height) <= X`` | ``width``, ``height`` |
| ``min_caption_words`` | ``caption_words >= N`` | ``caption_words`` |
| ``min_caption_chars`` | ``caption_chars >= N`` | ``caption_chars`` |
| ``caption_languages`` | ``caption_language`` is one of them | ``caption_language`` |
| ``min_language_score`` | ``caption_language_score >= X`` | ``caption_language_score`` |
| ``require`` | each named boolean column is true | those columns |
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_curator.core.errors import ShardError, UsageError

if TYPE_CHECKING:
    import pyarrow as pa

ERROR_COLUMN = "error"
PAIR_COLUMNS = ("width", "height", "caption_words", "caption_chars", "caption_language")
# DataComp's "basic filtering" (Gadre et al. 2023, baselines/apply_filter.py): English by
# fastText language ID, more than 2 words and more than 5 characters, smaller side >= 200 px,
# aspect ratio <= 3
PRESETS: dict[str, dict[str, Any]] = {
    "datacomp-basic": {
        "caption_languages": ("en",),
        "min_caption_words": 3,
        "min_caption_chars": 6,
        "min_image_side": 200,
        "max_aspect_ratio": 3.0,
    },
}


@dataclass(frozen=True)
class Thresholds:
    """Curation thresholds; a record passes when every given one holds and it has no error."""

    min_aesthetic: float | None = None
    max_nsfw: float | None = None
    min_clip_score: float | None = None
    require: tuple[str, ...] = ()  # boolean columns that must be true (e.g. dedup's is_unique)
    min_image_side: int | None = None
    max_aspect_ratio: float | None = None
    min_caption_words: int | None = None
    min_caption_chars: int | None = None
    caption_languages: tuple[str, ...] = ()
    min_language_score: float | None = None
    clip_score_top_fraction: float | None = None
    # the run's threshold for the top fraction, from the clip-threshold step (``resolve_top``);
    # None with a fraction set: no record had a score, so none passes
    clip_score_top_threshold: float | None = None

    def __post_init__(self) -> None:
        for name in ("min_image_side", "min_caption_words", "min_caption_chars"):
            value = getattr(self, name)
            if value is not None and (int(value) != value or value < 0):
                raise UsageError(f"{name} must be a whole number >= 0, not {value}")
        if self.max_aspect_ratio is not None and self.max_aspect_ratio < 1:
            raise UsageError(f"max_aspect_ratio must be >= 1, not {self.max_aspect_ratio}")
        f = self.clip_score_top_fraction
        if f is not None and not 0 < f <= 1:
            raise UsageError(f"clip_score_top_fraction must be in (0, 1], not {f}")
        s = self.min_language_score
        if s is not None and not 0 <= s <= 1:
            raise UsageError(f"min_language_score must be in [0, 1], not {s}")

    @classmethod
    def build(cls, preset: str | None = None, **values: Any) -> Thresholds:
        """Thresholds from a preset's values, overridden by every value given (not None,
        not an empty tuple)."""
        start: dict[str, Any] = {}
        if preset:
            if preset not in PRESETS:
                raise UsageError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
            start = dict(PRESETS[preset])
        for name, value in values.items():
            if value is None or value == () or value == []:
                continue
            start[name] = tuple(value) if isinstance(value, (list, tuple)) else value
        return cls(**start)

    def rules(self) -> list[tuple[str, str, float]]:
        """The plain column comparisons: (column, pyarrow.compute function, value)."""
        rules = [
            ("aesthetic_score", "greater_equal", self.min_aesthetic),
            ("nsfw_score", "less_equal", self.max_nsfw),
            ("clip_score", "greater_equal", self.min_clip_score),
            ("caption_words", "greater_equal", self.min_caption_words),
            ("caption_chars", "greater_equal", self.min_caption_chars),
            ("caption_language_score", "greater_equal", self.min_language_score),
        ]
        return [(c, op, v) for c, op, v in rules if v is not None]

    def any(self) -> bool:
        return bool(self.names())

    def names(self) -> list[str]:
        """The given filters, in the funnel's order (cheap and common ones first)."""
        given = {
            "min_image_side": self.min_image_side is not None,
            "max_aspect_ratio": self.max_aspect_ratio is not None,
            "min_caption_words": self.min_caption_words is not None,
            "min_caption_chars": self.min_caption_chars is not None,
            "caption_languages": bool(self.caption_languages),
            "min_language_score": self.min_language_score is not None,
            "min_aesthetic": self.min_aesthetic is not None,
            "max_nsfw": self.max_nsfw is not None,
            "min_clip_score": self.min_clip_score is not None,
            "clip_score_top_fraction": self.clip_score_top_fraction is not None,
        }
        return [n for n, on in given.items() if on] + [f"require:{c}" for c in self.require]

    def as_dict(self) -> dict[str, Any]:
        """What the filter column was made with (the Parquet's marker, the report's source);
        the filters added after the first four only when given, so earlier markers stay."""
        out: dict[str, Any] = {
            "min_aesthetic": self.min_aesthetic,
            "max_nsfw": self.max_nsfw,
            "min_clip_score": self.min_clip_score,
            "require": list(self.require),
        }
        for f in dataclasses.fields(self)[4:]:
            value = getattr(self, f.name)
            if value is not None and value != ():
                out[f.name] = list(value) if isinstance(value, tuple) else value
        if self.clip_score_top_fraction is not None:
            out["clip_score_top_threshold"] = self.clip_score_top_threshold
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Thresholds:
        """The inverse of ``as_dict`` (a marker read back by the report)."""
        names = {f.name for f in dataclasses.fields(cls)}
        given: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in names
        }
        return cls(**given)

    def resolve_top(self, threshold_url: str | None) -> Thresholds:
        """With a top fraction: the same thresholds with the run's threshold read from the
        clip-threshold step's file, which must have been computed for this fraction."""
        if self.clip_score_top_fraction is None:
            return self
        from airflow_curator.core.io import storage

        if threshold_url is None or not storage.exists(threshold_url):
            raise UsageError(
                f"clip_score_top_fraction needs the clip-threshold step's file "
                f"({threshold_url or 'none given'}): run clip-threshold first"
            )
        found = json.loads(storage.read_bytes(threshold_url))
        if found.get("fraction") != self.clip_score_top_fraction:
            raise UsageError(
                f"{threshold_url} is the threshold of the top fraction {found.get('fraction')}, "
                f"not {self.clip_score_top_fraction}: run clip-threshold again"
            )
        return dataclasses.replace(self, clip_score_top_threshold=found["threshold"])

    def conditions(self, table: pa.Table, shard: str) -> list[tuple[str, pa.Array]]:
        """``(filter, boolean array)`` per given filter, nulls already false, in ``names()``'s
        order, with ``("error", ...)`` first when the table has an error column."""
        import pyarrow as pa
        import pyarrow.compute as pc

        def column(name: str, why: str) -> pa.ChunkedArray:
            if name not in table.column_names:
                hint = (
                    " (annotations made before these columns existed: annotate again with --force)"
                    if name in PAIR_COLUMNS or name == "caption_language_score"
                    else ""
                )
                raise ShardError(shard, f"no {name!r} column to {why}{hint}")
            return table.column(name)

        def number(name: str) -> pa.ChunkedArray:
            return pc.cast(column(name, "apply a threshold to"), pa.float64())

        found: dict[str, Any] = {}
        by_column = {
            "aesthetic_score": "min_aesthetic",
            "nsfw_score": "max_nsfw",
            "clip_score": "min_clip_score",
            "caption_words": "min_caption_words",
            "caption_chars": "min_caption_chars",
            "caption_language_score": "min_language_score",
        }
        for name, op, value in self.rules():
            found[by_column[name]] = getattr(pc, op)(number(name), pa.scalar(value, pa.float64()))
        if self.min_image_side is not None or self.max_aspect_ratio is not None:
            w, h = number("width"), number("height")
            short = pc.min_element_wise(w, h, skip_nulls=False)
            long = pc.max_element_wise(w, h, skip_nulls=False)
            if self.min_image_side is not None:
                found["min_image_side"] = pc.greater_equal(short, float(self.min_image_side))
            if self.max_aspect_ratio is not None:
                ratio = pc.divide(long, short)  # a side of 0: inf (or NaN), never passes
                found["max_aspect_ratio"] = pc.and_(
                    pc.greater(short, 0.0), pc.less_equal(ratio, float(self.max_aspect_ratio))
                )
        if self.caption_languages:
            langs = column("caption_language", "filter on")
            found["caption_languages"] = pc.is_in(
                langs, value_set=pa.array(list(self.caption_languages), pa.string())
            )
        if self.clip_score_top_fraction is not None:
            top = self.clip_score_top_threshold
            scores = number("clip_score")
            found["clip_score_top_fraction"] = (
                pa.chunked_array([pa.array([False] * table.num_rows)])
                if top is None
                else pc.greater_equal(scores, pa.scalar(float(top), pa.float64()))
            )
        for name in self.require:
            values = column(name, "require")
            if not pa.types.is_boolean(values.type):
                raise ShardError(shard, f"required column {name!r} is {values.type}, not bool")
            found[f"require:{name}"] = values
        out: list[tuple[str, pa.Array]] = []
        if ERROR_COLUMN in table.column_names:
            out.append((ERROR_COLUMN, _flat(pc.is_null(table.column(ERROR_COLUMN)))))
        out += [(n, _flat(pc.fill_null(found[n], False))) for n in self.names()]
        return out

    def mask(self, table: pa.Table, shard: str) -> pa.Array:
        """Boolean array: null values a filter needs and records with an error never pass."""
        import pyarrow as pa
        import pyarrow.compute as pc

        mask = pa.array([True] * table.num_rows, pa.bool_())
        for _, cond in self.conditions(table, shard):
            mask = pc.and_(mask, cond)
        return _flat(mask)


def _flat(values: Any) -> pa.Array:
    import pyarrow as pa

    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


Funnel = dict[str, dict[str, int]]  # filter -> {"alone": removed by it alone, "in_sequence": ...}


def funnel(conditions: list[tuple[str, pa.Array]]) -> Funnel:
    """Records each filter removes alone, and in sequence (those the earlier ones kept)."""
    import numpy as np

    alive: Any = None
    out: Funnel = {}
    for name, cond in conditions:
        passes = np.asarray(cond.to_numpy(zero_copy_only=False), dtype=bool)
        alive = np.ones(len(passes), dtype=bool) if alive is None else alive
        out[name] = {
            "alone": int((~passes).sum()),
            "in_sequence": int((~passes & alive).sum()),
        }
        alive = alive & passes
    return out


def add_funnels(total: Funnel, more: Funnel) -> Funnel:
    """``total`` with ``more``'s counts added (filters in first-seen order)."""
    for name, counts in more.items():
        into = total.setdefault(name, {"alone": 0, "in_sequence": 0})
        for k, v in counts.items():
            into[k] += v
    return total
