"""Tiny randomly initialised CLIP model and heads saved to files, for tests, demos and DAG tests.

They load through exactly the code real weights use (model-config JSON + ``--weights`` file +
head files, each pinned by the sha256 returned here), in well under a second on a CPU.
"""

from __future__ import annotations

import json
import logging
import os
from typing import TYPE_CHECKING, Any

from airflow_curator.core.annotate.weights import digest

if TYPE_CHECKING:
    from airflow_curator.core.annotate.annotator import Options

logger = logging.getLogger(__name__)


def tiny_config(embed_dim: int = 768, image_size: int = 32, width: int = 32) -> dict[str, Any]:
    """An open_clip model config: one-layer ViT and text transformer, real tokenizer."""
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {
            "image_size": image_size,
            "layers": 1,
            "width": width,
            "head_width": 16,
            "patch_size": max(4, image_size // 4),
        },
        "text_cfg": {
            "context_length": 32,
            "vocab_size": 49408,
            "width": width,
            "heads": 2,
            "layers": 1,
        },
    }


def write_tiny_models(
    folder: str,
    *,
    embed_dim: int = 768,
    image_size: int = 32,
    width: int = 32,
    seed: int = 0,
    heads: bool = True,
) -> dict[str, Any]:
    """Write ``tiny-clip.json``, ``tiny-clip.pt`` and (``heads``) ``tiny-aesthetic.pth`` and
    ``tiny-nsfw.pth`` into ``folder``. Returns ``model``, ``weights``, ``aesthetic_weights``,
    ``nsfw_weights`` (paths) and ``sha256`` (path -> digest). Same arguments, same bytes."""
    import open_clip
    import torch

    from airflow_curator.core.annotate.heads import save_head

    os.makedirs(folder, exist_ok=True)
    config = tiny_config(embed_dim, image_size, width)
    config_path = os.path.join(folder, "tiny-clip.json")
    with open(config_path, "w") as f:
        json.dump(config, f, indent=1, sort_keys=True)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**config)
    weights_path = os.path.join(folder, "tiny-clip.pt")
    torch.save(model.state_dict(), weights_path)
    out: dict[str, Any] = {"model": config_path, "weights": weights_path}
    if heads:
        out["aesthetic_weights"] = os.path.join(folder, "tiny-aesthetic.pth")
        out["nsfw_weights"] = os.path.join(folder, "tiny-nsfw.pth")
        save_head("aesthetic", out["aesthetic_weights"], embed_dim, seed)
        save_head("nsfw", out["nsfw_weights"], embed_dim, seed + 1)
    out["sha256"] = {p: digest(p) for k, p in out.items() if k != "model"}
    logger.info("tiny models in %s: embed_dim %d, image %d", folder, embed_dim, image_size)
    return out


def tiny_options(tiny: dict[str, Any], **overrides: Any) -> Options:
    """Annotate options for the models ``write_tiny_models`` wrote, on the CPU; ``overrides``
    replace any of them."""
    from airflow_curator.core.annotate.annotator import Options

    fields: dict[str, Any] = {
        "model": tiny["model"],
        "weights": tiny["weights"],
        "aesthetic_weights": tiny["aesthetic_weights"],
        "nsfw_weights": tiny["nsfw_weights"],
        "device": "cpu",
    }
    return Options(**{**fields, **overrides})


def write_tiny_timm(
    folder: str, *, name: str = "test_vit", seed: int = 0, heads: bool = True
) -> dict[str, Any]:
    """Write randomly initialised weights of timm's tiny test architecture ``name`` (and heads
    as wide as its output) into ``folder``. Returns ``model`` (the timm name), ``weights``,
    ``aesthetic_weights``, ``nsfw_weights``, ``embed_dim`` and ``sha256`` (path -> digest)."""
    import timm
    import torch

    from airflow_curator.core.annotate.heads import save_head

    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False).eval()
    weights_path = os.path.join(folder, f"tiny-{name}.pth")
    torch.save(model.state_dict(), weights_path)
    width = int(model.num_classes or model.num_features)
    out: dict[str, Any] = {"model": name, "weights": weights_path, "embed_dim": width}
    if heads:
        out["aesthetic_weights"] = os.path.join(folder, f"tiny-{name}-aesthetic.pth")
        out["nsfw_weights"] = os.path.join(folder, f"tiny-{name}-nsfw.pth")
        save_head("aesthetic", out["aesthetic_weights"], width, seed)
        save_head("nsfw", out["nsfw_weights"], width, seed + 1)
    paths = ("weights", "aesthetic_weights", "nsfw_weights")
    out["sha256"] = {out[k]: digest(out[k]) for k in paths if k in out}
    logger.info("tiny timm model %s in %s: %d-d output", name, folder, width)
    return out
