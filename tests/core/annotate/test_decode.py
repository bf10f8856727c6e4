"""Structural image checks and the decoder's isolation of images it cannot decode."""

from __future__ import annotations

import random

import pytest

from airflow_curator.core.annotate.decode import Decoder, Preprocess, check_image
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
