"""Tiny tars in each format, for the reader and index tests."""

from __future__ import annotations

import io
import tarfile

from airflow_curator.testing.dataset import TAR_FORMATS


def make_tar(members: list[tuple[str, bytes]], fmt: str = "gnu", mtime: float = 0) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=TAR_FORMATS[fmt]) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = mtime
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def record_members(
    n: int, prefix: str = "", exts=("jpg", "txt", "json")
) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        key = f"{prefix}{i:09d}"
        for ext in exts:
            out.append((f"{key}.{ext}", f"{ext}-{i}-".encode() * (i * 37 % 200 + 1)))
    return out
