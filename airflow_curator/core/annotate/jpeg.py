"""One walk over a JPEG's markers: whether its structure is whole, and its size as decoded.

The scan of a shard needs both for every JPEG (``decode.check_image`` refuses a broken one
before any decoder sees it, ``pairstats`` records its width and height), so both come from the
same pass: header segments by their lengths, entropy-coded data by a regex search for the next
marker (C speed, no per-byte Python).

Frames: baseline, extended, progressive and lossless (SOF0-3, SOF9-11) are decodable. The
differential frames of hierarchical JPEG (SOF5-7, SOF13-15) are not: libjpeg-turbo (Pillow,
DALI's CPU backend) stops at them (``JERR_SOF_UNSUPPORTED``), so an image whose only frame is
differential is refused here with that reason instead of failing in a decoder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

FRAMES = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC9, 0xCA, 0xCB})  # what libjpeg-turbo decodes
DIFFERENTIAL = frozenset({0xC5, 0xC6, 0xC7, 0xCD, 0xCE, 0xCF})  # hierarchical JPEG's frames
_EXIF_ORIENTATION = 0x0112
# 0xFF then anything but stuffing (00), restarts (D0-D7), SOI/EOI (D8-D9) or fill (FF)
_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd9\xff]")


@dataclass(frozen=True)
class JpegHeader:
    """``problem``: why the structure is broken (None: whole); ``size``: (width, height) as
    decoded (EXIF orientations 5-8 swap the sides, as the decoders rotate), from the first
    frame header, None without one."""

    problem: str | None
    size: tuple[int, int] | None
    metadata: bool = False  # an APP1 segment (EXIF or XMP: what may orient the image) before a scan


def read_jpeg(data: bytes, header: bool = False) -> JpegHeader:
    """Walk the markers of ``data`` (which starts with SOI) up to its end-of-image marker, or
    (``header``) up to its first scan: a problem is then only one of the header's."""
    i, n, orientation = 2, len(data), 1
    size: tuple[int, int] | None = None
    frame = scan = metadata = False

    def broken(reason: str) -> JpegHeader:
        return JpegHeader(f"JPEG is corrupt ({reason})", size, metadata)

    while i < n:
        if data[i] != 0xFF:
            return broken(f"no marker at byte {i}")
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            break
        marker, start = data[i], i - 1
        i += 1
        if marker == 0xD9:  # EOI
            if frame and scan:
                return JpegHeader(None, size, metadata)
            return broken("no frame or scan before its end")
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # no length
            continue
        if marker < 0xC0 or i + 2 > n:
            return broken(f"invalid marker 0x{marker:02x} at byte {start}")
        length = int.from_bytes(data[i : i + 2], "big")
        if length < 2 or i + length > n:
            return broken(f"segment 0x{marker:02x} at byte {start} overruns the data")
        body, i = i + 2, i + length
        metadata = metadata or (marker == 0xE1 and not scan)
        if marker == 0xE1 and size is None and data[body : body + 6] == b"Exif\x00\x00":
            orientation = _exif_orientation(data[body + 6 : i]) or orientation
        elif marker in FRAMES or marker in DIFFERENTIAL:
            if size is None and body + 5 <= i:
                height = int.from_bytes(data[body + 1 : body + 3], "big")
                width = int.from_bytes(data[body + 3 : body + 5], "big")
                size = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
            frame = frame or marker in FRAMES
            if not frame:
                return JpegHeader(
                    f"JPEG has a differential (hierarchical) frame SOF{marker - 0xC0}, "
                    "which libjpeg and DALI cannot decode",
                    size,
                    metadata,
                )
        elif marker == 0xDA:  # start of scan: entropy-coded data up to the next real marker
            if not frame:
                return broken("scan before frame header")
            scan = True
            if header:
                return JpegHeader(None, size, metadata)
            found = _MARKER.search(data, i)
            i = found.start() if found else data.rfind(b"\xff\xd9")
    return broken("no end-of-image marker")


def _exif_orientation(tiff: bytes) -> int | None:
    """EXIF's orientation tag (1-8) from IFD0 of a TIFF block, or None."""
    order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return None
    endian: Any = order
    ifd = int.from_bytes(tiff[4:8], endian)
    if ifd + 2 > len(tiff):
        return None
    for k in range(int.from_bytes(tiff[ifd : ifd + 2], endian)):
        entry = ifd + 2 + 12 * k
        if entry + 12 > len(tiff):
            return None
        if int.from_bytes(tiff[entry : entry + 2], endian) == _EXIF_ORIENTATION:
            value = int.from_bytes(tiff[entry + 8 : entry + 10], endian)
            return value if 1 <= value <= 8 else None
    return None
