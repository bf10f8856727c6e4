"""Parallel workers: forked processes for one step's shard work (CPU-bound parsing, hashing and
copying), threads for object stores (network latency), and new interpreters for work kept
across a step's shards (annotate's image decoding).

Forked workers die with the process that forked them (Linux ``PR_SET_PDEATHSIG``): a step that
is killed, say by a task timeout, leaves no orphan still writing. What existed before the fork
is frozen out of the garbage collector meanwhile, so the workers' collections do not touch, and
copy, every page of the parent's objects (the ``gc`` documentation's advice for forking).

``InterpreterPool`` starts new interpreters instead of forking: a long-lived fork of a process
that has loaded torch and started threads would carry that state and every file descriptor open
at the time (a caller's pipes then never reach their end), and ``multiprocessing`` gives a
daemonic process (a dask worker) no children. Nor is it ``multiprocessing``'s spawn, which runs
the caller's main script again in each child (a user's script without a ``__main__`` guard).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import Connection
from typing import Any

logger = logging.getLogger(__name__)

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


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker interpreter, set as its cause."""

    def __str__(self) -> str:
        return str(self.args[0])


# a worker interpreter's program: the parent's copy of this package first (when it is not where
# the interpreter looks anyway), then serve the tasks of its pipe until the pipe ends
_SERVE = (
    "import sys; root = sys.argv[1]; root in sys.path or sys.path.insert(0, root); "
    "from airflow_curator.core.workerpool import serve; serve(*map(int, sys.argv[2:]))"
)
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class InterpreterPool(Executor):
    """``n`` worker processes, each a new interpreter that imports only what its tasks need,
    kept until ``shutdown``. A task (a module-level function and its arguments, pickled) goes
    to the worker with the fewest tasks in flight; a worker runs its tasks in order. A worker
    has only its two pipes, and exits at the end of its task pipe (the pool shut down, or the
    parent gone) or, on Linux, with SIGKILL when the parent dies. A worker that dies breaks
    the pool: its tasks and every later one fail with ``BrokenProcessPool``."""

    def __init__(self, n: int, name: str = "worker") -> None:
        self._lock = threading.Lock()
        self._next_task = 0
        self._broken: str | None = None
        self._shutdown = False
        self._workers: list[_Worker] = []
        try:
            for i in range(n):
                self._workers.append(_Worker(self, f"{name}-{i}"))
        except BaseException:
            self.shutdown(wait=False)
            raise
        logger.debug("%s: interpreters %s started", name, self.pids)

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers]

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        data = pickle.dumps((fn, args, kwargs), pickle.HIGHEST_PROTOCOL)  # raises before any state
        future: Future[Any] = Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot submit to a pool that was shut down")
            if self._broken:
                raise BrokenProcessPool(self._broken)
            task = self._next_task
            self._next_task += 1
            worker = min(self._workers, key=lambda w: len(w.pending))
            worker.pending[task] = future
        try:
            worker.send(task, data)
        except OSError as e:  # the worker is gone
            self._break(f"{worker.name} takes no tasks: {e}")
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            futures = [f for w in self._workers for f in w.pending.values()]
        if cancel_futures:
            for future in futures:
                future.cancel()
        for w in self._workers:
            w.close()
        if wait:
            for w in self._workers:
                w.wait()

    def _break(self, reason: str) -> None:
        """Fail every task in flight, and refuse new ones."""
        with self._lock:
            self._broken = self._broken or reason
            futures = [f for w in self._workers for f in w.pending.values()]
            for w in self._workers:
                w.pending.clear()
        for future in futures:
            if future.set_running_or_notify_cancel():
                future.set_exception(BrokenProcessPool(reason))


class _Worker:
    """One worker interpreter: its process, its task pipe, the thread reading its answers."""

    def __init__(self, pool: InterpreterPool, name: str) -> None:
        self.pool = pool
        self.name = name
        self.pending: dict[int, Future[Any]] = {}
        task_r, task_w = os.pipe()
        answer_r, answer_w = os.pipe()
        argv = [sys.executable, "-c", _SERVE, _ROOT, str(task_r), str(answer_w), str(os.getpid())]
        try:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, pass_fds=(task_r, answer_w)
            )
        except BaseException:
            os.close(task_w)
            os.close(answer_r)
            raise
        finally:
            os.close(task_r)
            os.close(answer_w)
        self.tasks = Connection(task_w, readable=False)
        self.answers = Connection(answer_r, writable=False)
        self._sending = threading.Lock()
        self.reader = threading.Thread(target=self._read, name=f"{name}-answers", daemon=True)
        self.reader.start()

    def send(self, task: int, data: bytes) -> None:
        """A task: its number, then its pickled function and arguments."""
        with self._sending:
            self.tasks.send_bytes(task.to_bytes(8, "little") + data)

    def _read(self) -> None:
        while True:
            try:
                task, ok, value, remote = pickle.loads(self.answers.recv_bytes())
            except (EOFError, OSError):
                break
            with self.pool._lock:
                future = self.pending.pop(task, None)
            if future is None or not future.set_running_or_notify_cancel():
                continue  # cancelled meanwhile
            if ok:
                future.set_result(value)
            else:
                value.__cause__ = RemoteTraceback(remote)
                future.set_exception(value)
        code = self.process.wait()
        self.answers.close()
        if self.pending or not self.pool._shutdown:
            self.pool._break(f"{self.name} (pid {self.process.pid}) exited with code {code}")

    def close(self) -> None:
        with self._sending, contextlib.suppress(OSError):
            self.tasks.close()

    def wait(self) -> None:
        self.process.wait()
        self.reader.join()


def serve(task_fd: int, answer_fd: int, parent: int) -> None:
    """A worker interpreter's loop: run each task read from ``task_fd``, answer on
    ``answer_fd``, until the task pipe ends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _die_with_parent(parent)
    tasks = Connection(task_fd, writable=False)
    answers = Connection(answer_fd, readable=False)
    while True:
        try:
            message = tasks.recv_bytes()
        except EOFError:
            return
        task = int.from_bytes(message[:8], "little")
        remote = None
        try:
            fn, args, kwargs = pickle.loads(message[8:])
            ok, value = True, fn(*args, **kwargs)
        except BaseException as e:  # the caller's to handle, with this traceback
            ok, value, remote = False, e, traceback.format_exc()
        try:
            answer = pickle.dumps((task, ok, value, remote), pickle.HIGHEST_PROTOCOL)
        except Exception as e:  # a result or an exception that does not pickle
            error = RuntimeError(f"{type(value).__name__} cannot be sent back: {e}")
            answer = pickle.dumps((task, False, error, remote), pickle.HIGHEST_PROTOCOL)
        answers.send_bytes(answer)
