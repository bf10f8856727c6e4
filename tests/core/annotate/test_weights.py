"""Weight files: resolution from paths, URLs and hub ids; pins; checkpoint formats; heads."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from airflow_curator.core.annotate import weights
from airflow_curator.core.annotate.weights import WeightsError, read_state_dict, resolve

torch = pytest.importorskip("torch")


def test_local_file_with_its_sha256(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"a": torch.ones(2)}, path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    got = resolve(str(path), sha)
    assert got.path == str(path) and got.sha256 == sha
    with pytest.raises(WeightsError, match="refusing"):
        resolve(str(path), "1" * 64)
    with pytest.raises(WeightsError, match="no such file"):
        resolve(str(tmp_path / "missing.pt"))


def test_url_is_fetched_once_into_the_cache(tmp_path, monkeypatch):
    import fsspec

    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    fs = fsspec.filesystem("memory")
    fs.pipe("/bucket/models/head.pth", b"abc")
    got = resolve("memory://bucket/models/head.pth", hashlib.sha256(b"abc").hexdigest())
    assert Path(got.path).read_bytes() == b"abc"
    fs.pipe("/bucket/models/head.pth", b"changed")  # cached copy is reused, and checked
    assert resolve("memory://bucket/models/head.pth").path == got.path
    with pytest.raises(WeightsError, match="not found or not reachable"):
        resolve("memory://bucket/models/nothing.pth")


def test_default_file_names_are_pinned_wherever_they_are(tmp_path):
    fake = tmp_path / "ViT-L-14.pt"  # OpenAI's file name, not OpenAI's bytes
    fake.write_bytes(b"not the checkpoint")
    with pytest.raises(
        WeightsError, match="b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836"
    ):
        resolve(str(fake))
    aesthetic = tmp_path / "sac+logos+ava1-l14-linearMSE.pth"
    aesthetic.write_bytes(b"x")
    with pytest.raises(WeightsError, match="md5"):
        resolve(str(aesthetic))


def test_hub_id_offline_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(WeightsError, match="hf-hub:nobody/nothing"):
        resolve("hf-hub:nobody/nothing")


def test_checkpoint_formats(tmp_path):
    lin = torch.nn.Linear(3, 2)
    plain, wrapped, script = tmp_path / "p.pt", tmp_path / "w.pt", tmp_path / "s.pt"
    torch.save({f"module.{k}": v for k, v in lin.state_dict().items()}, plain)
    torch.save({"state_dict": lin.state_dict(), "epoch": 3}, wrapped)
    torch.jit.save(torch.jit.script(lin), script)  # OpenAI's CLIP .pt files are TorchScript
    for path in (plain, wrapped, script):
        state = read_state_dict(str(path))
        assert set(state) == {"weight", "bias"}
        assert torch.equal(state["weight"], lin.weight)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="not a readable checkpoint"):
        read_state_dict(str(junk))


def test_aesthetic_head_loads_the_published_layout(tmp_path):
    """A state dict made independently in LAION's layout (``layers`` Sequential) loads and
    scores exactly like the plain linear stack it is."""
    from airflow_curator.core.annotate.heads import Head

    torch.manual_seed(0)
    published = torch.nn.Sequential(
        torch.nn.Linear(768, 1024),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(1024, 128),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(128, 64),
        torch.nn.Dropout(0.1),
        torch.nn.Linear(64, 16),
        torch.nn.Linear(16, 1),
    ).eval()
    path = tmp_path / "aesthetic.pth"
    torch.save({f"layers.{k}": v for k, v in published.state_dict().items()}, path)
    head = Head("aesthetic", resolve(str(path)), 768)
    x = torch.nn.functional.normalize(torch.randn(5, 768), dim=-1)
    assert torch.allclose(head(x), published(x).squeeze(-1), atol=1e-6)
    with pytest.raises(Exception, match="512-wide"):
        Head("aesthetic", resolve(str(path)), 512)
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(1, 768)}, wrong)
    with pytest.raises(Exception, match=r"layers\.0\.weight"):
        Head("aesthetic", resolve(str(wrong)), 768)
