"""Running the decode tasks: in this process (``workers=1``), on local worker processes, or on an
existing dask.distributed cluster, all through :mod:`neurocache.execution`.

Crash isolation: a worker that dies (a codec segfault) fails its batch. Locally the batches not
finished run again on a new pool, each decoding the file named by its in-flight journal in a child
process; batches still failing after :data:`LOCAL_ATTEMPTS` pools, or that failed on the cluster
(after Dask's own retries), are redone here with every file decoded in a child process — a crash
then costs a ``decoder_crash`` row, and any other error (disk full, a bug) is raised for real.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from neurocache.build.state import BuildError
from neurocache.build.tasks import Batch, process_batch, suspects
from neurocache.execution import connect, process_pool, run_calls
from neurocache.remote import StoreLocation

#: Pool attempts of a local build before the batches still left are run in this process.
LOCAL_ATTEMPTS = 3

OnDone = Callable[[dict[str, Any]], None]


def run_batches(batches: list[Batch], loc: StoreLocation, *, workers: int, scheduler: str | None,
                on_done: OnDone, cts_dir: str) -> None:
    """Run every batch; ``on_done(result)`` with each :func:`process_batch` result."""
    if scheduler is None and workers <= 1:
        for b in batches:
            on_done(process_batch(b))
        return
    if scheduler is None:
        failed = _run_local(batches, loc, workers, on_done)
    else:
        failed = _run_cluster(batches, scheduler, on_done, (cts_dir, batches[0].store if batches else ""))
    for b in failed:
        on_done(process_batch(b.all_suspect()))


def _run_local(batches: list[Batch], loc: StoreLocation, workers: int, on_done: OnDone) -> list[Batch]:
    """Batches on :data:`LOCAL_ATTEMPTS` successive process pools; returns those still failing."""
    todo = list(batches)
    for attempt in range(LOCAL_ATTEMPTS):
        if not todo:
            break
        if attempt:
            todo = [b.with_suspects(suspects(loc, b.index)) for b in todo]
        with process_pool(min(workers, len(todo)), preload=["neurocache.build"]) as pool:
            todo = [args[0] for args in run_calls(pool, process_batch, [(b,) for b in todo], lambda a, r: on_done(r))]
    return todo


def _run_cluster(batches: list[Batch], scheduler: str, on_done: OnDone, worker_check: tuple[str, str]) -> list[Batch]:
    """Batches on the cluster at ``scheduler`` (Dask retries a task twice); returns those that failed."""
    if not batches:
        return []
    client = connect(scheduler)
    try:
        _check_workers_see(client, scheduler, *worker_check)
        executor = client.get_executor(pure=False, retries=2)
        failed = run_calls(executor, process_batch, [(b,) for b in batches], lambda a, r: on_done(r))
    finally:
        client.close()
    return [args[0] for args in failed]


def _check_workers_see(client: Any, scheduler: str, cts_dir: str, store: str) -> None:
    """Raise :class:`BuildError` when a worker cannot see the CT folder or the store."""
    blind = {w: why for w, why in client.run(worker_sees, cts_dir, store).items() if why}
    if blind:
        raise BuildError(
            f"{len(blind)} worker(s) of {scheduler} cannot see what the build needs: "
            + "; ".join(f"{w}: {why}" for w, why in sorted(blind.items()))
            + ". Workers must reach --data-root and --store at the same path or URL as this command "
            "(a shared filesystem, or an object-store URL with credentials in each worker's environment)."
        )


def worker_sees(cts_dir: str, store: str) -> str:
    """Run on each worker before a distributed build: '' when it sees the CT folder and the store,
    else what it cannot see."""
    problems = []
    if not os.path.isdir(cts_dir):
        problems.append(f"no CT folder {cts_dir}")
    try:
        if not StoreLocation(store).isfile("zarr.json"):
            problems.append(f"no store at {store}")
    except Exception as e:  # noqa: BLE001 - e.g. no credentials for the object store on that worker
        problems.append(f"the store {store} cannot be read ({type(e).__name__})")
    return "; ".join(problems)
