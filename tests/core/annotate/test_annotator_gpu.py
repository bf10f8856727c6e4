"""The GPU path: DALI's ``mixed`` decoder, bf16 autocast; same rows as the CPU path."""

from __future__ import annotations

import pytest

from airflow_curator.core.annotate.annotator import (
    Annotator,
    annotate_dataset,
    annotations_url,
)
from airflow_curator.testing.awkward import write_awkward_shard
from airflow_curator.testing.models import tiny_options

pytestmark = pytest.mark.gpu


def run(tmp_path, tiny, device):
    options = tiny_options(tiny, device=device, batch_size=4)
    annotator = Annotator(options)
    out = tmp_path / device
    result = annotate_dataset(str(tmp_path / "dataset"), str(out), None, options, annotator)
    import pyarrow.parquet as pq

    return annotator, result, pq.read_table(f"{annotations_url(str(out))}/00000.parquet")


def test_mixed_decoder_and_autocast_match_the_cpu(tmp_path):
    import torch

    from airflow_curator.testing.models import write_tiny_models

    tiny = write_tiny_models(str(tmp_path / "tiny"))
    kinds = write_awkward_shard(tmp_path / "dataset", 0, seed=7)
    gpu, gpu_result, gpu_table = run(tmp_path, tiny, "cuda")
    _, cpu_result, cpu_table = run(tmp_path, tiny, "cpu")
    assert gpu.decoder.gpu and gpu.clip.device.type == "cuda"
    assert isinstance(gpu.clip.autocast(), torch.autocast)
    assert gpu_result["failed"] == cpu_result["failed"] == sum(k != "ok" for k in kinds.values())
    assert gpu_table.column("error").to_pylist() == cpu_table.column("error").to_pylist()
    ok = [i for i, e in enumerate(cpu_table.column("error").to_pylist()) if e is None]
    g = torch.tensor([gpu_table.column("image_embedding")[i].as_py() for i in ok])
    c = torch.tensor([cpu_table.column("image_embedding")[i].as_py() for i in ok])
    assert (torch.nn.functional.cosine_similarity(g, c, dim=1) > 0.97).all()
    assert str(gpu_table.schema.field("clip_score").type) == "float"
