"""Read a shard back through a DALI CPU pipeline that uses its ``.idx`` (index/reshard tests)."""

from __future__ import annotations

import pytest


def dali_read(tar: str, idx: str, exts: list[str]) -> list[tuple[bytes, ...]]:
    """Every sample of ``tar``: one bytes object per extension, in index order."""
    pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def pipe():
        return tuple(
            fn.readers.webdataset(
                paths=[tar], index_paths=[idx], ext=exts, missing_component_behavior="error"
            )
        )

    p = pipe()
    p.build()
    with open(idx) as f:
        n = int(f.readline().split()[1])
    return [tuple(bytes(o.as_array()[0]) for o in p.run()) for _ in range(n)]
