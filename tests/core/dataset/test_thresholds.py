"""The curation filters: each against counts computed here, the null rule, presets, funnel."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from airflow_curator.core.dataset.thresholds import PRESETS, Thresholds, funnel
from airflow_curator.core.errors import ShardError, UsageError

LANGS = ("en", "de", "fr", None)


def planted(n: int = 400, seed: int = 0) -> tuple[pa.Table, list[dict]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        failed = rng.random() < 0.08
        w, h = rng.choice([None, 0, 50, 199, 200, 201, 640]), rng.choice([None, 66, 200, 600, 601])
        if failed:
            w = h = None
        lang = rng.choice(LANGS)
        rows.append(
            {
                "key": f"{i:09d}",
                "width": w,
                "height": h,
                "caption_words": rng.choice([0, 1, 2, 3, 7]),
                "caption_chars": rng.choice([0, 5, 6, 40]),
                "caption_language": lang,
                "caption_language_score": None if lang is None else rng.random(),
                "clip_score": None if failed else rng.uniform(0, 0.5),
                "aesthetic_score": None if failed else rng.uniform(2, 8),
                "is_unique": rng.random() < 0.9,
                "error": "decode failed" if failed else None,
            }
        )
    schema = pa.schema(
        [
            ("key", pa.string()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("caption_words", pa.int32()),
            ("caption_chars", pa.int32()),
            ("caption_language", pa.string()),
            ("caption_language_score", pa.float32()),
            ("clip_score", pa.float32()),
            ("aesthetic_score", pa.float32()),
            ("is_unique", pa.bool_()),
            ("error", pa.string()),
        ]
    )
    table = pa.Table.from_pylist(rows, schema)
    return table, table.to_pylist()  # the float32 values as stored


def side(r):
    return None if r["width"] is None or r["height"] is None else min(r["width"], r["height"])


# filter -> (Thresholds keywords, what passes, computed here)
CASES = {
    "min_image_side": ({"min_image_side": 200}, lambda r: side(r) is not None and side(r) >= 200),
    "max_aspect_ratio": (
        {"max_aspect_ratio": 3.0},
        lambda r: bool(side(r)) and max(r["width"], r["height"]) <= 3.0 * side(r),
    ),
    "min_caption_words": ({"min_caption_words": 3}, lambda r: r["caption_words"] >= 3),
    "min_caption_chars": ({"min_caption_chars": 6}, lambda r: r["caption_chars"] >= 6),
    "caption_languages": (
        {"caption_languages": ("en", "de")},
        lambda r: r["caption_language"] in ("en", "de"),
    ),
    "min_language_score": (
        {"min_language_score": 0.5},
        lambda r: r["caption_language_score"] is not None and r["caption_language_score"] >= 0.5,
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_filter_alone(name):
    table, rows = planted()
    kwargs, passes = CASES[name]
    t = Thresholds(**kwargs)
    expected = [r["error"] is None and passes(r) for r in rows]
    assert t.mask(table, "00000").to_pylist() == expected
    assert 0 < sum(expected) < len(rows)  # the planted data exercises both sides


def test_all_filters_combine_with_scores_and_require():
    table, rows = planted(seed=3)
    kwargs = {k: v for kw, _ in CASES.values() for k, v in kw.items()}
    t = Thresholds(min_aesthetic=4.0, require=("is_unique",), **kwargs)
    expected = [
        r["error"] is None
        and all(p(r) for _, p in CASES.values())
        and r["aesthetic_score"] >= 4.0
        and r["is_unique"]
        for r in rows
    ]
    assert t.mask(table, "00000").to_pylist() == expected


def test_top_fraction_uses_the_resolved_threshold_and_fails_without_scores():
    table, rows = planted()
    t = Thresholds(clip_score_top_fraction=0.3, clip_score_top_threshold=0.25)
    scores = [r["clip_score"] for r in rows]
    expected = [r["error"] is None and s is not None and s >= 0.25 for r, s in zip(rows, scores)]
    assert t.mask(table, "0").to_pylist() == expected
    none = Thresholds(clip_score_top_fraction=0.3)  # no record had a score
    assert not any(none.mask(table, "0").to_pylist())


def test_preset_and_overrides():
    t = Thresholds.build("datacomp-basic")
    assert (t.caption_languages, t.min_caption_words, t.min_caption_chars) == (("en",), 3, 6)
    assert (t.min_image_side, t.max_aspect_ratio) == (200, 3.0)
    o = Thresholds.build(
        "datacomp-basic", min_image_side=64, caption_languages=["en", "de"], min_aesthetic=5
    )
    assert (o.min_image_side, o.caption_languages, o.min_aesthetic) == (64, ("en", "de"), 5)
    assert (o.max_aspect_ratio, o.min_caption_words) == (3.0, 3)  # not given: the preset's
    # unset values (None, empty) do not override
    same = Thresholds.build("datacomp-basic", min_image_side=None, caption_languages=())
    assert same == t
    with pytest.raises(UsageError, match="unknown preset"):
        Thresholds.build("laion")
    assert set(PRESETS) == {"datacomp-basic"}


def test_preset_matches_datacomp_basic_rules():
    """DataComp's rules written out here: English, > 2 words, > 5 chars, min side >= 200,
    aspect ratio <= 3."""
    table, rows = planted(seed=7)
    expected = [
        r["error"] is None
        and r["caption_language"] == "en"
        and r["caption_words"] > 2
        and r["caption_chars"] > 5
        and side(r) is not None
        and side(r) >= 200
        and max(r["width"], r["height"]) / side(r) <= 3
        for r in rows
    ]
    assert Thresholds.build("datacomp-basic").mask(table, "0").to_pylist() == expected


def test_funnel_alone_and_in_sequence():
    table, rows = planted(seed=5)
    t = Thresholds.build("datacomp-basic", min_aesthetic=4.0)
    counts = funnel(t.conditions(table, "0"))
    assert list(counts) == ["error", *t.names()]
    alive = list(rows)
    checks = {
        "error": lambda r: r["error"] is None,
        "min_aesthetic": lambda r: r["aesthetic_score"] is not None and r["aesthetic_score"] >= 4,
        **{k: v[1] for k, v in CASES.items()},
        "caption_languages": lambda r: r["caption_language"] == "en",
    }
    for name in counts:
        ok = checks[name]
        assert counts[name]["alone"] == sum(not ok(r) for r in rows), name
        assert counts[name]["in_sequence"] == sum(not ok(r) for r in alive), name
        alive = [r for r in alive if ok(r)]
    assert len(alive) == sum(t.mask(table, "0").to_pylist())


def test_missing_column_and_bad_values():
    table = pa.table({"key": ["a"], "clip_score": pa.array([0.2], pa.float32())})
    with pytest.raises(ShardError, match=r"no 'width' column.*annotate again"):
        Thresholds(min_image_side=10).mask(table, "00003")
    for bad in (
        {"min_image_side": -1},
        {"min_caption_words": 2.5},
        {"max_aspect_ratio": 0.5},
        {"clip_score_top_fraction": 0},
        {"clip_score_top_fraction": 1.5},
        {"min_language_score": 2},
    ):
        with pytest.raises(UsageError):
            Thresholds(**bad)


def test_marker_round_trip():
    t = Thresholds.build("datacomp-basic", clip_score_top_fraction=0.3, require=("is_unique",))
    d = t.as_dict()
    assert d["caption_languages"] == ["en"] and d["clip_score_top_threshold"] is None
    assert Thresholds.from_dict(d) == t
    # the first four keys only, as markers written before these filters existed
    assert Thresholds(min_aesthetic=5).as_dict() == {
        "min_aesthetic": 5,
        "max_nsfw": None,
        "min_clip_score": None,
        "require": [],
    }
