"""Objects loaded once per worker process (models, heads, annotators), NeMo's
``load_object_on_worker``: every partition a process computes reuses them, whether the process is
the user's (Dask's default threaded scheduler) or a ``dask.distributed`` worker."""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Hashable
from typing import Any

logger = logging.getLogger(__name__)

_lock = threading.RLock()  # a loader may look at what is loaded
_objects: dict[Hashable, Any] = {}
loads: collections.Counter[str] = collections.Counter()  # kind -> loads in this process


def on_worker(key: tuple[Hashable, ...], load: Callable[[], Any]) -> Any:
    """The object for ``key`` (``key[0]`` names its kind), loaded on first use in this
    process; threads asking at once wait for one load."""
    with _lock:
        if key not in _objects:
            _objects[key] = load()
            loads[str(key[0])] += 1
            logger.info("loaded %s on this worker", key[0])
        return _objects[key]


def loaded() -> list[Any]:
    """What this process has loaded so far."""
    with _lock:
        return list(_objects.values())


def load_counts() -> dict[str, int]:
    """How many objects of each kind this process loaded (for tests and logs)."""
    with _lock:
        return dict(loads)
