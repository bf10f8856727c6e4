"""A timm image model as the annotator's embedding model (``--model timm:NAME``).

NeMo Curator's ``TimmImageEmbedder`` backbone: any ``timm`` architecture name (NeMo's default is
``vit_large_patch14_clip_quickgelu_224.openai``, OpenAI's ViT-L/14 image tower, whose 768-d output
the LAION heads were trained on). It gives image embeddings only: no text tower, so no text
embeddings and no CLIP score. Weights go through the same ``weights.resolve`` (pin check, cache)
and ``read_state_dict`` as the CLIP models; the default is the model's timm hub checkpoint, which
has no published digest (its sha256 is logged, pin it with ``--weights-sha256``). timm's eval
preprocessing (resize the shorter side to ``size / crop_pct``, centre crop) is what the CPU decoder
runs (timm's own transform, ``image_transform``) and what DALI's resize and crop follow on a GPU.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from typing import TYPE_CHECKING, Any

from airflow_curator.core.annotate.threads import counted_flops
from airflow_curator.core.annotate.weights import (
    HUB_PREFIX,
    WeightsError,
    WeightsFile,
    read_state_dict,
)
from airflow_curator.core.errors import UsageError

if TYPE_CHECKING:
    from airflow_curator.core.annotate.cpu_decoder import Transform

logger = logging.getLogger(__name__)

PREFIX = "timm:"
HUB_FILE = "model.safetensors"  # what timm's hub repositories hold


def is_timm(model: str) -> bool:
    return model.startswith(PREFIX)


def check_name(name: str) -> str:
    """``name`` if timm knows it (with or without a pretrained tag)."""
    import timm

    if not timm.is_model(name):
        raise UsageError(f"--model {PREFIX}{name}: timm has no model {name!r}")
    return name


def default_weights(name: str) -> str:
    """The model's timm hub checkpoint, as an ``hf-hub:`` id."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    hub = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub:
        raise UsageError(
            f"--model {PREFIX}{name}: timm names no hub checkpoint for it; pass --weights "
            "PATH|URL|hf-hub:ORG/REPO[/FILE]"
        )
    return f"{HUB_PREFIX}{hub}/{HUB_FILE}"


def output_width(name: str) -> int | None:
    """The width of the model's output from its pretrained config, without building it."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    n = getattr(cfg, "num_classes", None) if cfg is not None else None
    return int(n) if n else None


class TimmModel:
    """A timm model in eval mode on one device, with open_clip-style preprocess settings: the
    ``ClipModel`` interface the annotator uses, without a text tower."""

    def __init__(
        self,
        name: str,
        weights: WeightsFile | None,
        device: str = "cpu",
        *,
        normalize: bool = True,
        autocast: bool = True,
    ) -> None:
        import timm
        import torch

        self.name = name
        self.weights = weights
        self.device = torch.device(device)
        self.normalize = normalize
        self.use_autocast = autocast
        model = timm.create_model(name, pretrained=False)
        if weights is not None:
            state = read_state_dict(weights.path, "weights")
            try:
                model.load_state_dict(state, strict=True)
            except RuntimeError as e:
                raise WeightsError(
                    f"weights {weights.uri} do not fit timm model {name}: {str(e)[:500]}"
                ) from None
        self.model = model.eval().to(self.device)
        self.data_config = timm.data.resolve_data_config({}, model=model)
        self.preprocess = preprocess_config(self.data_config, name)
        h, w = self.preprocess["size"]
        with torch.inference_mode():
            probe = self.model(torch.zeros(1, 3, h, w, device=self.device))
        self.embed_dim = int(probe.shape[-1])

    def tokenize(self, texts: list[str]) -> None:
        return None  # no text tower

    def autocast(self) -> Any:
        import torch

        if self.use_autocast and self.device.type == "cuda":
            return torch.autocast("cuda")
        return contextlib.nullcontext()

    def encode(self, images: Any, tokens: Any | None = None) -> tuple[Any, None]:
        """Float32 image embeddings of one batch (L2-normalised unless ``normalize`` is off)."""
        import torch
        import torch.nn.functional as F

        with torch.inference_mode(), self.autocast():
            out = self.model(images.to(self.device, non_blocking=True))
        out = out.float()
        return (F.normalize(out, dim=-1) if self.normalize else out), None

    @property
    def image_size(self) -> tuple[int, int]:
        return self.preprocess["size"]

    def image_transform(self) -> Transform:
        """timm's own eval preprocessing for this model (PIL in, tensor out): the CPU decoder
        runs its resize and crop, and the GPU path is checked against it."""
        import timm

        return timm.data.create_transform(**self.data_config)

    @functools.cached_property
    def flops_per_image(self) -> int:
        """FLOPs of one image through the model, as torch counts them on a sample; counted
        once per loaded model."""
        import torch

        images = torch.zeros(1, 3, *self.image_size, device=self.device)
        return counted_flops(lambda: self.model(images))


def preprocess_config(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    """timm's eval transform (``resolve_data_config``) as the decoder's settings."""
    _, h, w = cfg["input_size"]
    crop_pct = float(cfg.get("crop_pct") or 1.0)
    if cfg.get("crop_mode", "center") != "center" or h != w:
        raise UsageError(
            f"timm model {name}: only square centre-crop preprocessing is supported "
            f"(it has {cfg.get('crop_mode')!r}, {h}x{w})"
        )
    return {
        "size": (int(h), int(w)),
        "mean": tuple(cfg["mean"]),
        "std": tuple(cfg["std"]),
        "interpolation": cfg.get("interpolation", "bicubic"),
        "resize_mode": "shortest",
        "resize": math.floor(h / crop_pct),
    }
