"""Image decoding on the CPU: JPEGs decoded small in the DCT domain, then the model's own
preprocessing (open_clip's or timm's eval transform), on a thread pool that stays a few batches
ahead of the model.

DALI 2.4's CPU decoder (nvImageCodec over libjpeg-turbo) always decodes at full size: neither
``fn.decoders.image`` nor its ``image_crop`` / ``image_slice`` / ``image_random_crop`` variants
(which only decode a region) can scale, and its resize then costs about as much again. libjpeg
itself can decode at 1/2, 1/4 or 1/8 of the size, skipping most of the inverse DCT, upsampling
and colour conversion; Pillow exposes that as ``Image.draft``. So on the CPU a JPEG is decoded
at the smallest such scale that still leaves ``DRAFT_MARGIN`` times what the transform resizes
to (the model's input, or timm's larger ``size / crop_pct`` before its crop), and the result goes
through the transform's own resize and crop (as the Pillow calls torchvision makes, see
``_direct``). With no reduction possible (an image under twice
that size), the pixels are exactly those of the model's reference preprocessing.

The workers are processes, each a new interpreter (``workerpool.InterpreterPool``) started once
per decoder, when the model loads, and kept across shards. Decoding and resizing release the GIL,
but the Python around each call (a few tens of microseconds an image) needs it back, and the main
thread holds it for the tar scan and the tokenizer: decoding threads waited on it, and on this
2-core machine a shard ran ~25% faster with processes (caching the tokenizer's output alone had
given threads +21%). A worker imports only numpy, Pillow and simplejpeg, reads its images
from the tar itself, and returns a piece's pixels as one uint8 array (48 KB for 16 images of the
tiny model, 2.4 MB at 224 px); the batch is normalised once, in torch. Where no interpreter can
be started, threads decode, with a warning; a worker that dies fails its shard, naming the tar,
and the next shard gets new workers. Each image is decoded on its own: the worker count
changes no value, and an image that cannot be decoded fails alone (its record gets the error,
the batch goes on without it).
"""

from __future__ import annotations

import io
import logging
import os
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import islice
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from airflow_curator.core.annotate.decode import Batch, short_error
from airflow_curator.core.annotate.jpeg import read_jpeg
from airflow_curator.core.wds.tarstream import Member
from airflow_curator.core.workerpool import InterpreterPool

if TYPE_CHECKING:
    import numpy as np
    import torch
    from numpy.typing import NDArray
    from PIL import Image

try:
    import simplejpeg  # type: ignore[import-untyped]
except ImportError:  # not installed (it is in the runtime extra): Pillow decodes every image
    simplejpeg = None

logger = logging.getLogger(__name__)

# JPEGs are decoded at >= this many times the size the transform resizes to. At 1 the decode is the
# cheapest (1/8 of 512x384 for the 32 px test model) and the pixels differ from open_clip's by
# ~0.5 of an 8-bit level on average; 2 halves that for ~20% more decoding time. A reduction that
# leaves less to resize costs more: timm's tiny ViT (resize to 168, then 1/2 of 512x384) differs
# by ~1.6 levels, its embeddings still at cosine >= 0.9998.
DRAFT_MARGIN = 1
PIECE = 16  # images per worker task: small enough to keep every worker busy to a shard's end
LOOKAHEAD = 2  # batches queued for the workers while the model runs on the current one


class Transform(Protocol):
    """torchvision's ``Compose`` as open_clip and timm build an eval transform: resize and crop
    steps on a PIL image, then ``ToTensor`` and ``Normalize``."""

    transforms: Sequence[Callable[[Image.Image], object]]


@runtime_checkable
class _Normalize(Protocol):
    """torchvision's ``Normalize``, as far as the decoder reads it."""

    mean: Sequence[float]
    std: Sequence[float]

    def __call__(self, image: Image.Image, /) -> object: ...


# a worker's piece of a batch: the ids decoded, their pixels (N x H x W x 3), the others' errors
Piece = tuple[list[str], "NDArray[np.uint8] | None", dict[str, str]]


class Pixels:
    """JPEG (PNG, WebP) bytes to the model's pixels: a draft decode, EXIF orientation, the
    transform's resize and crop; one instance serves every decoding worker."""

    def __init__(
        self, steps: list[Callable[[Image.Image], object]], draft: int, size: tuple[int, int]
    ):
        self.steps = steps
        self.draft = draft
        self.size = size

    def __call__(self, data: bytes) -> NDArray[np.uint8]:
        """One image as H x W x 3 uint8, after the transform's resize and crop."""
        import numpy as np
        from PIL import Image, ImageOps

        image = self._turbo(data)
        if image is None:
            image = Image.open(io.BytesIO(data))
            image.draft(image.mode, (self.draft, self.draft))  # JPEG only: DCT-domain scaling
            if image.format != "JPEG" or "exif" in image.info or "xmp" in image.info:
                ImageOps.exif_transpose(image, in_place=True)  # as DALI's decoder does
            if image.mode != "RGB":
                image = image.convert("RGB")
        for step in self.steps:
            resized = step(image)
            if not isinstance(resized, Image.Image):
                raise ValueError(f"preprocessing step {step} gave {type(resized).__name__}")
            image = resized
        out = np.asarray(image, dtype=np.uint8)
        if out.shape != (*self.size, 3):
            raise ValueError(f"preprocessing gave {out.shape[:2]}, not {self.size}")
        return out

    def _turbo(self, data: bytes) -> Image.Image | None:
        """A YCbCr or grey JPEG without EXIF or XMP (nothing to orient) through simplejpeg,
        at the scale Pillow's ``draft`` picks: the same pixels as Pillow's decode (the same
        libjpeg-turbo calls, ``tests/core/annotate/test_cpu_decoder.py``) for ~30% less CPU,
        without Pillow's header parsing in Python. None: Pillow decodes it (any other image,
        or one libjpeg warns about, which simplejpeg refuses and Pillow decodes)."""
        if simplejpeg is None or data[:3] != b"\xff\xd8\xff" or read_jpeg(data, True).metadata:
            return None
        from PIL import Image

        try:
            height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
            if colorspace not in ("YCbCr", "Gray"):
                return None
            ratio = min(width // self.draft, height // self.draft)
            scale = next((s for s in (8, 4, 2) if ratio >= s), 1)  # JpegImagePlugin.draft's
            pixels = simplejpeg.decode_jpeg(
                data,
                "RGB",
                min_height=-(-height // scale),
                min_width=-(-width // scale),
                min_factor=scale,
            )
        except ValueError:
            return None
        return Image.fromarray(pixels)


def decode_piece(pixels: Pixels, tar: str, items: list[tuple[str, int, int]]) -> Piece:
    """Decode the images at (id, offset, size) of ``tar``: what one worker task does."""
    import numpy as np

    ids: list[str] = []
    images: list[NDArray[np.uint8]] = []
    errors: dict[str, str] = {}
    with open(tar, "rb", buffering=0) as f:
        for rid, offset, size in items:
            data = os.pread(f.fileno(), size, offset)
            try:
                images.append(pixels(data))
                ids.append(rid)
            except MemoryError:
                raise
            except Exception as e:  # Pillow raises OSError, ValueError, SyntaxError, ...
                errors[rid] = f"image cannot be decoded: {short_error(e)}"
    return ids, np.stack(images) if images else None, errors


def warm_up() -> None:
    """A decoding worker's first task: the imports its decoding needs, before the first shard."""
    import numpy  # noqa: F401
    from PIL import Image, ImageOps, JpegImagePlugin  # noqa: F401


class CpuDecoder:
    """Decodes records of a local tar into normalised image batches, as the model's
    ``transform`` (open_clip's or timm's eval preprocessing: resize, crop, to tensor,
    normalise) would, on ``workers`` decoding processes."""

    def __init__(
        self, transform: Transform, size: tuple[int, int], workers: int, batch_size: int
    ) -> None:
        import torch

        *geometry, to_tensor, normalize = transform.transforms
        if (
            not isinstance(normalize, _Normalize)
            or type(normalize).__name__ != "Normalize"
            or "ToTensor" not in type(to_tensor).__name__
        ):
            raise ValueError(f"unexpected preprocessing: {transform}")
        self.geometry = geometry
        self.steps: list[Callable[[Image.Image], object]] = [
            _direct(step) or step for step in geometry
        ]
        self.mean = torch.as_tensor(normalize.mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.as_tensor(normalize.std, dtype=torch.float32).view(-1, 1, 1)
        self.size = size
        self.draft = DRAFT_MARGIN * _resized_side(geometry, size)
        self.pixels = Pixels(self.steps, self.draft, size)
        self.workers = workers
        self.batch_size = batch_size
        self._pool: Executor | None = None

    def start(self) -> None:
        """Start the decoding processes (once; they serve every shard after), or threads where
        no interpreter starts. Their imports run while the caller goes on."""
        if self._pool is not None:
            return
        pool: Executor
        try:
            pool = InterpreterPool(self.workers, "decode")
            for _ in range(self.workers):  # one each: a worker with a task in flight gets no other
                pool.submit(warm_up)
        except OSError as e:
            logger.warning("decoding processes cannot start (%s): decoding on threads", e)
            pool = ThreadPoolExecutor(self.workers, thread_name_prefix="decode")
        self._pool = pool
        self._finalizer = weakref.finalize(self, pool.shutdown, wait=False, cancel_futures=True)

    def close(self) -> None:
        if self._pool is not None:
            self._finalizer.detach()  # not kept, with its pool, until the decoder is collected
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def tensor(self, images: NDArray[np.uint8] | list[NDArray[np.uint8]]) -> torch.Tensor:
        """N x 3 x H x W float32 from N x H x W x 3 uint8 (or a list of H x W x 3): torchvision's
        ``ToTensor`` and ``Normalize``, op for op, once per batch."""
        import numpy as np
        import torch

        x = torch.from_numpy(np.stack(images) if isinstance(images, list) else images)
        x = x.permute(0, 3, 1, 2).contiguous()
        return x.float().div_(255).sub_(self.mean).div_(self.std)

    def decode(self, tar: str, items: Iterable[tuple[str, Member]]) -> Iterator[Batch]:
        """Batches of ``batch_size`` consecutive ``items`` (id, image member of ``tar``), less
        the images that fail; the same batches whatever the worker count or timing. ``items``
        is consumed a few batches ahead of the batch being yielded, in the calling thread."""
        import numpy as np

        self.start()
        pool = self._pool
        assert pool is not None
        pending = iter(items)
        queued: deque[list[Future[Piece]]] = deque()

        def submit() -> None:
            chunk = [(rid, m.data_offset, m.size) for rid, m in islice(pending, self.batch_size)]
            if chunk:
                queued.append(
                    [
                        pool.submit(decode_piece, self.pixels, tar, chunk[j : j + PIECE])
                        for j in range(0, len(chunk), PIECE)
                    ]
                )

        try:
            for _ in range(LOOKAHEAD + 1):
                submit()
            while queued:
                futures = queued.popleft()
                submit()
                ids: list[str] = []
                arrays: list[NDArray[np.uint8]] = []
                errors: dict[str, str] = {}
                for fut in futures:
                    p_ids, p_images, p_errors = fut.result()
                    ids += p_ids
                    if p_images is not None:
                        arrays.append(p_images)
                    errors.update(p_errors)
                images = self.tensor(np.concatenate(arrays)) if arrays else None
                yield Batch(ids, images, errors)
        except BrokenProcessPool as e:  # a worker died (a crash in a decoder): the next shard
            self.close()  # gets new ones
            raise BrokenProcessPool(f"decoding {tar}: {e}") from e
        finally:
            for futures in queued:  # a failed shard or a closed generator: stop early
                for fut in futures:
                    fut.cancel()


class _Convert:
    """open_clip's ``MaybeConvertMode``."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, image: Image.Image) -> Image.Image:
        return image.convert(self.mode)


class _Resize:
    """torchvision's ``F.resize`` on a PIL image (``size``: [shorter side] or [h, w])."""

    def __init__(self, size: list[int], method: int) -> None:
        self.size = size
        self.method = method

    def __call__(self, image: Image.Image) -> Image.Image:
        w, h = image.size
        if len(self.size) == 2:
            new_h, new_w = self.size
        elif w <= h:
            new_w, new_h = self.size[0], int(self.size[0] * h / w)
        else:
            new_w, new_h = int(self.size[0] * w / h), self.size[0]
        return image if (new_w, new_h) == (w, h) else image.resize((new_w, new_h), self.method)


class _CenterCrop:
    """torchvision's ``F.center_crop`` on a PIL image; a crop larger than the image pads it,
    torchvision's own way."""

    def __init__(self, height: int, width: int) -> None:
        self.height = height
        self.width = width

    def __call__(self, image: Image.Image) -> Image.Image:
        w, h = image.size
        if self.width > w or self.height > h:
            from torchvision.transforms import functional  # type: ignore[import-untyped]

            padded: Image.Image = functional.center_crop(image, [self.height, self.width])
            return padded
        top, left = round((h - self.height) / 2.0), round((w - self.width) / 2.0)
        return image.crop((left, top, left + self.width, top + self.height))


def _direct(step: object) -> Callable[[Image.Image], Image.Image] | None:
    """``step`` as Pillow calls, the same pixels without torchvision's per-call checks (a
    fifth of a small draft decode's cost), for the eval steps open_clip and timm build:
    torchvision's ``Resize`` (no ``max_size``) and ``CenterCrop``, open_clip's
    ``MaybeConvertMode``. None for any other step: it runs as it is."""
    from PIL import Image

    kind = f"{type(step).__module__.split('.')[0]}.{type(step).__name__}"
    tv: Any = step  # torchvision ships no types
    mode = getattr(step, "mode", None)
    if kind == "open_clip.MaybeConvertMode" and isinstance(mode, str):
        return _Convert(mode)
    if kind == "torchvision.Resize" and tv.max_size is None:
        size: list[int] = [tv.size] if isinstance(tv.size, int) else list(tv.size)
        method = {
            "nearest": Image.Resampling.NEAREST,
            "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC,
            "lanczos": Image.Resampling.LANCZOS,
        }.get(str(getattr(tv.interpolation, "value", "")))
        if method is None or len(size) not in (1, 2):
            return None
        return _Resize(size, int(method))
    if kind == "torchvision.CenterCrop":
        crop_h, crop_w = tv.size
        return _CenterCrop(int(crop_h), int(crop_w))
    return None


def _resized_side(geometry: Sequence[object], size: tuple[int, int]) -> int:
    """The longest side any resize or crop step of ``geometry`` asks for, at least the model's
    input: a draft decode that keeps it leaves those steps their full input."""
    sides = list(size)
    for step in geometry:
        target = getattr(step, "size", None)
        sides += [target] if isinstance(target, int) else list(target or ())
    return max(int(s) for s in sides)
