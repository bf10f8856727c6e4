"""The error contract: one exception type per exit code of DESIGN.md's "Errors and exit codes".

The CLI exits with the code of the type it catches and the Python API raises the same types, so
a notebook, a shell and Airflow read one failure the same way:

- ``DataError`` (exit 1): the data is at fault, fail at once (``ShardError`` names the shard);
- ``UsageError`` (exit 2): the request is wrong (a bad option, a missing input folder, an
  unknown column); a ``ValueError``, as cosmos's ``CosmosValueError`` is;
- ``TransientError`` (exit 75, ``EX_TEMPFAIL``): storage or network unavailable, retried;
- anything else is a bug: the CLI prints its traceback and exits ``BUG_EXIT``, retried.
"""

from __future__ import annotations

from collections.abc import Collection

DATA_EXIT = 1
USAGE_EXIT = 2
TRANSIENT_EXIT = 75  # sysexits.h EX_TEMPFAIL
BUG_EXIT = 70  # sysexits.h EX_SOFTWARE: neither 1 nor 2, so Airflow retries it


class CuratorError(Exception):
    """Base of the contract's errors; ``exit_code`` is what the CLI exits with."""

    exit_code = DATA_EXIT


class DataError(CuratorError):
    """The data is at fault: a truncated tar, ids that differ between tar, Parquet and
    ``.json``, bytes that are not Parquet. Retrying cannot help."""

    exit_code = DATA_EXIT


class ShardError(DataError):
    """Something is wrong with one shard (its tar, Parquet or index)."""

    def __init__(self, shard: str, reason: str) -> None:
        self.shard = shard
        self.reason = reason
        super().__init__(f"shard {shard}: {reason}")

    def __reduce__(self) -> tuple[type[ShardError], tuple[str, str]]:  # crosses process pools
        return (type(self), (self.shard, self.reason))


class TarFormatError(DataError):
    """The bytes are not a readable tar archive at some offset."""


class UsageError(CuratorError, ValueError):
    """The request is wrong: a bad option, a missing input folder, an unknown column, an output
    inside its input, weights that do not match their pin. Retrying cannot help."""

    exit_code = USAGE_EXIT


class TransientError(CuratorError):
    """Storage or network unavailable, throttled or timed out: retrying may help."""

    exit_code = TRANSIENT_EXIT

    def __init__(self, url: str, reason: str, action: str = "reading") -> None:
        self.url, self.reason, self.action = url, reason, action
        super().__init__(f"storage unavailable {action} {url}: {reason} (will retry)")

    def __reduce__(self) -> tuple[type[TransientError], tuple[str, str, str]]:
        return (type(self), (self.url, self.reason, self.action))


def preview(ids: Collection[str], limit: int = 5) -> str:
    """First few ids of a set/list, for error messages."""
    items = sorted(ids)[:limit]
    more = len(ids) - len(items)
    text = ", ".join(str(i) for i in items)
    return f"{text} (+{more} more)" if more > 0 else text
