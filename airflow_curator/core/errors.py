"""Errors that name the shard and the reason, so a failed task says what to fix."""

from __future__ import annotations


class CuratorError(Exception):
    """Base error; the runtime CLI prints it as one line and exits non-zero."""


class ShardError(CuratorError):
    """Something is wrong with one shard (its tar, Parquet or index)."""

    def __init__(self, shard: str, reason: str) -> None:
        self.shard = shard
        self.reason = reason
        super().__init__(f"shard {shard}: {reason}")

    def __reduce__(self):  # picklable: errors cross process pools
        return (type(self), (self.shard, self.reason))


class TarFormatError(CuratorError):
    """The bytes are not a readable tar archive at some offset."""


def preview(ids, limit: int = 5) -> str:
    """First few ids of a set/list, for error messages."""
    items = sorted(ids)[:limit]
    more = len(ids) - len(items)
    text = ", ".join(str(i) for i in items)
    return f"{text} (+{more} more)" if more > 0 else text
