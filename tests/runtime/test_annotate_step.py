"""``airflow-curator annotate``: the pod contract, end to end on the CPU with tiny models."""

from __future__ import annotations

import json

import pytest

from airflow_curator.runtime.argv import build_argv
from airflow_curator.runtime.cli import main
from airflow_curator.testing.awkward import write_awkward_shard

pytest.importorskip("torch")
pytest.importorskip("nvidia.dali")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from airflow_curator.testing.models import write_tiny_models

    return write_tiny_models(str(tmp_path_factory.mktemp("tiny")))


def options(tiny, dataset, out, **extra):
    return {
        "dataset": str(dataset),
        "output": str(out),
        "model": tiny["model"],
        "weights": tiny["weights"],
        "weights-sha256": tiny["sha256"][tiny["weights"]],
        "aesthetic-weights": tiny["aesthetic_weights"],
        "nsfw-weights": tiny["nsfw_weights"],
        "device": "cpu",
        "batch-size": 4,
        **extra,
    }


def test_annotate_two_shards_then_rerun(tmp_path, tiny):
    import pyarrow.parquet as pq

    dataset, out = tmp_path / "dataset", tmp_path / "out"
    write_awkward_shard(dataset, 0, seed=3)
    write_awkward_shard(dataset, 1, seed=4)
    result = tmp_path / "result.json"
    argv = build_argv("annotate", options(tiny, dataset, out, shards="0-1"), str(result))
    assert main(argv) == 0
    r = json.loads(result.read_text())
    assert (r["shards"], r["annotated"], r["records"], r["failed"]) == (2, 2, 20, 6)
    assert [s["shard"] for s in r["per_shard"]] == ["00000", "00001"]
    assert all(s["records_per_s"] > 0 and len(s["errors"]) == 3 for s in r["per_shard"])
    table = pq.read_table(out / "_work" / "annotations" / "00001.parquet")
    assert table.column_names == [
        "key",
        "image_embedding",
        "text_embedding",
        "clip_score",
        "aesthetic_score",
        "nsfw_score",
        "width",
        "height",
        "caption_words",
        "caption_chars",
        "caption_language",
        "caption_language_score",
        "error",
    ]
    assert str(table.schema.field("image_embedding").type) == "fixed_size_list<element: float>[768]"
    assert main(argv) == 0
    assert json.loads(result.read_text())["skipped"] == 2


def test_wrong_checksum_exits_2_with_one_line(tmp_path, tiny, capsys):
    dataset = tmp_path / "dataset"
    write_awkward_shard(dataset, 0)
    argv = build_argv(
        "annotate",
        options(tiny, dataset, tmp_path / "out", **{"weights-sha256": "ab" * 32}),
        str(tmp_path / "r.json"),
    )
    assert main(argv) == 2  # weights that do not match their pin: the request is wrong
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("airflow-curator annotate: error: weights ") and "refusing" in err
    assert not (tmp_path / "r.json").exists()


def test_unknown_model_exits_2(tmp_path, tiny, capsys):
    dataset = tmp_path / "dataset"
    write_awkward_shard(dataset, 0)
    argv = build_argv("annotate", options(tiny, dataset, tmp_path / "out", model="NoSuchNet"))
    assert main(argv) == 2
    assert "NoSuchNet" in capsys.readouterr().err


def test_pinned_weights_log_no_false_warnings(tmp_path, tiny, caplog):
    """With every file pinned, no "not pinned" warning; and open_clip's "Model initialized
    randomly" (said before our weights are loaded into it) is not shown."""
    import logging

    dataset = tmp_path / "dataset"
    write_awkward_shard(dataset, 0)
    pins = {
        "aesthetic-sha256": tiny["sha256"][tiny["aesthetic_weights"]],
        "nsfw-sha256": tiny["sha256"][tiny["nsfw_weights"]],
    }
    argv = build_argv("annotate", options(tiny, dataset, tmp_path / "out", **pins), None)
    with caplog.at_level(logging.INFO):
        assert main([*argv, "--result-json", str(tmp_path / "r.json")]) == 0
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [m for m in messages if "not pinned" in m or "initialized randomly" in m], messages
    assert any("Instantiating model" in r.getMessage() for r in caplog.records)  # open_clip ran


def test_thread_counts_are_options_and_come_back_in_the_result(tmp_path, tiny, capsys):
    dataset = tmp_path / "dataset"
    write_awkward_shard(dataset, 0)
    result = tmp_path / "r.json"
    extra = {"torch-threads": 1, "decode-threads": 3}
    assert (
        main(build_argv("annotate", options(tiny, dataset, tmp_path / "o", **extra), str(result)))
        == 0
    )
    assert json.loads(result.read_text())["threads"] == {"torch": 1, "decode": 3}
    bad = options(tiny, dataset, tmp_path / "o2", **{"decode-threads": 0})
    assert main(build_argv("annotate", bad)) == 2
    assert "--decode-threads must be >= 1" in capsys.readouterr().err
