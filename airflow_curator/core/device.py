"""Which torch device a step computes on: ``auto`` picks the GPU when one is visible."""

from __future__ import annotations

from airflow_curator.core.errors import UsageError


def pick_device(device: str = "auto") -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``; a GPU asked for and not visible is refused."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device != "cpu" and device != "cuda" and not device.startswith("cuda:"):
        raise UsageError(f"--device must be auto, cpu or cuda[:N], not {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA GPU is visible to this process")
    return device
