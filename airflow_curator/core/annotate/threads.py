"""How many threads annotate gives torch and the image decoder, from facts that load cannot move.

The choice used to come from timing the model at start-up: on a busy machine the same model
could get a different torch thread count, and a torch thread count can change the last bit of a
float sum, so the same inputs gave different bytes. Now it follows only from the cores this
process may use (affinity and cgroup quota), the model's FLOPs per image (counted by torch, not
timed) and the batch size. The plan that the numbers depend on goes into each annotation
Parquet's metadata.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

logger = logging.getLogger(__name__)

# About what decoding and preprocessing one ~60 KB web JPEG costs a core, in float32 matmul
# FLOPs of the same core time (~1 ms at ~40 GFLOP/s). A model far cheaper than that leaves the
# cores to the decoder; one far dearer gets them all.
DECODE_FLOPS = 40e6
# Below this much work per thread and batch, an intra-op thread costs more than it brings.
MIN_FLOPS_PER_THREAD = 1e9
MAX_GPU_DECODE_THREADS = 8


def cpu_cores() -> int:
    """The cores this process may run on: its affinity mask, capped by a cgroup CPU quota
    (a pod's CPU limit), which ``os.cpu_count()`` ignores."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(cores, quota) if quota else cores)


def _cgroup_quota(root: str = "/sys/fs/cgroup") -> int | None:
    """``ceil(quota / period)`` of cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``; None if
    unlimited or unknown."""
    for path, period_path in (
        (f"{root}/cpu.max", None),
        (f"{root}/cpu/cpu.cfs_quota_us", f"{root}/cpu/cpu.cfs_period_us"),
    ):
        try:
            with open(path) as f:
                fields = f.read().split()
            if period_path:
                with open(period_path) as f:
                    fields.append(f.read().strip())
        except OSError:
            continue
        if len(fields) < 2 or fields[0] in ("max", "-1"):
            return None
        try:
            return max(1, math.ceil(int(fields[0]) / int(fields[1])))
        except (ValueError, ZeroDivisionError):
            return None
    return None


def counted_flops(run: Callable[[], object]) -> int:
    """The FLOPs torch counts while ``run`` runs once: a model's cost per image as a fact of
    the model, not a timing that load moves."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        run()
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class ThreadPlan:
    """Threads for one annotator. ``torch_threads`` (with device and batch) is what the numbers
    may depend on; ``decode_threads`` changes no value (each image is decoded on its own)."""

    device: str
    cores: int
    torch_threads: int
    decode_threads: int
    batch_size: int
    model_flops: int  # per image: image and text towers, counted once
    reason: str

    def metadata(self) -> dict[str, int | str]:
        """What goes into the annotation Parquet: the values' dependencies and their source."""
        out: dict[str, int | str] = asdict(self)
        del out["decode_threads"]
        return out


def plan_threads(
    device: str,
    cores: int,
    model_flops: float,
    batch_size: int,
    torch_threads: int | None = None,
    decode_threads: int | None = None,
) -> ThreadPlan:
    """Split ``cores`` between torch's intra-op threads and the decoder's threads.

    On the CPU both share the cores, in proportion to their work per image: the model's FLOPs
    against ``DECODE_FLOPS``, and no more torch threads than a batch has work for. The decoder
    gets the cores torch leaves plus one (its threads wait whenever the model is behind). On a
    GPU the model does not use CPU threads: torch keeps one per core, the decoder gets up to 8.
    An explicit count wins.
    """
    gpu = device.startswith("cuda")
    if gpu:
        n_torch, why = torch_threads or cores, "GPU: the model does not run on the CPU"
        n_decode = decode_threads or min(MAX_GPU_DECODE_THREADS, cores)
    else:
        share = model_flops / (model_flops + DECODE_FLOPS)
        by_share = round(cores * share)
        by_batch = int(batch_size * model_flops // MIN_FLOPS_PER_THREAD)
        n_torch = max(1, min(cores, by_share, by_batch))
        why = (
            f"model {model_flops / 1e6:.0f} MFLOPs/image vs decode ~{DECODE_FLOPS / 1e6:.0f}: "
            f"{share:.0%} of {cores} cores, {by_batch} threads' worth of work per batch"
        )
        if torch_threads:
            n_torch, why = torch_threads, "set by the caller"
        n_decode = decode_threads or max(1, cores - n_torch + 1)
    plan = ThreadPlan(device, cores, n_torch, n_decode, batch_size, int(model_flops), why)
    logger.info(
        "threads: torch %d, decode %d on %d cores (%s)", n_torch, n_decode, cores, plan.reason
    )
    return plan


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` torch intra-op threads, restored afterwards (callers of the Python API
    keep their own setting)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
