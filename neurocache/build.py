"""``neurocache build``: a data folder -> a complete store, in parallel with Dask, resumable.

Phases (each task writes whole shards, so parallel writes never collide):

1. **decode** — the files, sorted by ID, are cut into batches; each Dask task reads and preprocesses
   one batch, writes its images into the ``_staging`` array (one shard per batch) and its feature
   rows into ``_progress/batch_NNNNNN.parquet``. A batch whose progress file exists is done: a killed
   build rerun with the same command continues from there.
2. **compact** — the client copies the ``ok`` slices into ``images`` (rows ordered by ID), writes
   ``features.parquet`` and ``quality.json``, removes the staging data and writes ``complete: true``
   last.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd
import zarr

from neurocache import SCHEMA_VERSION, __version__
from neurocache.config import PrepConfig
from neurocache.inputs import ID_COL, LABEL_COL, InputError, Inputs, scan_inputs
from neurocache.preprocess import preprocess_file
from neurocache.quality import quality_report
from neurocache.reasons import MISSING, OK, QUARANTINED
from neurocache.store import (
    ATTRS_KEY,
    FEATURES_FILE,
    QUALITY_FILE,
    StoreError,
    create_image_array,
    dir_bytes,
    param_diff,
    read_attrs,
    remove_store,
    write_json,
)

STAGING = "_staging"
PROGRESS = "_progress"


class BuildError(RuntimeError):
    """The build cannot go on (``--strict`` with quarantined files, an unusable store path)."""


@dataclass
class BuildResult:
    """What a build did: the store path, its summary attrs and whether anything was (re)computed."""

    store: Path
    attrs: dict[str, Any]
    features: pd.DataFrame
    skipped: bool  # True when the store was already complete with the same inputs and parameters


def manifest_digest(inputs: Inputs) -> str:
    """sha256 over (name, bytes, mtime) of every CT file and the labels CSV's content.

    Cheap to compute (no file is read but the CSV); it decides whether a complete store is up to date
    and whether an interrupted build may be resumed.
    """
    h = hashlib.sha256()
    for p in inputs.files:
        st = p.stat()
        h.update(f"{p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    h.update(inputs.labels_path.read_bytes())
    return h.hexdigest()


def _batch_size(n_files: int, workers: int) -> int:
    """Files per task: enough tasks for load balance (8 per worker), each between 8 and 256 files."""
    return int(min(256, max(8, math.ceil(n_files / max(1, workers * 8)))))


def process_batch(store: str, prep: dict[str, Any], key_hex: str, index: int, start: int, paths: list[str]) -> int:
    """One Dask task: preprocess ``paths`` and write shard ``index`` of the staging array.

    Writes the images (quarantined slots keep the fill value) and then, atomically, the batch's
    feature rows; the progress file is the task's commit record. Returns the number of files.
    """
    # One thread per task for zarr/blosc: Dask already runs one task per core.
    zarr.config.set({"threading.max_workers": 1, "async.concurrency": 4})
    cfg = PrepConfig.from_dict(prep)
    key = bytes.fromhex(key_hex)
    stack = np.full((len(paths), cfg.size, cfg.size), cfg.pad_hu, dtype=np.int16)
    rows = []
    for i, p in enumerate(paths):
        image, row = preprocess_file(p, cfg, key)
        if image is not None:
            stack[i] = image
        row["file"] = Path(p).name
        row["input_index"] = start + i
        rows.append(row)
    staging = zarr.open_array(str(Path(store) / STAGING), mode="r+")
    staging[start : start + len(paths)] = stack
    out = Path(store) / PROGRESS / f"batch_{index:06d}.parquet"
    tmp = out.with_suffix(".tmp")
    pd.DataFrame(rows).to_parquet(tmp, index=False)
    os.replace(tmp, out)
    return len(paths)


def _run_tasks(
    calls: list[tuple[Callable[..., int], tuple]],
    *,
    workers: int,
    scheduler: str | None,
    on_done: Callable[[int], None],
) -> None:
    """Run task calls serially (workers == 1, no scheduler) or on a dask.distributed cluster.

    With no ``scheduler`` a ``LocalCluster`` of ``workers`` single-threaded processes is started
    (pydicom holds the GIL, so processes, not threads); with one, the existing cluster is used.
    """
    if scheduler is None and workers <= 1:
        for fn, args in calls:
            on_done(fn(*args))
        return
    from dask.distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler is None:
        cluster = LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40
        )
        client = Client(cluster)
    elif scheduler.endswith(".json") and Path(scheduler).is_file():
        client = Client(scheduler_file=scheduler)
    else:
        client = Client(scheduler)
    try:
        futures = [client.submit(fn, *args, pure=False, retries=2) for fn, args in calls]
        for fut in as_completed(futures):
            on_done(fut.result())
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _assemble(inputs: Inputs, staged: pd.DataFrame) -> pd.DataFrame:
    """Join decoded rows with the labels: one row per input file plus one per label without a file.

    Sets ``ID``, ``label``, ``status``/``reason`` for files without a label, duplicate IDs and
    labels without a file, and ``row`` (the index into ``images``; -1 when not ok), ordered by ID.
    """
    labels = inputs.labels.set_index(ID_COL)
    staged = staged.sort_values("input_index").reset_index(drop=True)
    staged.insert(0, ID_COL, [Inputs.file_id(Path(f)) for f in staged["file"]])
    staged.insert(1, "label", pd.array([labels[LABEL_COL].get(i, pd.NA) for i in staged[ID_COL]], dtype="Int8"))

    dup = staged[ID_COL].duplicated(keep="first")
    for i in np.flatnonzero(dup.to_numpy()):
        first = staged.loc[staged[ID_COL] == staged.at[i, ID_COL], "file"].iloc[0]
        staged.loc[i, ["status", "reason", "detail"]] = [QUARANTINED, "duplicate_file", f"{staged.at[i, 'file']}: same ID as {first}"]
    nolab = (staged["label"].isna() & (staged["status"] == OK)).to_numpy()
    staged.loc[nolab, "reason"] = "no_label"
    staged.loc[nolab, "detail"] = [f"{f}: ID not in {inputs.labels_path.name}" for f in staged.loc[nolab, "file"]]
    staged.loc[nolab, "status"] = QUARANTINED

    have = set(staged[ID_COL])
    missing_ids = [i for i in inputs.labels[ID_COL] if i not in have]
    if missing_ids:
        miss = pd.DataFrame({ID_COL: missing_ids})
        miss["label"] = pd.array([int(labels.at[i, LABEL_COL]) for i in missing_ids], dtype="Int8")
        miss["status"] = MISSING
        miss["reason"] = "missing_file"
        miss["detail"] = [f"{i}: no file {i}.dcm (or {i}) in {inputs.cts_dir.name}/" for i in missing_ids]
        miss["file"] = ""
        miss["input_index"] = -1
        staged = pd.concat([staged, miss], ignore_index=True)

    # Extra CSV columns are kept (prefixed when a name is taken).
    extra = [c for c in inputs.labels.columns if c not in (ID_COL, LABEL_COL)]
    for c in extra:
        name = c if c not in staged.columns else f"csv_{c}"
        staged[name] = [labels[c].get(i, None) for i in staged[ID_COL]]

    staged = staged.sort_values([ID_COL, "file"], kind="stable").reset_index(drop=True)
    ok = (staged["status"] == OK).to_numpy()
    row = np.full(len(staged), -1, dtype=np.int64)
    row[ok] = np.arange(int(ok.sum()))
    staged.insert(2, "row", row)
    return staged


def _compact(store: Path, table: pd.DataFrame, cfg: PrepConfig, progress: Callable[[int], None]) -> zarr.Array:
    """Copy the ok slices from ``_staging`` into ``images`` in ``row`` order, one output shard at a time."""
    group = zarr.open_group(str(store), mode="r+")
    ok = table[table["status"] == OK].sort_values("row")
    src_idx = ok["input_index"].to_numpy()
    images = create_image_array(group, "images", len(src_idx), cfg)
    if len(src_idx) == 0:
        return images
    staging = group[STAGING]
    shard = images.shards[0]
    for start in range(0, len(src_idx), shard):
        idx = src_idx[start : start + shard]
        images[start : start + len(idx)] = staging.get_orthogonal_selection((idx, slice(None), slice(None)))
        progress(len(idx))
    return images


def build_store(
    data_root: str | Path,
    store: str | Path,
    *,
    cfg: PrepConfig | None = None,
    labels: str = "labels1.csv",
    cts: str = "CTs",
    workers: int | None = None,
    scheduler: str | None = None,
    strict: bool = False,
    force: bool = False,
    progress: bool = True,
    hash_key: bytes | None = None,
) -> BuildResult:
    """Build (or resume, or confirm up to date) the store for a data folder.

    Args:
        data_root: folder holding ``cts`` and ``labels``.
        store: the store folder to write (``STORE.zarr``).
        cfg: preprocessing parameters (defaults when None).
        workers: Dask worker processes (default: all cores); 1 runs in this process, no Dask.
        scheduler: address (``tcp://host:port``) or scheduler-file of an existing dask.distributed cluster.
        strict: fail (store left incomplete) when any file is quarantined.
        force: replace a store built with other parameters.
        progress: show a progress bar.
        hash_key: key for the patient/study/series hashes (default: the store's own, or a new random one).

    Raises:
        InputError: the data folder or labels CSV is unusable (nothing is written).
        StoreError: the store exists with other parameters and ``force`` is False.
        BuildError: ``strict`` and some files were quarantined.
    """
    cfg = cfg or PrepConfig()
    t0 = time.perf_counter()
    store = Path(store)
    inputs = scan_inputs(data_root, labels=labels, cts=cts)
    if inputs.problems:
        raise InputError("the labels CSV cannot be used:\n  " + "\n  ".join(inputs.problems))
    manifest = manifest_digest(inputs)
    fingerprint = cfg.fingerprint()
    workers = int(workers or os.cpu_count() or 1)

    old = read_attrs(store)
    if old is None and store.exists() and any(store.iterdir()):
        raise StoreError(f"{store} exists and is not a neurocache store; choose another --store path or remove it")
    if old is not None and old.get("fingerprint") != fingerprint:
        if not force:
            diff = param_diff(old.get("preprocess", {}), cfg.value_params())
            raise StoreError(
                f"store {store} was built with other preprocessing parameters: {'; '.join(diff) or 'schema/code version'}. "
                f"Use --force to replace it, or build into a new --store path."
            )
        remove_store(store)
        old = None
    if old is not None and old.get("complete") and old.get("source", {}).get("manifest") == manifest:
        from neurocache.store import open_store

        s = open_store(store)
        return BuildResult(store=store, attrs=s.attrs, features=s.features, skipped=True)

    key_hex = (hash_key.hex() if hash_key else None) or (old or {}).get("hash_key") or os.urandom(16).hex()
    resume = (
        old is not None
        and not old.get("complete")
        and old.get("source", {}).get("manifest") == manifest
        and (store / STAGING / "zarr.json").is_file()
    )
    n = len(inputs.files)
    if resume:
        batch = int(old["build"]["batch_files"])
    else:
        batch = _batch_size(n, workers)
        if store.exists():
            remove_store(store)
        group = zarr.open_group(str(store), mode="w")
        staging_cfg = PrepConfig.from_dict({**cfg.to_dict(), "shard_size": batch})
        create_image_array(group, STAGING, n, staging_cfg)
        (store / PROGRESS).mkdir()
    attrs: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "package_version": __version__,
        "preprocess": cfg.value_params(),
        "layout": {"shard_size": cfg.shard_size, "compression_level": cfg.compression_level, "chunks": [1, cfg.size, cfg.size]},
        "fingerprint": fingerprint,
        "hash_key": key_hex,
        "source": {
            "data_root": str(Path(data_root).resolve()),
            "cts": cts,
            "labels": labels,
            "n_files": n,
            "bytes": int(sum(p.stat().st_size for p in inputs.files)),
            "manifest": manifest,
        },
        "build": {"batch_files": batch, "workers": workers, "scheduler": scheduler or "local"},
        "created": (old or {}).get("created") or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "complete": False,
    }
    zarr.open_group(str(store), mode="r+").attrs[ATTRS_KEY] = attrs

    done = {int(p.stem.split("_")[1]) for p in (store / PROGRESS).glob("batch_*.parquet")}
    calls = []
    for index, start in enumerate(range(0, n, batch)):
        if index in done:
            continue
        paths = [str(p) for p in inputs.files[start : start + batch]]
        calls.append((process_batch, (str(store), cfg.to_dict(), key_hex, index, start, paths)))
    n_todo = sum(len(c[1][5]) for c in calls)
    bar = _bar(n, n - n_todo, "decode", progress)
    _run_tasks(calls, workers=workers, scheduler=scheduler, on_done=bar.update)
    bar.close()

    parts = sorted((store / PROGRESS).glob("batch_*.parquet"))
    staged = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True) if parts else pd.DataFrame(
        columns=["file", "input_index", "status", "reason", "detail"]
    )
    if len(staged) != n:
        raise BuildError(f"internal: {len(staged)} staged rows for {n} files in {store}; rerun the build to resume")
    table = _assemble(inputs, staged)
    n_ok = int((table["status"] == OK).sum())
    n_quarantined = int((table["status"] == QUARANTINED).sum())
    if strict and n_quarantined:
        counts = table.loc[table["status"] == QUARANTINED, "reason"].value_counts().to_dict()
        raise BuildError(
            f"--strict: {n_quarantined} file(s) quarantined {counts}; see `detail` in the message rows or drop --strict. "
            f"The store {store} is left incomplete."
        )

    bar = _bar(n_ok, 0, "compact", progress)
    images = _compact(store, table, cfg, bar.update)
    bar.close()
    table.to_parquet(store / FEATURES_FILE, index=False)
    write_json(store / QUALITY_FILE, quality_report(table, cfg))
    group = zarr.open_group(str(store), mode="r+")
    del group[STAGING]
    shutil.rmtree(store / PROGRESS, ignore_errors=True)
    shutil.rmtree(store / STAGING, ignore_errors=True)

    attrs["counts"] = {
        "n_files": n,
        "n_ok": n_ok,
        "n_quarantined": n_quarantined,
        "n_missing_file": int((table["status"] == MISSING).sum()),
        "n_rows": len(table),
    }
    attrs["shape"] = list(images.shape)
    attrs["build"]["seconds"] = round(time.perf_counter() - t0, 3)
    attrs["complete"] = True  # written last: a reader never trusts a store without it
    zarr.open_group(str(store), mode="r+").attrs[ATTRS_KEY] = attrs
    return BuildResult(store=store, attrs=attrs, features=table, skipped=False)


class _NoBar:
    def update(self, n: int = 1) -> None:  # noqa: D401 - a no-op progress bar
        pass

    def close(self) -> None:
        pass


def _bar(total: int, initial: int, desc: str, show: bool):
    if not show:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="file", dynamic_ncols=True)
