"""Cross-validation folds as dask.distributed tasks: ``trainer cv --scheduler ADDRESS``.

Each fold (and, with ``--run-grid``, each candidate x fold) is one task that asks the scheduler for
``--fold-resources`` (default ``GPU=1``): a worker started with ``--resources "GPU=1"`` runs one
such task at a time. The task (:func:`fold_task`) opens the store itself (a path the workers can
see, or an fsspec URL such as ``s3://bucket/store.zarr``), trains with
:func:`trainer.folds.run_fold` — the very function the sequential CV calls — and sends back only
small plain values: the fold's out-of-fold rows, its epoch history and its summary. The client
assembles them exactly as the sequential loop does, so both produce the same run folder.

Nothing of ours is pickled: the task's arguments and results are str/int/float/bool/list/dict,
and the function travels by Dask's own task serialization.
"""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING, Any
from collections.abc import Callable

import pandas as pd

from neurocache.errors import InputError
from neurocache.execution import ClusterError, connect, run_calls
from neurocache.remote import store_address  # noqa: F401 - the store as the workers open it (URL, or absolute path)

__all__ = ["ClusterError", "FoldRunner", "check_workers", "connect", "fold_task", "parse_resources", "release_cache"]

if TYPE_CHECKING:
    from trainer.config import TrainConfig

#: The split columns a fold task needs (``group`` is not needed to train).
_SPLIT_COLUMNS = ("ID", "label", "test", "fold")


def parse_resources(spec: str | None) -> dict[str, float]:
    """``"GPU=1"`` / ``"GPU=1,MEM=8e9"`` -> ``{"GPU": 1.0, ...}``; ``""``/``"none"`` -> ``{}`` (no constraint).

    Raises:
        InputError: a malformed item (the message names it; a ValueError).
    """
    out: dict[str, float] = {}
    if spec is None or spec.strip().lower() in ("", "none"):
        return out
    for item in spec.replace(" ", ",").split(","):
        if not item:
            continue
        name, eq, value = item.partition("=")
        try:
            if not eq or not name:
                raise ValueError
            out[name] = float(value)
        except ValueError:
            raise InputError(f"--fold-resources: expected NAME=NUMBER[,NAME=NUMBER...], got {item!r}") from None
    return out


# One dataset per worker process, reused by the next fold task on the same store (the images stay
# on the worker's device between folds and grid candidates). Keyed by everything load_dataset uses.
_CACHE: dict[str, Any] = {}
_CACHE_LOCK = threading.Lock()


def _dataset(store: str, cfg: TrainConfig, device) -> Any:
    from neurocache.store import open_store
    from trainer.config import prep_config
    from trainer.data import load_dataset

    key = repr((store, prep_config(cfg).fingerprint(), cfg.group_by, float(cfg.memory_budget_gb),
                int(cfg.stream_shards), int(cfg.stream_readers), int(cfg.context_slices), str(device)))
    cached = _CACHE.get("data")
    if cached is not None and _CACHE.get("key") == key:
        # The same store folder may have been rebuilt since: reuse only when its attrs are unchanged.
        if open_store(store, expect=prep_config(cfg)).attrs == cached.store.attrs:
            return cached
    _CACHE.clear()  # free the previous store's images before loading the next
    data = load_dataset(store, cfg, device)
    _CACHE.update(key=key, data=data)
    return data


def release_cache() -> None:
    """Drop this worker process's cached dataset (and the device memory it holds)."""
    with _CACHE_LOCK:
        _CACHE.clear()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - best effort
        pass


def fold_task(store: str, config: dict[str, Any], split: dict[str, list], k: int) -> dict[str, Any]:
    """Run fold ``k`` inside a worker; returns :func:`trainer.folds.run_fold`'s plain result.

    Args:
        store: path or fsspec URL of the store, as the worker sees it.
        config: the effective config as a plain dict (``TrainConfig.to_dict()``: what travels to the
            worker; rebuilt and validated here by ``TrainConfig.from_dict``); ``threads`` (0 -> 1) sets
            torch's CPU threads in this worker process, ``device`` picks the worker's device (``auto``: its GPU when it has one).
        split: the run's split as ``{column: list}`` (ID, label, test, fold), in the store's ok-row order.
        k: the fold.
    """
    import torch

    from trainer.config import TrainConfig
    from trainer.folds import run_fold
    from trainer.data import pick_device

    cfg = TrainConfig.from_dict(config)
    torch.set_num_threads(int(cfg.threads or 1))
    device = pick_device(cfg.device)
    with _CACHE_LOCK:
        data = _dataset(store, cfg, device)
        frame = pd.DataFrame({c: split[c] for c in _SPLIT_COLUMNS})
        ids = data.table["ID"].astype(str).tolist()
        if ids != [str(i) for i in frame["ID"]]:
            raise ClusterError(f"store {store} as seen by this worker has other ok rows than the client's split "
                               f"({len(ids)} vs {len(frame)}): do the client and the workers see the same store?")
        return run_fold(data, frame, cfg, int(k))


def check_workers(client, resources: dict[str, float]) -> None:
    """Fail fast (instead of waiting forever) when no worker offers ``resources``.

    Raises:
        ClusterError: the cluster has no worker, or none offering every requested resource.
    """
    info = client.scheduler_info(n_workers=-1)["workers"] if _accepts_n_workers(client) else client.scheduler_info()["workers"]
    if not info:
        raise ClusterError("the Dask cluster has no workers: start some with `dask worker ADDRESS --resources \"GPU=1\"`")
    if not resources:
        return
    ok = [w for w in info.values() if all(w.get("resources", {}).get(r, 0) >= v for r, v in resources.items())]
    if not ok:
        have = sorted({f"{r}={v:g}" for w in info.values() for r, v in w.get("resources", {}).items()}) or ["none"]
        raise ClusterError(
            f"no worker of the cluster offers the fold resources {resources} (workers: {len(info)}, "
            f"resources offered: {', '.join(have)}); start workers with e.g. `dask worker ADDRESS --resources \"GPU=1\"` "
            f"or pass --fold-resources none"
        )


class FoldRunner:
    """Runs ``[(cfg, fold), ...]`` jobs as Dask tasks with ``resources``; results in job order.

    Args:
        client: a connected ``dask.distributed.Client``.
        store: the store, as the workers see it (see :func:`store_address`).
        split: the run's split (ID, label, test, fold columns are sent).
        resources: per-task worker resources (``{"GPU": 1}``); ``{}`` for none.
        retries: times Dask reruns a task whose worker died.
        log: called with one line per finished task.
    """

    def __init__(self, client, store: str, split: pd.DataFrame, *, resources: dict[str, float] | None = None,
                 retries: int = 1, log: Callable[[str], Any] | None = None) -> None:
        self.client = client
        self.store = store
        self.split = {c: split[c].tolist() for c in _SPLIT_COLUMNS}
        self.split["ID"] = [str(i) for i in self.split["ID"]]
        self.resources = dict(resources or {})
        self.retries = retries
        self.log = log or (lambda line: print(line, file=sys.stderr))

    def __call__(self, jobs: list[tuple[TrainConfig, int]]) -> list[dict[str, Any]]:
        check_workers(self.client, self.resources)
        executor = self.client.get_executor(resources=self.resources or None, retries=self.retries, pure=False)
        calls = [(self.store, cfg.to_dict(), self.split, int(k), i) for i, (cfg, k) in enumerate(jobs)]
        results: list[dict[str, Any] | None] = [None] * len(calls)

        def done(args: tuple, r: dict[str, Any]) -> None:
            results[args[-1]] = r
            f = r["fold"]
            self.log(f"fold task {sum(x is not None for x in results)}/{len(calls)} done: fold {f['fold']} "
                     f"best val AUPRC {f['best_val_auprc']:.3f} ({f['seconds']:.0f} s on {f.get('device', '?')})")

        try:
            run_calls(executor, _fold_job, calls, done, fail_fast=True)
        except BaseException:
            executor.shutdown(wait=False)  # cancels the fold tasks still queued or running
            raise
        finally:
            try:  # the workers' cached images (device memory) are not needed after this run's folds
                self.client.run(release_cache)
            except Exception:  # noqa: BLE001 - best effort
                pass
        return results  # type: ignore[return-value]


def _accepts_n_workers(client) -> bool:
    import inspect

    try:
        return "n_workers" in inspect.signature(client.scheduler_info).parameters
    except (TypeError, ValueError):
        return False


def _fold_job(store: str, config: dict[str, Any], split: dict[str, list], k: int, job: int) -> dict[str, Any]:
    """:func:`fold_task` of job number ``job`` (the number only tells the results apart)."""
    return fold_task(store, config, split, k)
