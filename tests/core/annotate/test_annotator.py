"""Annotation on the CPU with tiny random models loaded through the real weight-loading code."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from airflow_curator.core.annotate.annotator import (
    Annotator,
    Options,
    annotate_dataset,
    annotations_url,
)
from airflow_curator.core.errors import CuratorError, ShardError
from airflow_curator.core.wds.records import iter_records
from airflow_curator.testing.awkward import captions, write_awkward_shard
from airflow_curator.testing.models import tiny_options, write_tiny_models

torch = pytest.importorskip("torch")
pytest.importorskip("nvidia.dali")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_models(str(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="module")
def options(tiny):
    return tiny_options(tiny, weights_sha256=tiny["sha256"][tiny["weights"]], batch_size=4)


@pytest.fixture(scope="module")
def annotator(options):
    return Annotator(options)


@pytest.fixture(scope="module")
def annotated(tmp_path_factory, options, annotator):
    root = tmp_path_factory.mktemp("awkward")
    dataset = root / "dataset"
    kinds = write_awkward_shard(dataset, 0, seed=1)
    result = annotate_dataset(str(dataset), str(root / "out"), None, options, annotator)
    return root, dataset, kinds, result


def read_annotation(root, shard="00000"):
    import pyarrow.parquet as pq

    return pq.read_table(f"{annotations_url(str(root / 'out'))}/{shard}.parquet")


def reference_image_embeddings(annotator, dataset):
    """PIL decode + open_clip's torchvision preprocessing + the same model, per record id."""
    from PIL import Image

    clip = annotator.clip
    transform = clip.image_transform()
    out = {}
    for rec in iter_records(str(dataset / "00000.tar")):
        ext = rec.image_ext()
        try:
            image = Image.open(io.BytesIO(rec.data[ext])).convert("RGB")
            image.load()
        except Exception:
            continue
        emb, _ = clip.encode(transform(image)[None], None)
        out[rec.id] = emb[0]
    return out


def test_rows_follow_parquet_ids_with_errors_flagged(annotated):
    root, _, kinds, result = annotated
    table = read_annotation(root)
    ids = table.column("key").to_pylist()
    assert ids == sorted(kinds)  # the Parquet's order, not the shuffled tar order
    errors = dict(zip(ids, table.column("error").to_pylist()))
    bad = {rid for rid, kind in kinds.items() if kind != "ok"}
    assert {rid for rid, e in errors.items() if e} == bad
    by_kind = {kinds[rid]: errors[rid] for rid in bad}
    assert "truncated" in by_kind["truncated"]
    assert "no image" in by_kind["missing"]
    # caught by the structure check before DALI (whose parser can crash the process on it)
    assert "JPEG is corrupt" in by_kind["garbled"] or "cannot be decoded" in by_kind["garbled"]
    for col in ("image_embedding", "text_embedding", "clip_score", "aesthetic_score", "nsfw_score"):
        values = dict(zip(ids, table.column(col).to_pylist()))
        assert all((values[rid] is None) == (rid in bad) for rid in ids), col
    assert result["records"] == len(kinds) and result["failed"] == len(bad)
    assert result["per_shard"][0]["failed"] == len(bad) and result["records_per_s"] > 0


def test_embeddings_and_scores_belong_to_their_record(annotated, annotator):
    import torch.nn.functional as F

    root, dataset, kinds, _ = annotated
    table = read_annotation(root)
    ids = table.column("key").to_pylist()
    rows = {rid: i for i, rid in enumerate(ids) if kinds[rid] == "ok"}
    image = torch.tensor(table.column("image_embedding").to_pylist()[0])
    assert image.shape == (annotator.clip.embed_dim,)
    ref = reference_image_embeddings(annotator, dataset)
    ours = torch.stack(
        [torch.tensor(table.column("image_embedding")[rows[r]].as_py()) for r in rows]
    )
    theirs = torch.stack([ref[r] for r in rows])
    sim = ours @ theirs.T  # each record's embedding is nearest to its own image's reference
    assert (sim.argmax(dim=1) == torch.arange(len(rows))).all()
    assert torch.diagonal(sim).min() > 0.98
    assert torch.allclose(ours.norm(dim=1), torch.ones(len(rows)), atol=1e-4)
    caps = captions(dataset)
    tokens = annotator.clip.tokenize([caps[r] for r in rows])
    _, text = annotator.clip.encode(torch.zeros(len(rows), 3, 32, 32), tokens)
    got_text = torch.stack(
        [torch.tensor(table.column("text_embedding")[rows[r]].as_py()) for r in rows]
    )
    assert torch.allclose(got_text, text, atol=1e-5)
    clip_score = torch.tensor([table.column("clip_score")[rows[r]].as_py() for r in rows])
    assert torch.allclose(clip_score, (ours * got_text).sum(1), atol=1e-5)
    aesthetic = annotator.heads["aesthetic"](ours)
    got_aesthetic = torch.tensor([table.column("aesthetic_score")[rows[r]].as_py() for r in rows])
    assert torch.allclose(got_aesthetic, aesthetic, atol=1e-4)
    nsfw = torch.tensor([table.column("nsfw_score")[rows[r]].as_py() for r in rows])
    assert ((nsfw > 0) & (nsfw < 1)).all()
    assert F.cosine_similarity(ours[0], ours[1], dim=0) < 0.9999  # not a constant output


def test_rerun_skips_and_force_rewrites_same_bytes(annotated, options, annotator):
    root, dataset, _, _ = annotated
    url = f"{annotations_url(str(root / 'out'))}/00000.parquet"
    before = Path(url).read_bytes()
    again = annotate_dataset(str(dataset), str(root / "out"), "0", options, annotator)
    assert again["skipped"] == 1 and again["annotated"] == 0
    forced = Options(**{**options.__dict__, "force": True})
    redo = annotate_dataset(str(dataset), str(root / "out"), "0", forced, annotator)
    assert redo["annotated"] == 1
    assert Path(url).read_bytes() == before


def test_changed_inputs_are_annotated_again(tmp_path, options, annotator, tiny):
    dataset = tmp_path / "dataset"
    write_awkward_shard(dataset, 0, seed=2)
    first = annotate_dataset(str(dataset), str(tmp_path / "out"), None, options, annotator)
    assert first["annotated"] == 1
    no_nsfw = Options(**{**options.__dict__, "nsfw_weights": "none"})
    second = annotate_dataset(
        str(dataset), str(tmp_path / "out"), None, no_nsfw, Annotator(no_nsfw)
    )
    assert second["annotated"] == 1
    table = read_annotation(tmp_path)
    assert table.column("nsfw_score").null_count == table.num_rows
    assert table.column("aesthetic_score").null_count < table.num_rows


def test_an_annotator_it_made_leaves_no_decoding_process(tmp_path, options, annotator):
    """annotate_dataset stops the decoding processes of the annotator it made; a caller's
    annotator keeps its own for the next call."""
    from tests.core.test_workerpool import live_children

    dataset = tmp_path / "dataset"
    write_awkward_shard(dataset, 0, seed=3)
    before = live_children()
    assert annotate_dataset(str(dataset), str(tmp_path / "a"), None, options)["annotated"] == 1
    assert live_children() <= before
    annotate_dataset(str(dataset), str(tmp_path / "b"), None, options, annotator)
    assert set(annotator.decoder._pool.pids) <= live_children()


def test_parquet_id_mismatch_names_the_ids(tmp_path, options, annotator):
    import pyarrow as pa
    import pyarrow.parquet as pq

    dataset = tmp_path / "dataset"
    kinds = write_awkward_shard(dataset, 0)
    ids = sorted(kinds)[1:] + ["000009999"]
    pq.write_table(pa.table({"key": ids}), dataset / "00000.parquet")
    with pytest.raises(ShardError, match=f"not in the Parquet: {sorted(kinds)[0]}"):
        annotate_dataset(str(dataset), str(tmp_path / "out"), None, options, annotator)
    pq.write_table(pa.table({"key": sorted(kinds) + ["000009999"]}), dataset / "00000.parquet")
    with pytest.raises(ShardError, match="no record in the tar: 000009999"):
        annotate_dataset(str(dataset), str(tmp_path / "out"), None, options, annotator)


def test_json_id_mismatch_is_an_error(tmp_path, options, annotator):
    import json
    import tarfile

    from airflow_curator.testing.dataset import add_member, write_demo_dataset

    dataset = tmp_path / "dataset"
    write_demo_dataset(str(dataset), shards=1, records_per_shard=3)
    tar_path = dataset / "00000.tar"
    with tarfile.open(tar_path) as src:
        members = [(m.name, src.extractfile(m).read()) for m in src.getmembers()]
    with tarfile.open(tar_path, "w", format=tarfile.GNU_FORMAT) as out:
        for name, data in members:
            if name == "000000001.json":
                data = json.dumps({"key": "000000002"}).encode()
            add_member(out, name, data)
    with pytest.raises(ShardError, match="000000001"):
        annotate_dataset(str(dataset), str(tmp_path / "out"), None, options, annotator)


def test_checksum_mismatch_is_refused(options):
    bad = Options(**{**options.__dict__, "weights_sha256": "0" * 64})
    with pytest.raises(CuratorError, match="refusing"):
        Annotator(bad)
    bad_head = Options(**{**options.__dict__, "aesthetic_sha256": "f" * 64})
    with pytest.raises(CuratorError, match=r"aesthetic-weights|tiny-aesthetic.pth: sha256 is"):
        Annotator(bad_head)


def test_head_width_mismatch_is_refused(tmp_path, tiny):
    narrow = write_tiny_models(str(tmp_path / "narrow"), embed_dim=64, heads=False)
    opts = Options(
        model=narrow["model"],
        weights=narrow["weights"],
        aesthetic_weights=tiny["aesthetic_weights"],
        nsfw_weights="none",
        device="cpu",
    )
    with pytest.raises(CuratorError, match="768-wide embeddings but the CLIP model gives 64"):
        _ = Annotator(opts).clip


def test_nsfw_default_is_the_heads_default(options, tmp_path, monkeypatch):
    """No --nsfw-weights: NeMo Curator's file (here a local zip in its place)."""
    import zipfile

    from airflow_curator.core.annotate import heads, weights

    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    archive = tmp_path / "clip_autokeras_binary_nsfw.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(options.nsfw_weights, "clip_autokeras_binary_nsfw.pth")
    url = f"zip://clip_autokeras_binary_nsfw.pth::{archive}"
    monkeypatch.setitem(heads.DEFAULTS, "nsfw", url)
    annotator = Annotator(Options(**{**options.__dict__, "nsfw_weights": None}))
    assert annotator.head_files["nsfw"].uri == url
    assert annotator.head_files["nsfw"].sha256 == weights.digest(options.nsfw_weights)


def test_all_images_bad_still_writes_the_shard(tmp_path, options, annotator):
    from airflow_curator.testing.dataset import write_demo_dataset

    dataset = tmp_path / "dataset"
    write_demo_dataset(str(dataset), shards=1, records_per_shard=2, image_bytes=100)
    result = annotate_dataset(str(dataset), str(tmp_path / "out"), None, options, annotator)
    assert result["failed"] == 2
    table = read_annotation(tmp_path)
    assert table.column("clip_score").null_count == 2
    assert all("not a JPEG" in e for e in table.column("error").to_pylist())


def test_object_store_dataset_and_output(tmp_path, options, annotator):
    """A bucket URL (fsspec memory:// here): the tar is fetched for DALI, the Parquet is put."""
    import fsspec
    import pyarrow.parquet as pq

    kinds = write_awkward_shard(tmp_path / "local", 0, seed=4)
    fs = fsspec.filesystem("memory")
    for name in ("00000.tar", "00000.parquet"):
        fs.pipe(f"/bucket/ds/{name}", (tmp_path / "local" / name).read_bytes())
    result = annotate_dataset("memory://bucket/ds", "memory://bucket/job", None, options, annotator)
    assert result["records"] == len(kinds) and result["failed"] == 3
    with fs.open("/bucket/job/_work/annotations/00000.parquet", "rb") as f:
        table = pq.read_table(f)
    assert table.column("key").to_pylist() == sorted(kinds)
    again = annotate_dataset("memory://bucket/ds", "memory://bucket/job", None, options, annotator)
    assert again["skipped"] == 1


def test_a_bad_tar_on_an_object_store_is_named_by_its_uri(tmp_path, options, annotator):
    """The tar is copied locally for DALI, but the error names the dataset's URI."""
    import fsspec

    write_awkward_shard(tmp_path / "local", 0, seed=5)
    fs = fsspec.filesystem("memory")
    import tarfile

    local = tmp_path / "local" / "00000.tar"
    with tarfile.open(local) as tar:
        big = max(tar.getmembers(), key=lambda m: m.size)  # cut inside its data
    fs.pipe("/badtar/ds/00000.tar", local.read_bytes()[: big.offset_data + big.size // 2])
    fs.pipe("/badtar/ds/00000.parquet", (tmp_path / "local" / "00000.parquet").read_bytes())
    with pytest.raises(ShardError, match=r"^shard 00000: memory://badtar/ds/00000\.tar: truncated"):
        annotate_dataset("memory://badtar/ds", "memory://badtar/job", None, options, annotator)
