"""Structural image checks and the decoder's isolation of images it cannot decode."""

from __future__ import annotations

import random

import pytest

from airflow_curator.core.annotate.decode import Decoder, Preprocess, check_image, inspect_image
from airflow_curator.testing.dataset import make_jpeg

PRE = Preprocess((32, 32), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_whole_images_pass_and_cut_ones_fail(fmt):
    data = make_jpeg(random.Random(0), (48, 40), fmt)
    assert check_image(data) is None
    assert "truncated" in check_image(data[: len(data) - 40])


def test_non_images_are_named():
    assert check_image(b"") == "image is empty"
    assert "not a JPEG" in check_image(b"GIF89a....")


def test_isolating_decoder_flags_only_the_bad_record():
    pytest.importorskip("nvidia.dali")
    rng = random.Random(1)
    images = {f"{i:09d}": make_jpeg(rng, (40 + i, 50)) for i in range(7)}
    good = images["000000003"]
    images["000000003"] = good[:150] + bytes(250) + good[400:]
    decoder = Decoder(PRE, "cpu", batch_size=4, threads=1)
    batches = list(decoder.decode_isolating(list(images), images.__getitem__))
    decoded = [rid for b in batches for rid in b.ids]
    errors = {k: v for b in batches for k, v in b.errors.items()}
    assert sorted(decoded) == sorted(set(images) - {"000000003"})
    assert list(errors) == ["000000003"] and "cannot be decoded" in errors["000000003"]
    for b in batches:
        if b.ids:
            assert tuple(b.images.shape) == (len(b.ids), 3, 32, 32)


def test_jpeg_structure_walk_accepts_real_encodings_and_refuses_bad_markers():
    """DALI's parser crashed the process (SIGSEGV) on this image: it must never reach it."""
    import io

    from PIL import Image

    for kw in (
        {},
        {"progressive": True},
        {"optimize": True},
        {"exif": b"Exif\x00\x00" + bytes(40)},
    ):
        out = io.BytesIO()
        Image.effect_noise((90, 70), 50).convert("RGB").save(out, "JPEG", quality=60, **kw)
        assert check_image(out.getvalue()) is None, kw
    rng = random.Random(0)
    make_jpeg(rng)
    jpeg = make_jpeg(rng, (80, 80))
    crashing = jpeg[:200] + bytes(rng.randrange(256) for _ in range(300)) + jpeg[500:]
    assert check_image(crashing).startswith("JPEG is corrupt")
    reserved = jpeg[:2] + b"\xff\x5a\x00\x04ab" + jpeg[2:]
    assert "invalid marker 0x5a" in check_image(reserved)
    overrun = jpeg[:2] + b"\xff\xe1\xff\xf0" + jpeg[2:40] + b"\xff\xd9"
    assert "overruns" in check_image(overrun)


@pytest.mark.parametrize("sof", [0xC5, 0xC6, 0xC7, 0xCD, 0xCE, 0xCF])
def test_a_differential_frame_is_refused_as_no_decoder_reads_it(sof):
    """SOF5-7 and SOF13-15 are hierarchical JPEG's differential frames: libjpeg-turbo (Pillow,
    DALI's CPU backend) cannot decode them, so the scan refuses them, with that reason."""
    import io

    from PIL import Image

    jpeg = make_jpeg(random.Random(0), (48, 40))
    at = jpeg.index(b"\xff\xc0")
    differential = jpeg[: at + 1] + bytes([sof]) + jpeg[at + 2 :]
    with pytest.raises(OSError):
        Image.open(io.BytesIO(differential)).load()
    assert check_image(differential) == (
        f"JPEG has a differential (hierarchical) frame SOF{sof - 0xC0}, "
        "which libjpeg and DALI cannot decode"
    )
    assert inspect_image(differential) == (check_image(differential), None)


def test_one_marker_walk_gives_the_check_and_the_size():
    from airflow_curator.core.annotate.pairstats import image_size

    rng = random.Random(4)
    for fmt in ("JPEG", "PNG", "WEBP"):
        data = make_jpeg(rng, (57, 31), fmt)
        assert inspect_image(data) == (None, (57, 31)) == (check_image(data), image_size(data))
    jpeg = make_jpeg(rng, (20, 30))
    cut = jpeg[:2] + b"\xff\xe1\xff\xf0" + jpeg[2:40] + b"\xff\xd9"
    assert inspect_image(cut) == (check_image(cut), None) and "overruns" in check_image(cut)
