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
    assert resolve("memory://bucket/models/head.pth").path == got.path  # the cached copy
    fs.pipe("/bucket/models/head.pth", b"changed")  # replaced: fetched again (size, version)
    again = resolve("memory://bucket/models/head.pth")
    assert again.path != got.path and Path(again.path).read_bytes() == b"changed"
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


def nemo_nsfw_state(seed: int = 0) -> dict:
    """A state dict in the layout of the file NeMo Curator loads (its ``NSFWModel``:
    ``norm.mean``, ``norm.variance``, ``linear_1`` .. ``linear_4``), made independently here."""
    g = torch.Generator().manual_seed(seed)
    sizes = [(768, 64), (64, 512), (512, 256), (256, 1)]
    state = {"norm.mean": torch.randn(768, generator=g) * 0.01,
             "norm.variance": torch.rand(768, generator=g) + 0.5}  # fmt: skip
    for i, (a, b) in enumerate(sizes, start=1):
        state[f"linear_{i}.weight"] = torch.randn(b, a, generator=g) / a**0.5
        state[f"linear_{i}.bias"] = torch.randn(b, generator=g) * 0.1
    return state


def nemo_nsfw_forward(state: dict, x):
    x = (x - state["norm.mean"]) / state["norm.variance"].sqrt()
    for i in range(1, 4):
        x = torch.relu(x @ state[f"linear_{i}.weight"].T + state[f"linear_{i}.bias"])
    return torch.sigmoid(x @ state["linear_4.weight"].T + state["linear_4.bias"]).squeeze(-1)


@pytest.fixture
def laion_zip(tmp_path):
    """LAION's zip layout: the .pth at the root of clip_autokeras_binary_nsfw.zip."""
    import zipfile

    state = nemo_nsfw_state()
    pth = tmp_path / "clip_autokeras_binary_nsfw.pth"
    torch.save(state, pth)
    folder = tmp_path / "files" / "10250461"
    folder.mkdir(parents=True)
    with zipfile.ZipFile(folder / "clip_autokeras_binary_nsfw.zip", "w") as z:
        z.write(pth, "clip_autokeras_binary_nsfw.pth")
    return state, pth.read_bytes(), tmp_path


@pytest.fixture
def http_server(laion_zip):
    """A file server on 127.0.0.1 (a free port), counting the requests it answers."""
    from airflow_curator.testing.http import serve_folder

    with serve_folder(str(laion_zip[2])) as server:
        yield server.url, server.requests


def test_nsfw_default_is_nemos_file_inside_laions_zip():
    from airflow_curator.core.annotate.heads import DEFAULTS

    assert (
        DEFAULTS["nsfw"]
        == weights.NSFW_URL
        == (
            "zip://clip_autokeras_binary_nsfw.pth::https://github.com/LAION-AI/"
            "CLIP-based-NSFW-Detector/files/10250461/clip_autokeras_binary_nsfw.zip"
        )
    )
    assert weights.expected_digest(weights.NSFW_URL) is None  # LAION publishes none


def test_zip_member_is_fetched_extracted_and_cached_once(
    tmp_path, monkeypatch, laion_zip, http_server, caplog
):
    from airflow_curator.core.annotate.heads import Head

    state, pth_bytes, _ = laion_zip
    base, hits = http_server
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    url = f"zip://clip_autokeras_binary_nsfw.pth::{base}/files/10250461/clip_autokeras_binary_nsfw.zip"
    with caplog.at_level("WARNING"):
        got = resolve(url)
    assert Path(got.path).read_bytes() == pth_bytes
    assert got.sha256 == hashlib.sha256(pth_bytes).hexdigest()
    assert f"sha256 {got.sha256}" in caplog.text  # logged for the user to pin
    served = len(hits)
    assert served >= 1
    assert resolve(url, got.sha256).path == got.path  # pinned now, from the cache
    assert len(hits) == served  # nothing downloaded again
    with pytest.raises(WeightsError, match="refusing"):
        resolve(url, "0" * 64)
    head = Head("nsfw", got, 768)  # scores exactly as NeMo's model does
    x = torch.nn.functional.normalize(torch.randn(6, 768), dim=-1)
    assert torch.allclose(head(x), nemo_nsfw_forward(state, x), atol=1e-6)


def test_zip_member_errors_are_clear(tmp_path, monkeypatch, laion_zip):
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    archive = laion_zip[2] / "files" / "10250461" / "clip_autokeras_binary_nsfw.zip"
    with pytest.raises(WeightsError, match=r"has no other\.pth \(members: clip_autokeras"):
        resolve(f"zip://other.pth::{archive}")
    not_zip = tmp_path / "plain.zip"
    not_zip.write_bytes(b"nope")
    with pytest.raises(WeightsError, match="is not a zip file"):
        resolve(f"zip://x.pth::{not_zip}")
    with pytest.raises(WeightsError, match="expected zip://MEMBER::ZIP_URL"):
        resolve("zip://x.pth")


def test_http_weights_without_range_support_are_one_streaming_get(tmp_path, monkeypatch):
    """A mirror that ignores ``Range`` (answers 200 with the whole file): fsspec's ranged reads
    fail there ("doesn't appear to support range requests") once a file is larger than a
    block. One streaming GET fetches it whole; a failed download leaves no cache folder."""
    import os

    from airflow_curator.testing.http import serve_folder

    cache = tmp_path / "cache"
    monkeypatch.setenv(weights.CACHE_ENV, str(cache))
    served = tmp_path / "mirror"
    served.mkdir()
    data = os.urandom(33 << 20) + b"tail"  # larger than any read block
    (served / "big.pt").write_bytes(data)
    with serve_folder(str(served)) as server:
        got = resolve(f"{server.url}/big.pt", hashlib.sha256(data).hexdigest())
        assert Path(got.path).read_bytes() == data
        assert server.requests == ["GET /big.pt"]  # one request, no ranges, no HEAD
        assert resolve(f"{server.url}/big.pt").path == got.path  # cached: nothing fetched
        assert server.requests == ["GET /big.pt"]
        before = sorted(p.name for p in cache.iterdir())
        with pytest.raises(WeightsError, match="not found or not reachable"):
            resolve(f"{server.url}/missing.pt")
    assert sorted(p.name for p in cache.iterdir()) == before  # no empty folder left
    assert not [p for p in cache.rglob("*") if p.name.startswith(".tmp-")]


def test_weights_baked_into_the_image_are_read_from_there(tmp_path, monkeypatch):
    """The image bakes weights in a read-only folder; the pod's writable cache is a volume
    mounted elsewhere, so a baked file is found without a download and without writing."""
    import fsspec

    url = "memory://bucket/models/baked.pth"
    fsspec.filesystem("memory").pipe(url.removeprefix("memory:/"), b"baked")
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "bake"))
    baked = resolve(url).path  # what the image build does, into its baked folder
    fsspec.filesystem("memory").rm(url.removeprefix("memory:/"))  # not reachable any more
    monkeypatch.setenv(weights.BAKED_ENV, str(tmp_path / "bake"))
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "volume"))
    assert resolve(url).path == baked
    assert not (tmp_path / "volume").exists() or not any((tmp_path / "volume").iterdir())


def test_weights_on_gs_replaced_in_the_bucket_are_fetched_again(gcs_bucket, tmp_path, monkeypatch):
    """The cache is keyed on the object's generation and size, not its URI: replacing the
    file in the bucket gives the new bytes (annotate --force then runs on the new weights)."""
    from airflow_curator.core.annotate import weights
    from airflow_curator.core.io import storage

    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    uri = f"{gcs_bucket}/models/head.pt"
    storage.write_bytes(uri, b"old weights")
    first = weights.fetch(uri)
    assert Path(first).read_bytes() == b"old weights"
    assert weights.fetch(uri) == first  # unchanged: the cached copy
    storage.write_bytes(uri, b"new weights")  # same size: the generation tells them apart
    second = weights.fetch(uri)
    assert second != first and Path(second).read_bytes() == b"new weights"
