"""``get_client``: NeMo Curator's one-line Dask cluster, here a ``dask.distributed`` LocalCluster.

Everything in the Python API also runs without one (Dask's default threaded scheduler); with a
client, partitions run on its workers, each of which loads a model once.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)


def get_client(
    cluster_type: str = "cpu",
    scheduler_address: str | None = None,
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    **cluster_kwargs: Any,
) -> Any:
    """A client of the scheduler at ``scheduler_address``, or of a new LocalCluster of worker
    processes on this machine (``n_workers``, default one per core). ``cluster_type`` is NeMo's
    ``cpu`` or ``gpu``: workers pick the GPU by themselves (``device="auto"``), so both start
    the same cluster."""
    from dask.distributed import Client, LocalCluster

    if cluster_type not in ("cpu", "gpu"):
        raise ValueError(f"cluster_type must be 'cpu' or 'gpu', not {cluster_type!r}")
    if scheduler_address:
        return Client(scheduler_address)
    cluster = LocalCluster(
        n_workers=n_workers,
        threads_per_worker=threads_per_worker,
        processes=True,
        **cluster_kwargs,
    )
    client = Client(cluster)
    logger.info("Dask cluster %s: dashboard %s", cluster, client.dashboard_link)
    return client
