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

Decoding, resizing and reading release the GIL, so ``threads`` workers run beside the model.
Each image is decoded on its own: the thread count changes no value, and an image that cannot
be decoded fails alone (its record gets the error, the batch goes on without it).
"""

from __future__ import annotations

import io
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from airflow_curator.core.annotate.decode import Batch, short_error
from airflow_curator.core.wds.tarstream import Member

if TYPE_CHECKING:
    import numpy as np
    import torch
    from numpy.typing import NDArray
    from PIL import Image

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


# a worker's piece of a batch: the ids decoded, their pixels, and the errors of the others
Piece = tuple[list[str], list["NDArray[np.uint8]"], dict[str, str]]


class CpuDecoder:
    """Decodes records of a local tar into normalised image batches, as the model's
    ``transform`` (open_clip's or timm's eval preprocessing: resize, crop, to tensor,
    normalise) would."""

    def __init__(
        self, transform: Transform, size: tuple[int, int], threads: int, batch_size: int
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
        self.threads = threads
        self.batch_size = batch_size

    def pixels(self, data: bytes) -> NDArray[np.uint8]:
        """One image as H x W x 3 uint8, after the transform's resize and crop."""
        import numpy as np
        from PIL import Image, ImageOps

        image: Image.Image = Image.open(io.BytesIO(data))
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

    def tensor(self, images: list[NDArray[np.uint8]]) -> torch.Tensor:
        """N x 3 x H x W float32: torchvision's ``ToTensor`` and ``Normalize``, op for op."""
        import numpy as np
        import torch

        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
        return x.float().div_(255).sub_(self.mean).div_(self.std)

    def _piece(self, fd: int, items: list[tuple[str, Member]]) -> Piece:
        ids: list[str] = []
        images: list[NDArray[np.uint8]] = []
        errors: dict[str, str] = {}
        for rid, member in items:
            data = os.pread(fd, member.size, member.data_offset)
            try:
                images.append(self.pixels(data))
                ids.append(rid)
            except MemoryError:
                raise
            except Exception as e:  # Pillow raises OSError, ValueError, SyntaxError, ...
                errors[rid] = f"image cannot be decoded: {short_error(e)}"
        return ids, images, errors

    def decode(self, tar: str, items: Iterable[tuple[str, Member]]) -> Iterator[Batch]:
        """Batches of ``batch_size`` consecutive ``items`` (id, image member of ``tar``), less
        the images that fail; the same batches whatever the thread count or timing. ``items``
        is consumed a few batches ahead of the batch being yielded, in the calling thread."""
        pending = iter(items)
        with (
            open(tar, "rb", buffering=0) as f,
            ThreadPoolExecutor(self.threads, thread_name_prefix="decode") as pool,
        ):
            queued: deque[list[Future[Piece]]] = deque()

            def submit() -> None:
                chunk = list(islice(pending, self.batch_size))
                if chunk:
                    queued.append(
                        [
                            pool.submit(self._piece, f.fileno(), chunk[j : j + PIECE])
                            for j in range(0, len(chunk), PIECE)
                        ]
                    )

            for _ in range(LOOKAHEAD + 1):
                submit()
            try:
                while queued:
                    futures = queued.popleft()
                    submit()
                    ids, images, errors = [], [], {}
                    for fut in futures:
                        p_ids, p_images, p_errors = fut.result()
                        ids += p_ids
                        images += p_images
                        errors.update(p_errors)
                    yield Batch(ids, self.tensor(images) if images else None, errors)
            finally:
                for futures in queued:  # a failed shard or a closed generator: stop early
                    for fut in futures:
                        fut.cancel()


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
        return lambda image: image.convert(mode)
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

        def resize(image: Image.Image) -> Image.Image:  # torchvision's F.resize on PIL
            w, h = image.size
            if len(size) == 2:
                new_h, new_w = size
            elif w <= h:
                new_w, new_h = size[0], int(size[0] * h / w)
            else:
                new_w, new_h = int(size[0] * w / h), size[0]
            return image if (new_w, new_h) == (w, h) else image.resize((new_w, new_h), method)

        return resize
    if kind == "torchvision.CenterCrop":
        crop_h, crop_w = tv.size

        def center_crop(image: Image.Image) -> Image.Image:  # torchvision's F.center_crop
            w, h = image.size
            if crop_w > w or crop_h > h:
                padded: Image.Image = tv(image)  # padding: torchvision's own way
                return padded
            top, left = round((h - crop_h) / 2.0), round((w - crop_w) / 2.0)
            return image.crop((left, top, left + crop_w, top + crop_h))

        return center_crop
    return None


def _resized_side(geometry: Sequence[object], size: tuple[int, int]) -> int:
    """The longest side any resize or crop step of ``geometry`` asks for, at least the model's
    input: a draft decode that keeps it leaves those steps their full input."""
    sides = list(size)
    for step in geometry:
        target = getattr(step, "size", None)
        sides += [target] if isinstance(target, int) else list(target or ())
    return max(int(s) for s in sides)
