"""``neurocache build``: a data folder -> a complete store, in parallel with Dask, resumable and incremental.

Phases (each task writes whole shards, so parallel writes never collide):

1. **decode** — the files, sorted by ID, are cut into batches; each Dask task reads and preprocesses
   one batch, writes its images into the ``_staging`` array (one shard per batch) and then its
   feature rows into ``_progress/batch_NNNNNN.parquet`` (temp file + rename: the task's commit
   record). A batch whose progress file exists is done: a build killed at any point and rerun with
   the same command continues from there.
2. **compact** — the client copies the ``ok`` slices into ``images`` (rows ordered by ID), writes
   ``features.parquet`` and ``quality.json``, writes ``complete: true`` last, then removes the
   staging data. A store is never marked complete before all of its data is written.

**Incremental builds.** When the store is complete with the same preprocessing fingerprint, hash key
and package version but the folder changed (files added, removed, replaced, or the labels CSV
edited), the old ``images`` and ``features.parquet`` stay in place as a *reuse source* while the
new build stages: a file whose name and content hash (sha256) match an old row is not decoded
again — its feature row and image are copied from the old store. The result is identical to a
from-scratch build; ``attrs["build"]`` reports ``decoded`` and ``reused``. Before compaction
overwrites ``images`` the reuse source is declared invalid in the attrs, so a later kill never
reuses half-written data.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import math
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import zarr

from neurocache import SCHEMA_VERSION, __version__
from neurocache.config import PrepConfig
from neurocache.inputs import ID_COL, LABEL_COL, InputError, Inputs, scan_inputs
from neurocache.isolate import preprocess_isolated
from neurocache.preprocess import ROW_COLUMNS, file_digest, preprocess_file
from neurocache.quality import quality_report
from neurocache.reasons import MISSING, OK, QUARANTINED, TABLE_REASONS
from neurocache.store import (
    ATTRS_KEY,
    FEATURES_FILE,
    QUALITY_FILE,
    StoreError,
    create_image_array,
    param_diff,
    read_attrs,
    remove_store,
    write_attrs,
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


#: Names the build creates inside a store folder: a folder holding only these (e.g. the remains of a
#: killed ``--force`` removal) may be rebuilt; anything else is refused as "not a neurocache store".
STORE_MEMBERS = {"zarr.json", "images", STAGING, PROGRESS, FEATURES_FILE, QUALITY_FILE}

#: Test hook: ``NEUROCACHE_TEST_KILL=POINT:N`` SIGKILLs this process the N-th time it passes POINT
#: (``file``, ``batch_images``, ``batch``, ``compact_start``, ``compact``, ``features``, ``complete``).
#: Used by tests/test_resume.py to kill a real build at precise points; unset, it costs nothing.
_KILL_ENV = "NEUROCACHE_TEST_KILL"
_kill_counts: dict[str, int] = {}


def _kill_point(point: str) -> None:
    spec = os.environ.get(_KILL_ENV)
    if not spec:
        return
    name, _, n = spec.partition(":")
    if name != point:
        return
    _kill_counts[point] = _kill_counts.get(point, 0) + 1
    if _kill_counts[point] >= int(n or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def manifest_digest(inputs: Inputs) -> str:
    """sha256 over (name, bytes, mtime) of every CT-folder entry and the labels CSV's content.

    Cheap to compute (no file is read but the CSV; symlinks are not followed); it decides whether a
    complete store is up to date and whether an interrupted build may be resumed.
    """
    h = hashlib.sha256()
    for p in inputs.files:
        st = os.lstat(p)
        h.update(f"{p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    h.update(inputs.labels_path.read_bytes())
    return h.hexdigest()


def _batch_size(n_files: int, workers: int) -> int:
    """Files per task: enough tasks for load balance (8 per worker), each between 8 and 256 files."""
    return int(min(256, max(8, math.ceil(n_files / max(1, workers * 8)))))


def _reused_row(rec: pd.Series) -> dict[str, Any]:
    """A feature row copied from the reuse source, as a plain dict of the per-file columns."""
    out: dict[str, Any] = {}
    for c in ROW_COLUMNS:
        v = rec[c]
        out[c] = v.item() if isinstance(v, np.generic) else v
    return out


def process_batch(
    store: str,
    prep: dict[str, Any],
    key_hex: str,
    index: int,
    start: int,
    paths: list[str],
    reuse: dict[str, list] | None = None,
    suspects: list[str] | None = None,
) -> int:
    """One Dask task: preprocess ``paths`` and write shard ``index`` of the staging array.

    Before decoding each file the task writes its name to ``_progress/inflight_NNNNNN.txt``; a
    process that dies mid-batch thus names its *suspect*, and the next attempt decodes ``suspects``
    in a child process (:mod:`neurocache.isolate`), so a codec crash becomes a ``decoder_crash`` row.

    ``reuse`` maps a file name to ``[sha256, row index in the old features.parquet]``: when the
    file's content hash still matches, its row and image are copied from the old store instead of
    decoding it. Writes the images (quarantined slots keep the fill value) and then, atomically, the
    batch's feature rows; the progress file is the task's commit record. Returns the number of files.
    """
    # One thread per task for zarr/blosc: Dask already runs one task per core.
    zarr.config.set({"threading.max_workers": 1, "async.concurrency": 4})
    cfg = PrepConfig.from_dict(prep)
    key = bytes.fromhex(key_hex)
    reuse = reuse or {}
    suspects = set(suspects or ())
    journal = Path(store) / PROGRESS / f"inflight_{index:06d}.txt"
    old_feats = old_images = None
    if reuse:
        old_feats = pd.read_parquet(Path(store) / FEATURES_FILE, columns=[*ROW_COLUMNS, "row"])
        old_images = zarr.open_array(str(Path(store) / "images"), mode="r")
    stack = np.full((len(paths), cfg.size, cfg.size), cfg.pad_hu, dtype=np.int16)
    rows = []
    for i, p in enumerate(paths):
        name = Path(p).name
        image, row, reused = None, None, False
        hit = reuse.get(name)
        if hit is not None and old_feats is not None and os.path.isfile(p) and not os.path.islink(p):
            try:
                digest = file_digest(Path(p))[1]
            except OSError:
                digest = ""
            if digest == hit[0]:
                rec = old_feats.iloc[int(hit[1])]
                row, reused = _reused_row(rec), True
                if row["status"] == OK:
                    image = old_images[int(rec["row"])]
        if row is None:
            journal.write_text(name)
            if name in suspects:
                image, row = preprocess_isolated(p, cfg, key, Path(store) / PROGRESS / "isolate")
            else:
                image, row = preprocess_file(p, cfg, key)
            _kill_point("file")
        if image is not None:
            stack[i] = image
        row["file"] = name
        row["input_index"] = start + i
        row["_reused"] = reused
        rows.append(row)
    staging = zarr.open_array(str(Path(store) / STAGING), mode="r+")
    staging[start : start + len(paths)] = stack
    _kill_point("batch_images")
    out = Path(store) / PROGRESS / f"batch_{index:06d}.parquet"
    tmp = out.with_suffix(".tmp")
    pd.DataFrame(rows, columns=[*ROW_COLUMNS, "file", "input_index", "_reused"]).to_parquet(tmp, index=False)
    os.replace(tmp, out)
    journal.unlink(missing_ok=True)
    _kill_point("batch")
    return len(paths)


def _suspects(store: Path, index: int) -> list[str]:
    """The file a dead process was decoding in batch ``index`` (from its in-flight journal), if any."""
    j = store / PROGRESS / f"inflight_{index:06d}.txt"
    try:
        name = j.read_text().strip()
    except OSError:
        return []
    return [name] if name else []


def _run_tasks(
    calls: list[tuple[Callable[..., int], tuple]],
    *,
    workers: int,
    scheduler: str | None,
    on_done: Callable[[int], None],
    retry_args: Callable[[tuple], tuple] = lambda a: a,
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
    failed: list[tuple[Callable[..., int], tuple]] = []
    try:
        futures = {client.submit(fn, *args, pure=False, retries=2): (fn, args) for fn, args in calls}
        for fut in as_completed(list(futures)):
            try:
                on_done(fut.result())
            except Exception:  # e.g. KilledWorker: a codec crashed the worker process, every retry
                failed.append(futures[fut])
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    # Redo those batches here, decoding the file each dead worker was on in a child process. A batch
    # that fails for another reason (disk full, a bug) raises now, with its real error.
    for fn, args in failed:
        on_done(fn(*retry_args(args)))


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
    """Copy the ok slices from ``_staging`` into a fresh ``images`` in ``row`` order, one output shard at a time."""
    group = zarr.open_group(str(store), mode="r+")
    if "images" in group:
        del group["images"]
    shutil.rmtree(store / "images", ignore_errors=True)
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
        _kill_point("compact")
    return images


def _is_remnant(store: Path) -> bool:
    """True when ``store`` holds only names a build creates (a store whose removal was interrupted)."""
    return all(p.name in STORE_MEMBERS or p.name.endswith((".tmp", ".partial")) for p in store.iterdir())


def _remove_staging(store: Path) -> None:
    """Delete ``_staging`` and ``_progress`` (the decode phase's scratch data)."""
    try:
        group = zarr.open_group(str(store), mode="r+")
        if STAGING in group:
            del group[STAGING]
    except Exception:
        pass
    shutil.rmtree(store / PROGRESS, ignore_errors=True)
    shutil.rmtree(store / STAGING, ignore_errors=True)


def _reuse_map(store: Path) -> dict[str, list]:
    """file name -> [sha256, row index in the old features.parquet] for rows a rebuild may copy.

    Rows whose status was set by the label join (``no_label``, ``duplicate_file``) are left out: the
    table does not hold their decode result, so such files are decoded again.
    """
    old = pd.read_parquet(store / FEATURES_FILE, columns=["file", "sha256", "status", "reason"])
    keep = (old["file"].astype(str) != "") & (old["sha256"].astype(str) != "")
    keep &= (old["status"] == OK) | ((old["status"] == QUARANTINED) & ~old["reason"].isin(list(TABLE_REASONS)))
    return {str(f): [str(h), int(i)] for i, (f, h) in enumerate(zip(old["file"], old["sha256"])) if keep.iat[i]}


def _reusable(store: Path, old: dict[str, Any] | None, fingerprint: str, key_hex: str) -> bool:
    """Whether the store's current ``images`` + ``features.parquet`` may serve as a reuse source."""
    return bool(
        old is not None
        and old.get("fingerprint") == fingerprint
        and old.get("hash_key") == key_hex
        and old.get("package_version") == __version__
        and old.get("schema_version") == SCHEMA_VERSION
        and (old.get("complete") is True or old.get("reuse_source_valid") is True)
        and (store / "images" / "zarr.json").is_file()
        and (store / FEATURES_FILE).is_file()
        and _has_columns(store / FEATURES_FILE, [*ROW_COLUMNS, "row", "file"])
    )


def _has_columns(path: Path, columns: list[str]) -> bool:
    import pyarrow.parquet as pq

    try:
        return set(columns) <= set(pq.read_schema(path).names)
    except Exception:
        return False


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
    incremental: bool = True,
) -> BuildResult:
    """Build (or resume, or update incrementally, or confirm up to date) the store for a data folder.

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
        incremental: reuse unchanged files (same name and sha256) of a previous build of this store.

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
    if old is None and store.exists() and (not store.is_dir() or (any(store.iterdir()) and not _is_remnant(store))):
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
    if old is not None and old.get("complete") is True and old.get("source", {}).get("manifest") == manifest:
        from neurocache.store import open_store

        if (store / STAGING).exists() or (store / PROGRESS).exists():
            _remove_staging(store)  # a build killed after `complete` was written, before its cleanup
        s = open_store(store)
        return BuildResult(store=store, attrs=s.attrs, features=s.features, skipped=True)

    key_hex = (hash_key.hex() if hash_key else None) or (old or {}).get("hash_key") or os.urandom(16).hex()
    reusable = incremental and _reusable(store, old, fingerprint, key_hex)
    n = len(inputs.files)
    resume = (
        old is not None
        and old.get("complete") is not True
        and old.get("source", {}).get("manifest") == manifest
        and old.get("hash_key") == key_hex  # finished batches hashed their identifiers with this key
        and isinstance(old.get("build", {}).get("batch_files"), int)
        and (store / STAGING / "zarr.json").is_file()
        and (store / PROGRESS).is_dir()
    )
    if resume:
        batch = int(old["build"]["batch_files"])
        reusable = reusable and old.get("reuse_source_valid") is True
    else:
        batch = _batch_size(n, workers)
        if reusable:
            # Keep `images` + `features.parquet` as the reuse source; the store stops being complete first.
            write_attrs(store, {**old, "complete": False, "reuse_source_valid": True})
            _remove_staging(store)
        else:
            if store.exists():
                remove_store(store)
            zarr.open_group(str(store), mode="w")
        group = zarr.open_group(str(store), mode="r+")
        staging_cfg = PrepConfig.from_dict({**cfg.to_dict(), "shard_size": batch})
        create_image_array(group, STAGING, n, staging_cfg)
        (store / PROGRESS).mkdir(exist_ok=True)
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
            "bytes": int(sum(os.lstat(p).st_size for p in inputs.files)),
            "manifest": manifest,
        },
        "build": {"batch_files": batch, "workers": workers, "scheduler": scheduler or "local"},
        "created": (old or {}).get("created") or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "complete": False,
        "reuse_source_valid": bool(reusable),
    }
    write_attrs(store, attrs)

    reuse = _reuse_map(store) if reusable else {}
    done = {int(p.stem.split("_")[1]) for p in (store / PROGRESS).glob("batch_*.parquet")}
    calls = []
    for index, start in enumerate(range(0, n, batch)):
        if index in done:
            continue
        paths = [str(p) for p in inputs.files[start : start + batch]]
        sub = {p.name: reuse[p.name] for p in inputs.files[start : start + batch] if p.name in reuse}
        calls.append((process_batch, (str(store), cfg.to_dict(), key_hex, index, start, paths, sub, _suspects(store, index))))
    n_todo = sum(len(c[1][5]) for c in calls)
    bar = _bar(n, n - n_todo, "decode", progress)

    def with_suspects(args: tuple) -> tuple:
        return (*args[:7], sorted(set(args[7]) | set(_suspects(store, args[3]))))

    _run_tasks(calls, workers=workers, scheduler=scheduler, on_done=bar.update, retry_args=with_suspects)
    bar.close()

    parts = sorted((store / PROGRESS).glob("batch_*.parquet"))
    staged = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True) if parts else pd.DataFrame(
        columns=[*ROW_COLUMNS, "file", "input_index", "_reused"]
    )
    if len(staged) != n:
        raise BuildError(f"internal: {len(staged)} staged rows for {n} files in {store}; rerun the build to resume")
    n_reused = int(staged["_reused"].astype(bool).sum())
    staged = staged.drop(columns=["_reused"])
    table = _assemble(inputs, staged)
    n_ok = int((table["status"] == OK).sum())
    n_quarantined = int((table["status"] == QUARANTINED).sum())
    if strict and n_quarantined:
        counts = table.loc[table["status"] == QUARANTINED, "reason"].value_counts().to_dict()
        raise BuildError(
            f"--strict: {n_quarantined} file(s) quarantined {counts}; see `detail` in the message rows or drop --strict. "
            f"The store {store} is left incomplete."
        )

    # From here `images` is overwritten: the old store can no longer serve as a reuse source.
    attrs["reuse_source_valid"] = False
    write_attrs(store, attrs)
    _kill_point("compact_start")
    bar = _bar(n_ok, 0, "compact", progress)
    images = _compact(store, table, cfg, bar.update)
    bar.close()
    tmp = store / (FEATURES_FILE + ".tmp")
    table.to_parquet(tmp, index=False)
    os.replace(tmp, store / FEATURES_FILE)
    write_json(store / QUALITY_FILE, quality_report(table, cfg))
    _kill_point("features")

    attrs["counts"] = {
        "n_files": n,
        "n_ok": n_ok,
        "n_quarantined": n_quarantined,
        "n_missing_file": int((table["status"] == MISSING).sum()),
        "n_rows": len(table),
    }
    attrs["shape"] = list(images.shape)
    attrs["build"].update(
        {
            "seconds": round(time.perf_counter() - t0, 3),
            "decoded": n - n_reused,
            "reused": n_reused,
            "resumed_batches": len(done),
            "incremental": bool(reusable),
        }
    )
    attrs["complete"] = True  # written last: a reader never trusts a store without it
    write_attrs(store, attrs)
    _kill_point("complete")
    _remove_staging(store)
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
