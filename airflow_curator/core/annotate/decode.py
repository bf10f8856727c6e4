"""DALI image decoding for one shard: decode, resize and normalise as the CLIP model expects.

The shard's tar is read by ``fn.readers.webdataset`` through an index of the records that passed
a cheap structural check (so a truncated or missing image never reaches the decoder). Outputs are
mapped to record ids from the reader's ``source_info`` (``tar:offset:member``), never by
position. If the decoder still fails (a corrupt image with a valid frame), the records not yet
decoded go through a second pipeline fed batch by batch, which bisects a failing batch down to
the bad record: that record gets an error and the rest of the shard is decoded.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from airflow_curator.core.annotate.jpeg import read_jpeg
from airflow_curator.core.annotate.pairstats import image_size
from airflow_curator.core.errors import UsageError
from airflow_curator.core.wds.naming import key_id, split_member

logger = logging.getLogger(__name__)

IMAGE_EXT_SPEC = "jpg;jpeg;png;webp"  # DALI extension alternatives: one image per record
INTERP = {"bicubic": "INTERP_CUBIC", "bilinear": "INTERP_LINEAR", "nearest": "INTERP_NN"}


def check_image(data: bytes | None) -> str | None:
    """Why ``data`` cannot be a whole JPEG/PNG/WebP image, or None when it looks whole.

    Catches missing, empty, truncated and non-image members without decoding anything.
    """
    return inspect_image(data)[0]


def inspect_image(data: bytes | None) -> tuple[str | None, tuple[int, int] | None]:
    """``check_image``'s verdict and, for an image that passes, its (width, height) as decoded
    (``pairstats.image_size``), from one walk of a JPEG's markers.

    DALI's JPEG parser crashes the whole process (not an exception) on some invalid markers, so
    every segment of a JPEG is walked first (``jpeg.read_jpeg``).
    """
    if not data:
        return "image is empty", None
    if data[:3] == b"\xff\xd8\xff":
        if b"\xff\xd9" not in data[-64:]:
            return "JPEG is truncated (no end-of-image marker)", None
        header = read_jpeg(data)
        return header.problem, header.size if header.problem is None else None
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        if b"IEND" not in data[-16:]:
            return "PNG is truncated (no IEND chunk)", None
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        riff = int.from_bytes(data[4:8], "little") + 8
        if len(data) < riff:
            return f"WebP is truncated ({len(data)} of {riff} bytes)", None
    else:
        return f"not a JPEG, PNG or WebP image (starts with {data[:8].hex()})", None
    return None, image_size(data)


@dataclass(frozen=True)
class Preprocess:
    """open_clip's image preprocessing, as DALI operator arguments."""

    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    fill_color: int = 0
    resize: int | None = None  # "shortest": the shorter side before the crop (timm's size/crop_pct)

    @classmethod
    def from_open_clip(cls, cfg: dict[str, Any]) -> Preprocess:
        size = cfg.get("size", 224)
        hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        mode = cfg.get("resize_mode", "shortest")
        if mode not in ("shortest", "squash", "longest"):
            raise UsageError(f"unsupported open_clip resize_mode {mode!r}")
        return cls(
            hw,
            tuple(cfg["mean"]),
            tuple(cfg["std"]),
            cfg.get("interpolation", "bicubic"),
            mode,
            int(cfg.get("fill_color", 0)),
            int(cfg["resize"]) if cfg.get("resize") else None,
        )


@dataclass
class Batch:
    """Decoded images of some records (``images`` is N x 3 x H x W float32 on the device)."""

    ids: list[str]
    images: Any
    errors: dict[str, str] = field(default_factory=dict)


def _transform(images: Any, pre: Preprocess, device: str) -> Any:
    from nvidia.dali import fn, types

    h, w = pre.size
    interp = getattr(types, INTERP.get(pre.interpolation, "INTERP_LINEAR"))
    if pre.resize_mode == "squash":
        images = fn.resize(images, device=device, resize_x=w, resize_y=h, interp_type=interp)
    elif pre.resize_mode == "longest":
        images = fn.resize(images, device=device, resize_longer=max(h, w), interp_type=interp)
    else:
        shorter = pre.resize or min(h, w)
        images = fn.resize(images, device=device, resize_shorter=shorter, interp_type=interp)
    fill = [(pre.fill_color - m * 255) / (s * 255) for m, s in zip(pre.mean, pre.std)]
    return fn.crop_mirror_normalize(
        images,
        device=device,
        crop=(h, w),
        dtype=types.DALIDataType.FLOAT,
        output_layout="CHW",
        mean=[m * 255 for m in pre.mean],
        std=[s * 255 for s in pre.std],
        out_of_bounds_policy="pad",
        fill_values=fill,
    )


class Decoder:
    """Builds DALI pipelines for a device: ``cuda`` (GPU ``mixed`` decoder) or ``cpu``."""

    def __init__(
        self, pre: Preprocess, device: str = "cpu", batch_size: int = 64, threads: int = 0
    ) -> None:
        self.pre = pre
        self.gpu = device.startswith("cuda")
        self.device_id = (int(device.split(":")[1]) if ":" in device else 0) if self.gpu else None
        self.batch_size = batch_size
        self.threads = threads or max(1, min(8 if self.gpu else 4, os.cpu_count() or 1))

    def _pipeline(self, source: Callable[[], Any], prefetch: int = 2) -> Any:
        from nvidia.dali import fn, pipeline_def, types

        @pipeline_def(
            batch_size=self.batch_size,
            num_threads=self.threads,
            device_id=self.device_id,  # type: ignore[arg-type]  # None: no GPU, DALI allows it
            prefetch_queue_depth=prefetch,
        )
        def pipe() -> Any:
            encoded, info = source()
            images = fn.decoders.image(
                encoded, device="mixed" if self.gpu else "cpu", output_type=types.DALIImageType.RGB
            )
            return _transform(images, self.pre, "gpu" if self.gpu else "cpu"), info

        p = pipe()
        p.build()
        return p

    def reader_pipeline(self, tar: str, index: str) -> Any:
        def source() -> Any:
            from nvidia.dali import fn
            from nvidia.dali.data_node import DataNode

            encoded = fn.readers.webdataset(
                paths=[tar],
                index_paths=[index],
                ext=[IMAGE_EXT_SPEC],
                missing_component_behavior="error",
                name="reader",
            )
            assert isinstance(encoded, DataNode)  # one ext group: one output
            return encoded, fn.get_property(encoded, key="source_info")

        return self._pipeline(source)

    def feed_pipeline(self) -> Any:
        def source() -> Any:
            from nvidia.dali import fn, types

            encoded = fn.external_source(name="encoded", dtype=types.DALIDataType.UINT8, ndim=1)
            return encoded, fn.external_source(name="ids", dtype=types.DALIDataType.UINT8, ndim=1)

        return self._pipeline(source, prefetch=1)

    def to_torch(self, images: Any) -> Any:
        import torch
        from nvidia.dali.plugin.pytorch import feed_ndarray

        if self.gpu:
            images = images.as_tensor()
            out = torch.empty(images.shape(), dtype=torch.float32, device=f"cuda:{self.device_id}")
            feed_ndarray(images, out, cuda_stream=torch.cuda.current_stream(out.device))
            return out
        import numpy as np

        return torch.from_numpy(np.array(images.as_tensor()))

    def decode_tar(
        self, tar: str, index_text: str, ids: list[str], read: Callable[[str], bytes]
    ) -> Iterator[Batch]:
        """Decode the records ``ids`` listed (in order) by ``index_text`` from local ``tar``.

        ``read(id)`` returns a record's image bytes, for the fallback path only.
        """
        done: set[str] = set()
        wanted = set(ids)
        with tempfile.TemporaryDirectory(prefix="curator-idx-") as tmp:
            index = os.path.join(tmp, "shard.idx")
            with open(index, "w") as f:
                f.write(index_text)
            try:
                pipe = self.reader_pipeline(tar, index)
                for _ in range(-(-len(ids) // self.batch_size)):
                    images, info = pipe.run()
                    batch_ids = [_source_id(info.at(i), tar) for i in range(len(info))]
                    keep = [
                        i for i, rid in enumerate(batch_ids) if rid in wanted and rid not in done
                    ]
                    if not keep:
                        continue
                    tensor = self.to_torch(images)
                    done.update(batch_ids[i] for i in keep)
                    if len(keep) < len(batch_ids):  # the last batch wraps around to the start
                        tensor = tensor[keep]
                    yield Batch([batch_ids[i] for i in keep], tensor)
                del pipe
            except Exception as e:  # DALI raises RuntimeError subclasses; any failure falls back
                logger.warning(
                    "%s: decoder failed after %d of %d records (%s); isolating the bad image(s)",
                    tar,
                    len(done),
                    len(ids),
                    short_error(e),
                )
        rest = [rid for rid in ids if rid not in done]
        if rest:
            yield from self.decode_isolating(rest, read)

    def decode_isolating(self, ids: list[str], read: Callable[[str], bytes]) -> Iterator[Batch]:
        """Decode records fed from memory; a failing batch is split until the bad record is
        alone, which gets the decoder's error instead of an image."""
        pipe = None
        stack = [ids[i : i + self.batch_size] for i in range(0, len(ids), self.batch_size)][::-1]
        while stack:
            chunk = stack.pop()
            if pipe is None:
                pipe = self.feed_pipeline()
            try:
                pipe.feed_input("encoded", [_array(read(rid)) for rid in chunk])
                pipe.feed_input("ids", [_array(rid.encode()) for rid in chunk])
                images, _ = pipe.run()
                yield Batch(list(chunk), self.to_torch(images))
            except Exception as e:
                pipe = None  # a failed pipeline is not reusable
                if len(chunk) == 1:
                    yield Batch([], None, {chunk[0]: f"image cannot be decoded: {short_error(e)}"})
                else:
                    half = len(chunk) // 2
                    stack.extend([chunk[half:], chunk[:half]])


def _array(data: bytes) -> Any:
    import numpy as np

    return np.frombuffer(data, dtype=np.uint8)


def _source_id(info: Any, tar: str) -> str:
    """``/path/00000.tar:512:000000031.jpg`` -> ``000000031``."""
    import numpy as np

    text = np.array(info).tobytes().decode()
    rest = text[len(tar) + 1 :] if text.startswith(tar + ":") else text.split(":", 1)[-1]
    member = rest.split(":", 1)[-1]
    return key_id(split_member(member)[0])


def short_error(error: BaseException) -> str:
    """The informative line of a long DALI error (the one after ``encountered:``)."""
    text = str(error)
    tail = text.split("encountered:", 1)[-1]
    lines = [ln.strip() for ln in tail.splitlines() if ln.strip()]
    return (lines[0] if lines else type(error).__name__)[:200]
