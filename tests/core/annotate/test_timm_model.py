"""timm image models in the annotator (``--model timm:NAME``): names, weights, preprocessing."""

from __future__ import annotations

import io

import pytest

from airflow_curator.core.annotate.annotator import Annotator, Options, annotate_dataset
from airflow_curator.core.annotate.clip import model_spec
from airflow_curator.core.annotate.timm_model import default_weights
from airflow_curator.core.annotate.weights import WeightsError
from airflow_curator.core.wds.records import iter_records
from airflow_curator.testing.awkward import write_awkward_shard

torch = pytest.importorskip("torch")
pytest.importorskip("timm")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from airflow_curator.testing.models import write_tiny_timm

    return write_tiny_timm(str(tmp_path_factory.mktemp("timm")))


def test_names_and_default_weights():
    spec = model_spec("timm:vit_large_patch14_clip_quickgelu_224.openai")
    assert (spec.family, spec.key) == ("timm", "timm:vit_large_patch14_clip_quickgelu_224.openai")
    # NeMo's default model: OpenAI's ViT-L/14 tower, from timm's hub (no published digest)
    assert default_weights(spec.name) == (
        "hf-hub:timm/vit_large_patch14_clip_224.openai/model.safetensors"
    )
    with pytest.raises(ValueError, match="timm has no model 'no_such_net'"):
        model_spec("timm:no_such_net")


def test_weights_load_strictly(tiny, tmp_path):
    from airflow_curator.core.annotate.clip import load_model
    from airflow_curator.core.annotate.weights import resolve

    spec = model_spec(f"timm:{tiny['model']}")
    model = load_model(spec, resolve(tiny["weights"]), "cpu")
    assert model.embed_dim == tiny["embed_dim"] and model.tokenize(["a caption"]) is None
    # timm's eval transform: shorter side to size / crop_pct, then the centre crop
    assert model.preprocess["size"] == (160, 160) and model.preprocess["resize"] == 168
    emb, text = model.encode(torch.zeros(2, 3, 160, 160))
    assert text is None and torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)
    wrong = tmp_path / "wrong.pth"
    torch.save({"head.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(WeightsError, match="do not fit timm model test_vit"):
        load_model(spec, resolve(str(wrong)), "cpu")


def test_annotate_with_a_timm_model_matches_timms_own_preprocessing(tiny, tmp_path):
    """Image embeddings only (text embedding and clip_score null); DALI's decode and resize
    give each record the embedding timm's PIL transform gives it, nearly."""
    pytest.importorskip("nvidia.dali")
    import pyarrow.parquet as pq
    import timm
    from PIL import Image

    kinds = write_awkward_shard(tmp_path / "ds", 0, seed=2)
    options = Options(
        model=f"timm:{tiny['model']}",
        weights=tiny["weights"],
        aesthetic_weights=tiny["aesthetic_weights"],
        nsfw_weights="none",
        device="cpu",
        batch_size=4,
    )
    annotator = Annotator(options)
    annotate_dataset(str(tmp_path / "ds"), str(tmp_path / "out"), None, options, annotator)
    table = pq.read_table(tmp_path / "out" / "_work" / "annotations" / "00000.parquet")
    assert table.column("text_embedding").null_count == table.num_rows
    assert table.column("clip_score").null_count == table.num_rows
    assert table.column("nsfw_score").null_count == table.num_rows
    ok = [k for k, kind in kinds.items() if kind == "ok"]
    assert table.column("aesthetic_score").null_count == table.num_rows - len(ok)
    model = annotator.clip.model
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    ids = table.column("key").to_pylist()
    for rec in iter_records(str(tmp_path / "ds" / "00000.tar")):
        if rec.id not in ok:
            continue
        image = Image.open(io.BytesIO(rec.data[rec.image_ext()])).convert("RGB")
        with torch.inference_mode():
            ref = torch.nn.functional.normalize(model(transform(image)[None]), dim=-1)[0]
        ours = torch.tensor(table.column("image_embedding")[ids.index(rec.id)].as_py())
        assert float(ours @ ref) > 0.98, rec.id
