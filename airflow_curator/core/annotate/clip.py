"""The CLIP model: an open_clip architecture name or model-config JSON, plus checked weights.

Weights always go through ``weights.resolve`` (pin check) and ``weights.read_state_dict``, for
OpenAI's pinned checkpoints and for the tiny random test models alike.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_curator.core.annotate import timm_model
from airflow_curator.core.annotate.captions import CaptionTokenizer
from airflow_curator.core.annotate.threads import counted_flops
from airflow_curator.core.annotate.weights import (
    WeightsError,
    WeightsFile,
    openai_url,
    read_state_dict,
    resolve,
)
from airflow_curator.core.errors import UsageError
from airflow_curator.core.io import storage

if TYPE_CHECKING:
    from airflow_curator.core.annotate.cpu_decoder import Transform

logger = logging.getLogger(__name__)

RANDOM = "random"  # --weights random: untrained weights, for benchmarks only

# Architecture -> its pinned default checkpoint (OpenAI's, as NeMo Curator and LAION use) and
# whether that checkpoint needs QuickGELU.
DEFAULT_WEIGHTS: dict[str, tuple[str, bool]] = {
    "ViT-L-14": (openai_url("ViT-L-14.pt"), True),
    "ViT-B-32": (openai_url("ViT-B-32.pt"), True),
}
OPENAI_FILES = {os.path.basename(u) for u, _ in DEFAULT_WEIGHTS.values()}


@dataclass(frozen=True)
class ModelSpec:
    """What to build, before building it: the open_clip name and the config that defines it."""

    name: str
    label: str  # what the user passed, for messages
    config: dict[str, Any] | None = None  # from a JSON file; None for a built-in architecture
    preprocess: dict[str, Any] = field(default_factory=dict)
    family: str = "open_clip"  # or "timm" (timm_model: image embeddings only)

    @property
    def key(self) -> str:
        """Stable identity of the architecture, for the annotations' input fingerprint."""
        if self.family == "timm":
            return timm_model.PREFIX + self.name
        if self.config is None:
            return self.name
        text = json.dumps({"model": self.config, "pp": self.preprocess}, sort_keys=True)
        return "config:" + hashlib.sha256(text.encode()).hexdigest()


def model_spec(model: str) -> ModelSpec:
    """``ViT-L-14``, a JSON file/URL holding an open_clip model config (flat, or
    ``{"model_cfg": ..., "preprocess_cfg": ...}`` as in ``open_clip_config.json``), or
    ``timm:NAME`` for a timm image model."""
    if timm_model.is_timm(model):
        name = timm_model.check_name(model[len(timm_model.PREFIX) :])
        return ModelSpec(name, model, family="timm")
    if not model.endswith(".json"):
        import open_clip

        if model not in open_clip.list_models():
            raise UsageError(
                f"--model {model!r} is neither an open_clip architecture nor a .json model config"
            )
        return ModelSpec(model, model)
    try:
        data = json.loads(storage.read_bytes(model))
    except FileNotFoundError:
        raise UsageError(f"model config {model} does not exist") from None
    except ValueError as e:
        raise UsageError(f"model config {model} is not valid JSON: {e}") from None
    config = data.get("model_cfg", data) if isinstance(data, dict) else None
    if not isinstance(config, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= set(config):
        raise UsageError(f"model config {model} needs embed_dim, vision_cfg and text_cfg")
    spec = ModelSpec("", model, config, dict(data.get("preprocess_cfg") or {}))
    return ModelSpec("curator-" + spec.key[7:19], model, config, spec.preprocess)


def default_weights(spec: ModelSpec) -> str:
    if spec.family == "timm":
        return timm_model.default_weights(spec.name)
    if spec.name in DEFAULT_WEIGHTS:
        return DEFAULT_WEIGHTS[spec.name][0]
    raise UsageError(
        f"--model {spec.label}: no pinned default weights (pinned: {', '.join(DEFAULT_WEIGHTS)}); "
        "pass --weights PATH|URL|hf-hub:ORG/REPO[/FILE]"
    )


def resolve_weights(
    spec: ModelSpec, weights: str | None, sha256: str | None = None
) -> WeightsFile | None:
    """The checked weight file (None for ``random``)."""
    if weights == RANDOM:
        logger.warning("--weights random: the CLIP model is untrained (benchmarks only)")
        return None
    return resolve(weights or default_weights(spec), sha256)


def _register(spec: ModelSpec) -> None:
    """Make a JSON config known to open_clip under a name nobody else uses."""
    import open_clip

    if spec.config is None or spec.name in open_clip.list_models():
        return
    folder = tempfile.mkdtemp(prefix="curator-model-")
    path = os.path.join(folder, f"{spec.name}.json")
    with open(path, "w") as f:
        json.dump(spec.config, f)
    open_clip.add_model_config(path)


def load_model(
    spec: ModelSpec,
    weights: WeightsFile | None,
    device: str = "cpu",
    *,
    normalize: bool = True,
    autocast: bool = True,
) -> Any:
    """The spec's embedding model: a ``ClipModel``, or a ``TimmModel`` (``normalize`` and
    ``autocast`` apply to timm models; CLIP embeddings are always normalised for clip_score)."""
    if spec.family == "timm":
        return timm_model.TimmModel(
            spec.name, weights, device, normalize=normalize, autocast=autocast
        )
    return ClipModel(spec, weights, device)


class _RandomInitNotice(logging.Filter):
    """open_clip warns (on the root logger) that a model built without ``pretrained`` is
    initialized randomly; ours gets its checked weights right after, so the warning is false."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


@contextlib.contextmanager
def _weights_follow(weights: WeightsFile | None) -> Any:
    if weights is None:  # truly random (--weights random): let open_clip say so
        yield
        return
    notice = _RandomInitNotice()
    logging.getLogger().addFilter(notice)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(notice)


class ClipModel:
    """An open_clip model in eval mode on one device, with its tokenizer and preprocess config."""

    def __init__(self, spec: ModelSpec, weights: WeightsFile | None, device: str = "cpu") -> None:
        import open_clip
        import torch

        _register(spec)
        quick = spec.config is not None and bool(spec.config.get("quick_gelu"))
        if weights is not None and os.path.basename(weights.uri) in OPENAI_FILES:
            quick = True
        self.spec = spec
        self.weights = weights
        self.device = torch.device(device)
        with _weights_follow(weights):
            model = open_clip.create_model(
                spec.name,
                pretrained=None,
                force_quick_gelu=quick,
                force_preprocess_cfg=spec.preprocess or None,
            )
        if weights is not None:
            load_weights(model, weights)
        self.model = model.eval().to(self.device)
        self.tokenizer = open_clip.get_tokenizer(spec.name)
        self.captions = CaptionTokenizer(self.tokenizer)
        self.preprocess: dict[str, Any] = dict(open_clip.get_model_preprocess_cfg(model))
        with torch.inference_mode():  # the output width, whatever the tower layout
            probe = self.model.encode_text(self.tokenizer(["probe"]).to(self.device))
        self.embed_dim = int(probe.shape[-1])

    @property
    def image_size(self) -> tuple[int, int]:
        size = self.preprocess.get("size", 224)
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    def image_transform(self) -> Transform:
        """open_clip's own eval preprocessing for this model (PIL in, tensor out): the CPU
        decoder runs its resize and crop, and the GPU path is checked against it."""
        import open_clip

        pre = self.preprocess
        return open_clip.image_transform(
            pre["size"],
            is_train=False,
            mean=pre["mean"],
            std=pre["std"],
            interpolation=pre["interpolation"],
            resize_mode=pre["resize_mode"],
            fill_color=pre.get("fill_color", 0),
        )

    def autocast(self) -> Any:
        import contextlib

        import torch

        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @functools.cached_property
    def flops_per_image(self) -> int:
        """FLOPs of one image and one caption through both towers, as torch counts them on a
        sample (a fact about the model, unlike a timing); counted once per loaded model."""
        import torch

        images = torch.zeros(1, 3, *self.image_size, device=self.device)
        tokens = self.tokenize(["a photo"]).to(self.device)
        return counted_flops(
            lambda: (self.model.encode_image(images), self.model.encode_text(tokens))
        )

    def tokenize(self, texts: list[str]) -> Any:
        return self.captions(texts)

    def encode(self, images: Any, tokens: Any | None) -> tuple[Any, Any | None]:
        """L2-normalised float32 image (and text) embeddings of one batch."""
        import torch
        import torch.nn.functional as F

        with torch.inference_mode(), self.autocast():
            img = self.model.encode_image(images.to(self.device, non_blocking=True))
            txt = None if tokens is None else self.model.encode_text(tokens.to(self.device))
        img = F.normalize(img.float(), dim=-1)
        return img, (None if txt is None else F.normalize(txt.float(), dim=-1))


def load_weights(model: Any, weights: WeightsFile) -> None:
    """Load a checkpoint into an open_clip model the way ``open_clip.load_checkpoint`` does,
    from our already checked file, strictly: missing or extra tensors are an error."""
    from open_clip.factory import convert_state_dict, resize_pos_embed, resize_text_pos_embed
    from open_clip.model import convert_to_custom_text_state_dict

    state = read_state_dict(weights.path, "weights")
    for key in ("input_resolution", "context_length", "vocab_size"):  # OpenAI TorchScript extras
        state.pop(key, None)
    state = convert_state_dict(model, state)
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    for key in ("logit_scale", "logit_bias"):
        own = getattr(model, key, None)
        if key in state and own is not None and own.ndim != state[key].ndim:
            state[key] = state[key].reshape(own.shape)
    if "logit_bias" not in state and getattr(model, "logit_bias", None) is not None:
        state["logit_bias"] = model.logit_bias.detach().clone()
    resize_pos_embed(state, model)
    resize_text_pos_embed(state, model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise WeightsError(f"weights {weights.uri} do not fit the model: {str(e)[:500]}") from None
