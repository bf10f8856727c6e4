"""Score heads over CLIP image embeddings: LAION's aesthetic predictor and NSFW detector.

Both load their published checkpoint layouts as they are, and refuse a checkpoint whose input
width differs from the CLIP model's embedding width (a head trained on ViT-L/14's 768-d space
gives meaningless scores on any other space).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from airflow_curator.core.annotate.weights import (
    AESTHETIC_URL,
    NSFW_URL,
    WeightsFile,
    read_state_dict,
)
from airflow_curator.core.errors import UsageError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

# The aesthetic predictor's default file (pinned in weights.PINNED) and NeMo Curator's default NSFW
# detector file, the PyTorch state dict inside LAION's zip (no digest published: its sha256 is
# logged for the user to pin).
DEFAULTS: dict[str, str] = {"aesthetic": AESTHETIC_URL, "nsfw": NSFW_URL}


class HeadError(UsageError):
    """A head checkpoint does not fit the head or the CLIP model."""


def aesthetic_module(in_dim: int = 768) -> torch.nn.Module:
    """LAION improved aesthetic predictor: ``layers`` = 768->1024->128->64->16->1 with the
    published dropouts (no activations), on L2-normalised embeddings, scores on a 0-10 scale."""
    from torch import nn

    class AestheticPredictor(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.Sequential(
                nn.Linear(in_dim, 1024),
                nn.Dropout(0.2),
                nn.Linear(1024, 128),
                nn.Dropout(0.2),
                nn.Linear(128, 64),
                nn.Dropout(0.1),
                nn.Linear(64, 16),
                nn.Linear(16, 1),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layers(x).squeeze(-1)

    return AestheticPredictor()


def nsfw_module(in_dim: int = 768) -> torch.nn.Module:
    """LAION CLIP-based NSFW detector (its Keras model as PyTorch, NeMo Curator's layout):
    normalisation, 768->64->512->256->1 with ReLUs, sigmoid: probability of NSFW."""
    import torch
    from torch import nn

    class Norm(nn.Module):
        mean: torch.Tensor
        variance: torch.Tensor

        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.zeros(in_dim))
            self.register_buffer("variance", torch.ones(in_dim))

    class NsfwDetector(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = Norm()
            self.linear_1 = nn.Linear(in_dim, 64)
            self.linear_2 = nn.Linear(64, 512)
            self.linear_3 = nn.Linear(512, 256)
            self.linear_4 = nn.Linear(256, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = (x - self.norm.mean) / self.norm.variance.sqrt()
            x = torch.relu(self.linear_1(x))
            x = torch.relu(self.linear_2(x))
            x = torch.relu(self.linear_3(x))
            return torch.sigmoid(self.linear_4(x)).squeeze(-1)

    return NsfwDetector()


BUILDERS = {"aesthetic": aesthetic_module, "nsfw": nsfw_module}
WIDTH_KEYS = {"aesthetic": "layers.0.weight", "nsfw": "linear_1.weight"}


def input_width(kind: str, state: dict[str, Any], source: str) -> int:
    key = WIDTH_KEYS[kind]
    if key not in state:
        raise HeadError(
            f"{kind} head {source}: no {key!r} tensor; expected the published layout "
            f"(keys: {', '.join(sorted(state)[:6])})"
        )
    return int(state[key].shape[1])


class Head:
    """One loaded head on a device, and the sha256 of the file it came from."""

    def __init__(
        self, kind: str, weights: WeightsFile, embed_dim: int, device: str = "cpu"
    ) -> None:
        if kind not in BUILDERS:
            raise ValueError(f"unknown head {kind!r}; heads: {', '.join(BUILDERS)}")
        state = read_state_dict(weights.path, f"{kind} head")
        width = input_width(kind, state, weights.uri)
        if width != embed_dim:
            raise HeadError(
                f"{kind} head {weights.uri} takes {width}-wide embeddings but the CLIP model "
                f"gives {embed_dim}-wide ones: use the CLIP model the head was trained on"
            )
        module = BUILDERS[kind](width)
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise HeadError(f"{kind} head {weights.uri} does not fit: {str(e)[:400]}") from None
        self.kind = kind
        self.weights = weights
        self.module = module.eval().to(device)

    def __call__(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Scores (float32, one per row) of L2-normalised float32 embeddings."""
        import torch

        with torch.inference_mode():
            scores: torch.Tensor = self.module(embeddings.float())
            return scores.float()


def save_head(kind: str, path: str, in_dim: int = 768, seed: int = 0) -> None:
    """A randomly initialised head in the published layout (tests, demos, benchmarks)."""
    import torch

    torch.manual_seed(seed)
    state = BUILDERS[kind](in_dim).state_dict()  # tensors shared with the module's
    if kind == "nsfw":
        state["norm.mean"].normal_(0, 0.01)
        state["norm.variance"].uniform_(0.5, 1.5)
    torch.save(state, path)
