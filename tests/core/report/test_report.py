from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_curator.core.dataset.discovery import discover, save_manifest
from airflow_curator.core.report.data import gather
from airflow_curator.core.report.page import write_report
from airflow_curator.testing.dataset import write_demo_dataset


@pytest.fixture
def run(tmp_path):
    """A generated run: dataset, manifest, merged metadata with scores and a filter column."""
    dataset, output = str(tmp_path / "in"), str(tmp_path / "out")
    write_demo_dataset(dataset, shards=3, records_per_shard=10, seed=3)
    save_manifest(discover(dataset), f"{output}/_work/manifest.json")
    rng = random.Random(0)
    truth = {"records": 0, "failures": 0, "kept": 0, "aesthetic": []}
    for s in range(3):
        table = pq.read_table(f"{dataset}/{s:05d}.parquet")
        n = table.num_rows
        failed = [i == 4 for i in range(n)]
        aes = [None if f else rng.uniform(2, 8) for f in failed]
        kept = [a is not None and a >= 5.0 for a in aes]
        table = (
            table.append_column("aesthetic_score", pa.array(aes, pa.float32()))
            .append_column(
                "nsfw_score", pa.array([None if f else rng.random() for f in failed], pa.float32())
            )
            .append_column(
                "clip_score",
                pa.array([None if f else rng.uniform(0, 0.4) for f in failed], pa.float32()),
            )
            .append_column(
                "error", pa.array(["decode error: bad JPEG" if f else None for f in failed])
            )
            .append_column("passes_curation", pa.array(kept))
        )
        # the dedup stage's columns: record 2 of shard 1 copies record 1 of shard 0
        dup_of = [("000000001" if (s, i) == (1, 2) else None) for i in range(n)]
        table = table.append_column("is_unique", pa.array([d is None for d in dup_of]))
        table = table.append_column("duplicate_of", pa.array(dup_of, pa.string()))
        os.makedirs(f"{output}/_work/metadata", exist_ok=True)
        pq.write_table(table, f"{output}/_work/metadata/{s:05d}.parquet")
        truth["records"] += n
        truth["failures"] += sum(failed)
        truth["kept"] += sum(kept)
        stored = pa.array(aes, pa.float32()).to_pylist()  # what the report reads back
        truth["aesthetic"] += [a for a in stored if a is not None]
    with open(f"{output}/_work/run.json", "w") as f:
        json.dump(
            {
                "params": {"min_aesthetic": 5.0, "dataset": dataset},
                "steps": {"annotate": [{"records": 30, "failures": 3, "seconds": 2.0}]},
            },
            f,
        )
    return dataset, output, truth


def test_figures_match_the_data(run):
    _, output, truth = run
    data = gather(output, per_grid=4, extremes=3)
    assert data.totals == {
        "records": truth["records"],
        "annotated": truth["records"],
        "failures": truth["failures"],
        "kept": truth["kept"],
        "duplicates": 1,
    }
    hist = data.histograms["aesthetic_score"]
    assert hist.total == len(truth["aesthetic"]) == 27
    width = 10 / len(hist.counts)
    expected = [0] * len(hist.counts)
    for a in truth["aesthetic"]:
        expected[int(a / width)] += 1
    assert hist.counts == expected
    assert data.thresholds == {"aesthetic_score": ("min", 5.0)}
    ((dup, original),) = data.pairs
    assert (dup.id, dup.shard, original.id, original.shard) == (
        "000010002",
        "00001",
        "000000001",
        "00000",
    )
    assert dup.thumbnail and original.thumbnail
    assert all(s.kept for s in data.kept) and not any(s.kept for s in data.dropped)
    assert len(data.kept) == 4 and len(data.dropped) == 4
    lows = [s.scores["aesthetic_score"] for s in data.lowest]
    assert lows == sorted(truth["aesthetic"])[:3]
    assert [s.scores["aesthetic_score"] for s in data.highest] == sorted(
        truth["aesthetic"], reverse=True
    )[:3]
    assert all(s.thumbnail and s.thumbnail.startswith("data:image/jpeg;base64,") for s in data.kept)


def test_page_is_self_contained(run):
    _, output, truth = run
    result = write_report(output, per_grid=4)
    page = Path(f"{output}/report.html").read_text(encoding="utf-8")
    assert result["report"] == f"{output}/report.html" and result["kept"] == truth["kept"]
    assert "<script" not in page and "<link" not in page
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)
    assert page.count('src="data:image/jpeg;base64,') >= 8
    assert f"<b>{truth['kept']}</b>kept" in page
    assert 'class="threshold"' in page and "min 5" in page
    # three score histograms, and the demo metadata's width/height give two size histograms
    assert page.count('class="bar"') == (3 + 2) * 40


def test_steps_count_shards_a_cleared_task_found_done(run):
    """After a clear, a mapped task's latest successful try skips the shard its earlier try
    annotated: the steps table still counts that shard's records (from the shard table), so it
    agrees with the header; the rate counts only the work done."""
    _, output, truth = run
    record = json.loads(Path(f"{output}/_work/run.json").read_text())
    record["steps"]["annotate"] = [
        {"records": 10, "seconds": 2.0, "skipped": 0},
        {"records": 0, "seconds": 0.5, "skipped": 1, "done_before": ["00001"]},
        {"records": 10, "seconds": 2.0, "skipped": 0},
    ]
    Path(f"{output}/_work/run.json").write_text(json.dumps(record))
    write_report(output, per_grid=4)
    page = Path(f"{output}/report.html").read_text(encoding="utf-8")
    assert f"<b>{truth['records']}</b>annotated" in page
    row = re.search(r"<tr><td>annotate</td>(.*?)</tr>", page).group(1)
    assert row == f"<td>3</td><td>{truth['records']}</td><td>0</td><td>4.5</td><td>4.4</td>"


def test_missing_manifest_is_a_clear_error(tmp_path):
    from airflow_curator.core.errors import CuratorError

    with pytest.raises(CuratorError, match="no dataset manifest"):
        gather(str(tmp_path))


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason="needs Debian's chromium")
def test_renders_with_images_in_headless_chromium(run, tmp_path):
    from PIL import Image

    assert CHROMIUM, "CI installs chromium (scripts/test.sh)"
    _, output, _ = run
    write_report(output, per_grid=8)
    page = f"{output}/report.html"
    stripped = tmp_path / "no-images.html"
    text = Path(page).read_text(encoding="utf-8")
    stripped.write_text(re.sub(r'src="data:image/jpeg;base64,[^"]+"', 'src=""', text))

    def shot(path, png):
        subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--window-size=1200,1400",
                f"--screenshot={png}",
                f"file://{path}",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        with Image.open(png) as img:
            return len(img.convert("RGB").getcolors(maxcolors=1 << 24))

    with_images = shot(page, tmp_path / "report.png")
    without = shot(stripped, tmp_path / "bare.png")
    assert with_images > 2 * without and with_images > 2000


def test_funnel_and_filter_histograms(tmp_path):
    """save-metadata's filters as the report reads them back from the merged Parquet: each
    filter's removals alone and in sequence, counted here from the planted values."""
    from airflow_curator.core import layout
    from airflow_curator.core.dataset.save_metadata import save_metadata
    from airflow_curator.core.dataset.thresholds import Thresholds

    dataset, output = str(tmp_path / "in"), str(tmp_path / "out")
    ids = write_demo_dataset(dataset, shards=2, records_per_shard=12, seed=1)
    save_manifest(discover(dataset), layout.manifest_url(output))
    rng = random.Random(2)
    rows = {}
    folder = layout.annotations_url(output)
    os.makedirs(folder)
    for s in range(2):
        shard_ids = [i for i in ids if i.startswith(f"{s:05d}")]
        cols = {k: [] for k in ("key", "width", "height", "caption_words", "caption_chars")}
        cols.update(caption_language=[], caption_language_score=[], clip_score=[], error=[])
        for rid in shard_ids:
            failed = rng.random() < 0.1
            r = {
                "width": None if failed else rng.choice([100, 300, 900]),
                "height": None if failed else rng.choice([250, 300]),
                "caption_words": rng.choice([1, 2, 5]),
                "caption_chars": rng.choice([4, 30]),
                "caption_language": rng.choice(["en", "de", None]),
                "caption_language_score": rng.random(),
                "clip_score": None if failed else rng.uniform(0, 0.4),
                "error": "decode failed" if failed else None,
            }
            rows[rid] = r
            cols["key"].append(rid)
            for k, v in r.items():
                cols[k].append(v)
        types = {"width": pa.int32(), "height": pa.int32(), "caption_words": pa.int32()}
        types.update(caption_chars=pa.int32(), caption_language_score=pa.float32())
        table = pa.table({k: pa.array(v, types.get(k)) for k, v in cols.items()})
        pq.write_table(table, f"{folder}/{s:05d}.parquet")
    t = Thresholds.build("datacomp-basic", min_caption_words=2)
    result = save_metadata(
        dataset, annotations=folder, path=layout.metadata_url(output), thresholds=t
    )
    data = gather(output)
    assert data.funnel == result["funnel"]
    checks = [
        ("error", lambda r: r["error"] is None),
        ("min_image_side", lambda r: r["width"] and min(r["width"], r["height"]) >= 200),
        (
            "max_aspect_ratio",
            lambda r: (
                r["width"] and max(r["width"], r["height"]) / min(r["width"], r["height"]) <= 3
            ),
        ),
        ("min_caption_words", lambda r: r["caption_words"] >= 2),
        ("min_caption_chars", lambda r: r["caption_chars"] >= 6),
        ("caption_languages", lambda r: r["caption_language"] == "en"),
    ]
    assert list(data.funnel) == [name for name, _ in checks]
    alive = list(rows.values())
    for name, ok in checks:
        assert data.funnel[name]["alone"] == sum(not ok(r) for r in rows.values()), name
        assert data.funnel[name]["in_sequence"] == sum(not ok(r) for r in alive), name
        alive = [r for r in alive if ok(r)]
    assert data.totals["kept"] == len(alive) == result["passed"]
    sized = [r for r in rows.values() if r["width"]]
    assert data.pair_histograms["image_side"].total == len(sized)
    assert data.pair_thresholds["image_side"] == ("min", 200.0)
    assert data.languages == {
        k: sum(r["caption_language"] == (None if k == "none" else k) for r in rows.values())
        for k in data.languages
    }
    page = write_report(output)
    html = Path(page["report"]).read_text(encoding="utf-8")
    assert 'id="funnel"' in html and "min 200" in html and "max 3" in html
    assert f"<td>{len(alive)}</td></tr></table>" in html  # what is left after the last filter


def test_reads_only_the_columns_it_draws(run):
    """Each metadata Parquet gains an embedding column whose pages are then destroyed: a
    report that read it (all of a shard's columns, ~6 KB a record) would fail; it does not."""
    _, output, truth = run
    for s in range(3):
        path = f"{output}/_work/metadata/{s:05d}.parquet"
        table = pq.read_table(path)
        vectors = pa.array([[0.5] * 64] * table.num_rows, pa.list_(pa.float32()))
        pq.write_table(table.append_column("embedding", vectors), path)
        chunk = pq.ParquetFile(path).metadata.row_group(0).column(table.num_columns)
        assert chunk.path_in_schema.startswith("embedding")
        start = chunk.dictionary_page_offset if chunk.has_dictionary_page else None
        start = start if start is not None else chunk.data_page_offset
        with open(path, "r+b") as f:  # the page headers and data of that chunk only
            f.seek(start)
            f.write(b"\xff" * chunk.total_compressed_size)
        with pytest.raises(OSError):
            pq.read_table(path)
    data = gather(output, per_grid=4, extremes=3)
    assert data.totals["records"] == truth["records"] and data.totals["kept"] == truth["kept"]
    assert data.histograms["aesthetic_score"].total == len(truth["aesthetic"])
    assert len(data.pairs) == 1 and data.pairs[0][1] is not None


def test_funnel_reads_the_required_columns_too(tmp_path):
    """A ``--require`` column is any boolean column: the report reads it for the funnel
    beside the columns it draws (its one read names no such column)."""
    from airflow_curator.core import layout
    from airflow_curator.core.dataset.save_metadata import save_metadata
    from airflow_curator.core.dataset.thresholds import Thresholds

    dataset, output = str(tmp_path / "in"), str(tmp_path / "out")
    ids = write_demo_dataset(dataset, shards=1, records_per_shard=9, seed=4)
    save_manifest(discover(dataset), layout.manifest_url(output))
    folder = layout.annotations_url(output)
    os.makedirs(folder)
    keep = [i % 3 != 0 for i in range(len(ids))]
    scores = [0.1 * i for i in range(len(ids))]
    pq.write_table(
        pa.table({"key": ids, "clip_score": scores, "hand_checked": keep}),
        f"{folder}/00000.parquet",
    )
    t = Thresholds.build(min_clip_score=0.15, require=["hand_checked"])
    result = save_metadata(
        dataset, annotations=folder, path=layout.metadata_url(output), thresholds=t
    )
    data = gather(output)
    assert data.funnel == result["funnel"]
    assert data.funnel["require:hand_checked"]["alone"] == keep.count(False)
    assert data.totals["kept"] == sum(k and s >= 0.15 for k, s in zip(keep, scores, strict=True))
