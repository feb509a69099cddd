"""Where tasks run: one ``concurrent.futures.Executor`` and one connector to a Dask cluster,
shared by the build (:mod:`neurocache.build`) and the trainer's fold tasks (:mod:`trainer.distributed`).

* :func:`process_pool`: local worker processes (``ProcessPoolExecutor``) forked from a *forkserver*
  (``spawn`` where there is none) that imported the task's modules once: one interpreter start
  and import in all, not one per worker; no worker inherits this process's threads or imports.
* :func:`connect` + ``client.get_executor(...)``: an existing dask.distributed cluster.
* :func:`run_calls`: submit calls to either, hand each result to a callback as it arrives, and
  return the calls that failed (a worker that died — a codec crash — or the task's own error), so
  the caller decides what a failure means (the build redoes a batch with its files isolated).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import (
    BrokenExecutor,
    Executor,
    Future,
    ProcessPoolExecutor,
    as_completed,
)
from pathlib import Path
from typing import Any

from neurocache.errors import UserError


class ClusterError(UserError, RuntimeError):
    """A Dask cluster cannot be reached, or cannot run the tasks (no worker offers what they need)."""

    exit_code = 1


def connect(scheduler: str, *, timeout: float = 30.0) -> Any:
    """A ``dask.distributed.Client`` of the existing cluster at ``scheduler``: ``tcp://HOST:PORT``
    (any Dask address) or a scheduler-file JSON path; ``timeout`` in seconds.

    Raises:
        ClusterError: no such scheduler file, or the scheduler cannot be reached.
    """
    from dask.distributed import Client

    if scheduler.endswith(".json") and not Path(scheduler).is_file():
        raise ClusterError(f"--scheduler {scheduler}: no such scheduler file")
    try:
        if scheduler.endswith(".json"):
            return Client(scheduler_file=scheduler, timeout=timeout)
        return Client(scheduler, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as e:
        raise ClusterError(f"cannot connect to the Dask scheduler {scheduler}: {type(e).__name__}: {e}") from e


def cluster_threads(scheduler: str) -> int:
    """Worker threads of the cluster at ``scheduler``."""
    with connect(scheduler) as client:
        return int(sum(client.nthreads().values()))


def process_pool(workers: int, preload: Sequence[str] = ()) -> ProcessPoolExecutor:
    """``workers`` single-threaded local processes; ``preload``: modules the forkserver imports once.

    Each worker starts with this process's environment as it is now (credentials for an object
    store set after the forkserver started).
    """
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    if method == "forkserver" and preload:
        # No effect once the server runs: it has them.
        ctx.set_forkserver_preload(list(preload))
    return ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(dict(os.environ),))


def _init_worker(environ: dict[str, str]) -> None:
    """Start of a local worker process: the parent's current environment (credentials)."""
    os.environ.clear()
    os.environ.update(environ)


def run_calls(
    executor: Executor,
    fn: Callable[..., Any],
    calls: Sequence[tuple],
    on_done: Callable[[tuple, Any], None],
    *,
    fail_fast: bool = False,
) -> list[tuple]:
    """``fn(*args)`` for each ``args`` of ``calls`` on ``executor``; ``on_done(args, result)`` in this
    thread as each finishes, in completion order.

    Returns the ``args`` whose call failed, in ``calls`` order. With ``fail_fast`` the first failure
    is raised instead, after cancelling the calls not yet finished.
    """
    futures: dict[Future, int] = {}
    failed: list[int] = []
    for i, args in enumerate(calls):
        try:
            futures[executor.submit(fn, *args)] = i
        except BrokenExecutor:  # a worker died while submitting: the rest fail with it
            failed.extend(range(i, len(calls)))
            break
    for fut in as_completed(futures):
        try:
            result = fut.result()
        except Exception:
            if fail_fast:
                for other in futures:
                    other.cancel()
                raise
            failed.append(futures[fut])
            continue
        on_done(calls[futures[fut]], result)
    if failed and fail_fast:
        raise BrokenExecutor("the executor broke before every call was submitted")
    return [calls[i] for i in sorted(failed)]
