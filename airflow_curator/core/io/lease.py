"""A lease on an output folder, so that one run at a time writes its shards.

Two runs writing one output used to race: one run's sweep of temporaries deleted the other's
file in flight (``[Errno 2] No such file or directory: 'out/.00001.tar.tmp-...'``). Now the
steps that write the output shards (plan-reshard, reshard, commit, ``to-webdataset``, the Python
API's ``to_webdataset``) hold ``<output>/_work/lease.json``, a small JSON document: the run that
holds it, the process that last renewed it (host, pid), since when the run holds it, and when
it expires.

**Who holds it** is a run id. The DAG passes ``<dag_id>/<run_id>`` (``--run-id``; inside any
Airflow task, ``AIRFLOW_CTX_DAG_ID``/``AIRFLOW_CTX_DAG_RUN_ID`` give the same by default): the
plan, the mapped reshard tasks and the commit of one DAG run, and a retry of any of them, share
it and are not each other's rivals; a second DAG run or a second ``to-webdataset`` is one. A
step given no run id (a shell) gets one of its own, for that process only.

**Rules.** Entering takes the lease when there is none (or it was released), when it is
expired, or when its holder was a process-only run whose process on this host is gone
(SIGKILLed: no wait); re-enters the run's own lease; and otherwise fails with ``LeaseHeld``
(exit 2) naming the holder, since when, and when it expires. While a step runs, a heartbeat
thread renews the lease every ``ttl / 4``, so three renewals in a row may fail before it
expires (``ttl``: ``CURATOR_LEASE_SECONDS``, default 120). The writers check it before each
output shard; a run that finds it taken over stops with ``LeaseLost`` (exit 2). A process-only
lease is released at the end of its step, failed or not (a rerun can start at once). A run's
lease is released when its last step (``commit``, ``to-webdataset``) succeeds; after a failure
it stays, for a retry of the same run to re-enter, and otherwise expires. Releasing removes
the document (if it is still the run's).

**Every change is a compare-and-swap**, so two writers never both believe they hold it:

- ``gs://``: the object is read with its generation (one request) and the new document uploaded
  with ``ifGenerationMatch`` that generation (0: only if there is none). A 412 means someone
  wrote in between: read and decide again (an upload whose first answer was lost and which
  gcsfs retried reads back its own document, and goes on); release deletes with the same
  precondition. (fake-gcs-server honours it on uploads, not on ``DELETE``: there a release
  racing a takeover could delete the new holder's lease; GCS does not.)
- local: read, decide and write (or unlink) happen under an exclusive ``flock`` of the lease
  file itself. ``O_EXCL`` creation alone cannot renew or steal, and a ``rename`` does not
  compare: a renewer could replace a lease stolen between its read and its rename. The lock
  dies with its process (a SIGKILL never leaves it locked), a lock held for seconds (a holder
  stopped mid-swap) is exit 75, not a hang, and the file locked is checked to be the one at
  the path.
- other fsspec filesystems: read, decide, write, unguarded (they offer no conditional write).

**Limits.** Expiry compares the reader's clock with the writer's (UTC): hosts must agree to
well under ``ttl``. A holder stalled for longer than ``ttl`` (stopped, cut off) can lose the
lease while it still writes; it finds out at its next renewal or shard and stops, but object
stores offer no fence for what it wrote meanwhile; the new holder's commit checks every shard
against its own markers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone

from airflow_curator.core.errors import TransientError, UsageError
from airflow_curator.core.io import storage
from airflow_curator.core.layout import lease_url

logger = logging.getLogger(__name__)

TTL_ENV = "CURATOR_LEASE_SECONDS"
DEFAULT_TTL = 120.0
BEATS = 4  # renewals per ttl
ATTEMPTS = 10  # compare-and-swap rounds before contention counts as transient
LOCK_WAIT = 10.0  # seconds a local swap waits for the lock
PROCESS = "process"  # a lease for one process's step, not for a run of several
RUN = "run"

REMOVE = b""  # what a decision returns to remove the document
Decide = Callable[[bytes | None], bytes | None]  # current document -> new one, REMOVE, None: keep


@dataclass(frozen=True)
class Holder:
    """What a lease document says."""

    run: str
    scope: str  # PROCESS or RUN
    host: str
    pid: int
    since: float
    renewed: float
    expires: float

    @classmethod
    def parse(cls, raw: bytes | None, url: str) -> Holder | None:
        if not raw:
            return None
        try:
            d = json.loads(raw)
            return cls(
                str(d["run"]), str(d["scope"]), str(d["host"]), int(d["pid"]),
                _time(d["since"]), _time(d["renewed"]), _time(d["expires"]),
            )  # fmt: skip
        except (ValueError, KeyError, TypeError) as e:  # a holder killed mid-write: none now
            logger.warning("lease %s is unreadable (%s): taken as free", url, e)
            return None

    def to_bytes(self) -> bytes:
        d = {
            "run": self.run, "scope": self.scope, "host": self.host, "pid": self.pid,
            "since": _stamp(self.since), "renewed": _stamp(self.renewed),
            "expires": _stamp(self.expires),
        }  # fmt: skip
        return json.dumps(d, indent=1).encode()

    def free(self, now: float) -> bool:
        """Nobody holds it: expired, or its process-only holder here is gone."""
        if now >= self.expires:
            return True
        gone = self.scope == PROCESS and self.host == socket.gethostname()
        return gone and self.pid != os.getpid() and not storage.pid_alive(self.pid)

    def state(self, now: float) -> str:
        if now >= self.expires:
            return f"expired at {_human(self.expires)}"
        return "its process is gone" if self.free(now) else f"expires at {_human(self.expires)}"

    def describe(self) -> str:
        return f"run {self.run} (pid {self.pid} on {self.host})"


def _stamp(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")


def _time(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def _human(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


class LeaseHeld(UsageError):
    """Another run writes this output now (exit 2: wait for it, or write elsewhere)."""

    def __init__(self, output: str, holder: Holder) -> None:
        self.output, self.holder = output, holder
        super().__init__(
            f"output {output} is being written by {holder.describe()} since "
            f"{_human(holder.since)}; its lease ({lease_url(output)}) expires at "
            f"{_human(holder.expires)} unless that run renews it: wait for it to finish, "
            f"or write elsewhere"
        )

    def __reduce__(self) -> tuple[type[LeaseHeld], tuple[str, Holder]]:  # crosses process pools
        return (type(self), (self.output, self.holder))


class LeaseLost(UsageError):
    """Another run took this run's lease over (it was not renewed in time): this run stops."""

    def __init__(self, output: str, run: str, holder: Holder | None) -> None:
        self.output, self.run, self.holder = output, run, holder
        who = f"{holder.describe()} since {_human(holder.since)}" if holder else "nobody"
        super().__init__(
            f"run {run} lost its lease on output {output} (now held by {who}): it was not "
            f"renewed in time, so this run stopped writing there"
        )

    def __reduce__(self) -> tuple[type[LeaseLost], tuple[str, str, Holder | None]]:
        return (type(self), (self.output, self.run, self.holder))


@dataclass(frozen=True)
class Run:
    """A run id, and whether it spans steps (``RUN``: named by the caller or by Airflow) or is
    this process's own (``PROCESS``)."""

    id: str
    scope: str

    @classmethod
    def resolve(cls, run_id: str | None) -> Run:
        if run_id:
            return cls(run_id, RUN)
        dag, run = os.environ.get("AIRFLOW_CTX_DAG_ID"), os.environ.get("AIRFLOW_CTX_DAG_RUN_ID")
        if dag and run:
            return cls(f"{dag}/{run}", RUN)
        return cls(f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}", PROCESS)


def default_ttl() -> float:
    return float(os.environ.get(TTL_ENV) or DEFAULT_TTL)


def swap(url: str, decide: Decide) -> bytes | None:
    """Compare-and-swap the document at ``url``: ``decide(current)`` gives the new document,
    ``REMOVE``, or None to keep the current one; returns the document in effect after (None:
    there is none). See the module for how."""
    if storage.is_local(url):
        return _swap_local(storage.local_path(url), decide)
    if storage.protocol(url) in ("gs", "gcs"):
        return _swap_gcs(url, decide)
    try:
        current: bytes | None = storage.read_bytes(url)
    except FileNotFoundError:
        current = None
    new = decide(current)
    if new is None:
        return current
    if new == REMOVE:
        storage.remove_file(url)
        return None
    storage.write_bytes(url, new)
    return new


def _swap_local(path: str, decide: Decide) -> bytes | None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _lock(fd, path)
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # removed or replaced while we waited: lock the one there now
                continue
            current = os.pread(fd, os.fstat(fd).st_size, 0) or None
            new = decide(current)
            if new is None and current is None:  # none: leave no empty file for a look
                new = REMOVE
            if new is None:
                return current
            if new == REMOVE:
                os.unlink(path)  # whoever waits on this file's lock finds it gone, and retries
                return None
            os.ftruncate(fd, 0)
            os.pwrite(fd, new, 0)
            os.fsync(fd)
            return new
        finally:
            os.close(fd)  # and with it the lock


def _lock(fd: int, path: str) -> None:
    """``flock`` it, waiting at most ``LOCK_WAIT``: a swap takes microseconds, so a lock held
    longer is a holder stopped or frozen mid-swap, which must not hang every other writer."""
    import fcntl

    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                reason = f"locked by another process for over {LOCK_WAIT:.0f} s (stopped?)"
                raise TransientError(path, reason, "locking") from None
            time.sleep(0.005)


def _swap_gcs(url: str, decide: Decide) -> bytes | None:
    from airflow_curator.core.io import gcs

    fs, path = storage.fs_and_path(url)
    for attempt in range(ATTEMPTS):
        with storage.reading(url):
            got = gcs.read_generation(fs, path)
        current, generation = got if got is not None else (None, 0)
        new = decide(current)
        if new is None:
            return current
        with storage.reading(url, "writing"):
            if new == REMOVE:
                if generation == 0 or gcs.remove_if_generation(fs, path, generation):
                    return None
            elif gcs.write_if_generation(fs, path, new, generation):
                return new
        time.sleep(random.uniform(0, 0.02 * 2**attempt))  # changed in between: again
    raise TransientError(url, f"changed by other writers {ATTEMPTS} times in a row", "writing")


class Lease:
    """One run's hold on an output folder (see the module): ``acquire``, ``renew`` (the
    heartbeat does), ``check`` before writing, ``release``."""

    def __init__(self, output: str, run: Run, ttl: float | None = None) -> None:
        self.output, self.run = output, run
        self.url = lease_url(output)
        self.ttl = ttl or default_ttl()
        self.period = self.ttl / BEATS
        self.pid, self.thread = os.getpid(), threading.get_ident()
        self.expires = 0.0  # as this process last saw it
        self.lost: LeaseLost | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _mine(self, now: float, since: float) -> bytes:
        """This run's document: renewed now, expiring a ``ttl`` on."""
        host, pid, until = socket.gethostname(), os.getpid(), now + self.ttl
        return Holder(self.run.id, self.run.scope, host, pid, since, now, until).to_bytes()

    def _renewed(self, current: Holder, now: float) -> bytes | None:
        """The run's own lease renewed, unless a sibling task did so under half a beat ago."""
        if not current.free(now) and now - current.renewed < self.period / 2:
            return None
        return self._mine(now, current.since)

    def _swap(self, decide: Callable[[Holder | None, float], bytes | None]) -> Holder | None:
        def on_bytes(raw: bytes | None) -> bytes | None:
            return decide(Holder.parse(raw, self.url), time.time())

        held = Holder.parse(swap(self.url, on_bytes), self.url)
        if held is not None and held.run == self.run.id:
            self.expires = held.expires
        return held

    def acquire(self) -> None:
        """Take or re-enter the lease; ``LeaseHeld`` when another run holds it."""

        def decide(current: Holder | None, now: float) -> bytes | None:
            if current is not None and current.run == self.run.id:
                return self._renewed(current, now)
            if current is None or current.free(now):
                if current is not None:
                    logger.info("taking over the lease on %s from %s: %s", self.output,
                                current.describe(), current.state(now))  # fmt: skip
                return self._mine(now, now)
            raise LeaseHeld(self.output, current)

        held = self._swap(decide)
        assert held is not None
        logger.info("run %s holds the lease on %s (since %s, renewed every %.0fs)", self.run.id,
                    self.output, _human(held.since), self.period)  # fmt: skip

    def renew(self) -> None:
        """Renew it; ``LeaseLost`` (and ``lost`` set) when another run has it now."""

        def decide(current: Holder | None, now: float) -> bytes | None:
            # gone: taken over and released since, or the work folder deleted; either way
            # not this run's to write any more
            if current is None or current.run != self.run.id:
                self.lost = LeaseLost(self.output, self.run.id, current)
                raise self.lost
            return self._renewed(current, now)

        self._swap(decide)

    def check(self) -> None:
        """Before writing: raise ``LeaseLost`` if the heartbeat found the lease taken over;
        renew it here when it has expired as far as this process knows (renewals failing)."""
        if self.lost is not None:
            raise self.lost
        if time.time() >= self.expires - self.period:
            self.renew()

    def release(self) -> None:
        """Remove it, if it is still this run's."""

        def decide(current: Holder | None, now: float) -> bytes | None:
            return REMOVE if current is not None and current.run == self.run.id else None

        self._swap(decide)
        logger.info("run %s released the lease on %s", self.run.id, self.output)

    def start(self) -> None:
        self._beat = threading.Thread(target=self._heartbeat, name="curator-lease", daemon=True)
        self._beat.start()

    def stop(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.renew()
            except LeaseLost as e:
                logger.error("%s", e)
                return
            except Exception as e:  # storage down: the lease holds until it expires
                logger.warning("could not renew the lease on %s: %s (will try again)",
                               self.output, e)  # fmt: skip


_HELD: dict[str, Lease] = {}  # lease URL -> this process's lease on it
_HELD_LOCK = threading.Lock()


@contextlib.contextmanager
def output_lease(
    output: str, run_id: str | None = None, *, last: bool = False, ttl: float | None = None
) -> Iterator[Lease]:
    """Hold the lease on ``output`` while the block runs (heartbeat included), for the run
    ``run_id`` (see ``Run.resolve``). Inside a block of this thread that holds it already
    (``to-webdataset`` calls plan, reshard and commit), the same lease. ``last``: the run's last
    step, which releases a run's lease when it succeeds (a process-only one is always)."""
    url = lease_url(output)
    with _HELD_LOCK:
        outer = _HELD.get(url)
    mine = outer is not None and (outer.pid, outer.thread) == (os.getpid(), threading.get_ident())
    if outer is not None and mine and run_id in (None, outer.run.id):
        yield outer
        return
    lease = Lease(output, Run.resolve(run_id), ttl)
    lease.acquire()
    with _HELD_LOCK:
        _HELD[url] = lease
    lease.start()
    ok = False
    try:
        yield lease
        lease.check()
        ok = True
    finally:
        lease.stop()
        with _HELD_LOCK:
            _HELD.pop(url, None)
        if lease.run.scope == PROCESS or (ok and last):
            try:
                lease.release()
            except Exception as e:  # the output is written: the lease just expires
                logger.warning("could not release the lease on %s: %s (it expires at %s)",
                               output, e, _human(lease.expires))  # fmt: skip


def verify(output: str, run_id: str) -> None:
    """Before writing an output shard (in a writer process or thread): ``LeaseLost`` unless
    ``run_id`` still holds the lease. This process's lease when it has one (no request), else
    the document, read (a forked writer: a local file)."""
    url = lease_url(output)
    with _HELD_LOCK:
        lease = _HELD.get(url)
    if lease is not None and lease.pid == os.getpid() and lease.run.id == run_id:
        lease.check()
        return
    holder = Holder.parse(swap(url, lambda raw: None), url)
    if holder is None or holder.run != run_id:
        raise LeaseLost(output, run_id, holder)
