"""The README's Python example runs as written, with local paths and the tiny models swapped in."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from airflow_curator.testing.pairs import check_curated, write_pairs_dataset

pytest.importorskip("torch")
pytest.importorskip("nvidia.dali")
pytest.importorskip("timm")
pytest.importorskip("dask.dataframe")

README = Path(__file__).resolve().parents[1] / "README.md"


def python_example() -> str:
    text = README.read_text()
    section = text[text.index("## Python API") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_example_runs(tmp_path):
    from airflow_curator.testing.models import write_tiny_timm

    tiny = write_tiny_timm(str(tmp_path / "tiny"))
    data = write_pairs_dataset(tmp_path / "dataset")
    swaps = {
        '"gs://bucket/dataset"': repr(data.path),
        "gs://bucket/job": str(tmp_path / "job"),
        "gs://bucket/curated": str(tmp_path / "curated"),
        '"vit_large_patch14_clip_quickgelu_224.openai",\n    pretrained=True,': (
            f'"{tiny["model"]}",\n    pretrained=True,\n    weights={tiny["weights"]!r},'
        ),
        "AestheticClassifier()": f"AestheticClassifier(model_path={tiny['aesthetic_weights']!r})",
        "NsfwClassifier()": f"NsfwClassifier(model_path={tiny['nsfw_weights']!r})",
        "n_clusters=1000": "n_clusters=2",
        # random heads score about 0.18 and 0.49: thresholds every scored record passes
        '["aesthetic_score"] > 5.0': '["aesthetic_score"] > -1.0',
        '["nsfw_score"] < 0.5': '["nsfw_score"] < 2.0',
    }
    code = python_example()
    for old, new in swaps.items():
        assert old in code, f"the README example no longer has {old!r}"
        code = code.replace(old, new)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    removed = set(namespace["duplicates"].df["key"].compute())
    assert len(removed) == len(data.duplicates)
    kept = [k for k in data.ids if k not in removed and k != data.corrupt]
    check_curated(str(tmp_path / "curated"), data, kept, "old_key")
