"""Parallel workers for shard work: forked processes locally (CPU-bound parsing, hashing and
copying), threads for object stores (network latency).

Forked workers die with the process that forked them (Linux ``PR_SET_PDEATHSIG``): a step that
is killed, say by a task timeout, leaves no orphan still writing. What existed before the fork
is frozen out of the garbage collector meanwhile, so the workers' collections do not touch, and
copy, every page of the parent's objects (the ``gc`` documentation's advice for forking).
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import signal
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor

PR_SET_PDEATHSIG = 1


def can_fork() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


def _die_with_parent(parent: int) -> None:
    """In a new worker: ask the kernel for SIGKILL when the parent goes away."""
    import ctypes  # here, in the workers: not on the parent's serial start

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


@contextlib.contextmanager
def worker_pool(n: int, *, processes: bool) -> Iterator[Executor]:
    """``n`` forked worker processes when ``processes`` (and the platform forks), else threads."""
    if not (processes and can_fork()):
        with ThreadPoolExecutor(n) as threads:
            yield threads
        return
    gc.freeze()
    try:
        with ProcessPoolExecutor(
            n,
            mp_context=multiprocessing.get_context("fork"),
            initializer=_die_with_parent,
            initargs=(os.getpid(),),
        ) as pool:
            yield pool
    finally:
        gc.unfreeze()
