"""The filters through the command line: clip-threshold, then save-metadata with a preset,
overrides and the top fraction; the annotate step's pair statistics on planted records."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_curator.core import layout
from airflow_curator.runtime.argv import build_argv
from airflow_curator.runtime.cli import main
from airflow_curator.testing.filters import write_filter_dataset


def step(name: str, tmp_path, **options) -> dict:
    result = tmp_path / f"{name}.json"
    code = main(build_argv(name, options, result_json=str(result)))
    assert code == 0, name
    return json.loads(result.read_text())


def kept_by_hand(rows, top_threshold, words=3):
    """DataComp's basic rules with --min-caption-words overridden, and the top fraction."""
    keep = {}
    for rid, r in rows.items():
        side = None if r["width"] is None else min(r["width"], r["height"])
        keep[rid] = (
            r["error"] is None
            and r["caption_language"] == "en"
            and r["caption_words"] >= words
            and r["caption_chars"] > 5
            and side is not None
            and side >= 200
            and max(r["width"], r["height"]) <= 3 * side
            and r["clip_score"] is not None
            and r["clip_score"] >= top_threshold
        )
    return keep


def test_clip_threshold_then_save_metadata_with_preset_and_overrides(tmp_path):
    dataset, output = str(tmp_path / "in"), str(tmp_path / "out")
    planted = write_filter_dataset(dataset, shards=3, records_per_shard=14)
    step("discover", tmp_path, dataset=dataset, manifest=layout.manifest_url(output))
    rng = random.Random(0)
    folder = layout.annotations_url(output)
    os.makedirs(folder)
    rows = {}
    for stem in ("00000", "00001", "00002"):
        recs = [p for p in planted if p.id.startswith(stem)]
        table = {k: [] for k in ("key", "width", "height", "caption_words", "caption_chars")}
        table.update(caption_language=[], clip_score=[], error=[])
        for p in recs:
            failed = rng.random() < 0.1
            r = {
                "width": None if failed else p.width,
                "height": None if failed else p.height,
                "caption_words": len(p.caption.split()),
                "caption_chars": len(p.caption),
                "caption_language": p.language,
                "clip_score": None
                if failed
                else float(np.float32(round(rng.uniform(0.1, 0.4), 2))),
                "error": "image cannot be decoded" if failed else None,
            }
            rows[p.id] = r
            table["key"].append(p.id)
            for k, v in r.items():
                table[k].append(v)
        types = {c: pa.int32() for c in ("width", "height", "caption_words", "caption_chars")}
        types.update(clip_score=pa.float32(), caption_language=pa.string(), error=pa.string())
        pq.write_table(
            pa.table({k: pa.array(v, types.get(k)) for k, v in table.items()}),
            os.path.join(folder, f"{stem}.parquet"),
        )
    top = step("clip-threshold", tmp_path, output=output, clip_score_top_fraction=0.5)
    scores = np.array([r["clip_score"] for r in rows.values() if r["clip_score"] is not None])
    expected_t = float(np.sort(scores.astype(np.float32).astype(np.float64))[::-1][top["rank"] - 1])
    assert top["rank"] == -(-len(scores) // 2) and top["threshold"] == expected_t
    out = step(
        "save-metadata", tmp_path, dataset=dataset, annotations=[folder],
        path=layout.metadata_url(output), preset="datacomp-basic", min_caption_words=2,
        clip_score_top_fraction=0.5, clip_threshold=layout.clip_threshold_url(output),
    )  # fmt: skip
    expected = kept_by_hand(rows, expected_t, words=2)
    merged = pa.concat_tables(
        pq.read_table(os.path.join(layout.metadata_url(output), f"{s}.parquet"))
        for s in ("00000", "00001", "00002")
    )
    flags = dict(zip(merged["key"].to_pylist(), merged["passes_curation"].to_pylist()))
    assert flags == expected and out["passed"] == sum(expected.values()) > 0
    assert out["thresholds"]["min_caption_words"] == 2  # the override
    assert out["thresholds"]["min_image_side"] == 200  # the preset's
    assert out["funnel"]["clip_score_top_fraction"]["alone"] == sum(
        r["clip_score"] is None or r["clip_score"] < expected_t for r in rows.values()
    )
    # a threshold computed for another fraction is refused
    code = main(
        build_argv(
            "save-metadata",
            {
                "dataset": dataset,
                "annotations": [folder],
                "path": str(tmp_path / "m2"),
                "clip_score_top_fraction": 0.3,
                "clip_threshold": layout.clip_threshold_url(output),
            },
        )
    )
    assert code == 2


@pytest.mark.integration
@pytest.mark.slow
def test_annotate_then_datacomp_basic_end_to_end(tmp_path):
    """annotate (tiny CLIP model) records each image's decoded size and each caption's
    statistics and language; clip-threshold and save-metadata then keep what the planted
    truth says DataComp's basic filtering and the top half by CLIP score keep."""
    pytest.importorskip("torch")
    pytest.importorskip("nvidia.dali")
    from airflow_curator.testing.models import write_tiny_models

    tiny = write_tiny_models(str(tmp_path / "tiny"))
    dataset, output = str(tmp_path / "in"), str(tmp_path / "out")
    planted = {p.id: p for p in write_filter_dataset(dataset, shards=2, records_per_shard=15)}
    step("discover", tmp_path, dataset=dataset, manifest=layout.manifest_url(output))
    annotated = step(
        "annotate", tmp_path, dataset=dataset, output=output, model=tiny["model"],
        weights=tiny["weights"], aesthetic_weights=tiny["aesthetic_weights"],
        nsfw_weights=tiny["nsfw_weights"], device="cpu", batch_size=4,
    )  # fmt: skip
    assert annotated["failed"] == 0
    ann = pa.concat_tables(
        pq.read_table(os.path.join(layout.annotations_url(output), f"{s}.parquet"))
        for s in ("00000", "00001")
    ).to_pylist()
    assert {r["key"] for r in ann} == set(planted)
    for r in ann:
        p = planted[r["key"]]
        assert (r["width"], r["height"]) == (p.width, p.height), p
        assert (r["caption_words"], r["caption_chars"]) == (len(p.caption.split()), len(p.caption))
        if p.language is not None:
            assert r["caption_language"] == p.language, p
            assert 0 < r["caption_language_score"] <= 1
        if not p.caption.strip():
            assert r["caption_language"] is None and r["caption_language_score"] is None
    step("clip-threshold", tmp_path, output=output, clip_score_top_fraction=0.5)
    out = step(
        "save-metadata", tmp_path, dataset=dataset, annotations=[layout.annotations_url(output)],
        path=layout.metadata_url(output), preset="datacomp-basic", clip_score_top_fraction=0.5,
        clip_threshold=layout.clip_threshold_url(output),
    )  # fmt: skip
    with open(layout.clip_threshold_url(output)) as f:
        threshold = json.load(f)["threshold"]
    rows = {r["key"]: r for r in ann}  # the annotations' values, checked against the truth above
    expected = kept_by_hand(rows, threshold, words=3)
    merged = pa.concat_tables(
        pq.read_table(os.path.join(layout.metadata_url(output), f"{s}.parquet"))
        for s in ("00000", "00001")
    )
    flags = dict(zip(merged["key"].to_pylist(), merged["passes_curation"].to_pylist()))
    assert flags == expected and out["passed"] == sum(expected.values())
    # the planted truth alone (sizes, captions, languages) says which records the basic filter
    # keeps; the top half by score then keeps a subset of those
    basic = {
        rid
        for rid, p in planted.items()
        if p.language == "en"
        and len(p.caption.split()) > 2
        and len(p.caption) > 5
        and min(p.width, p.height) >= 200
        and max(p.width, p.height) <= 3 * min(p.width, p.height)
    }
    assert {rid for rid, keep in flags.items() if keep} <= basic
    assert out["funnel"]["min_image_side"]["alone"] == sum(
        min(p.width, p.height) < 200 for p in planted.values()
    )
