"""``neurocache build``: a data folder -> a complete store, in parallel with Dask, resumable and incremental.

Phases (each task writes whole shards, so parallel writes never collide):

1. **decode** — the files, sorted by ID, are cut into batches (a divisor of ``shard_size`` files,
   :func:`_batch_size`); each Dask task reads and preprocesses one batch, writes its images into the
   ``_staging`` array (one shard file per batch, made in one pass: :mod:`neurocache.shards`) and then
   its feature rows into ``_progress/batch_NNNNNN.parquet`` (temp file + rename: the task's commit
   record). A batch whose progress file exists is done: a build killed at any point and rerun with
   the same command continues from there.
2. **compact** — the client copies the ``ok`` slices into ``images`` (rows ordered by ID) as encoded
   bytes, never decoding them: a staging shard whose rows land 1:1 on an ``images`` shard is linked
   (or copied) whole, other ``images`` shards are assembled from the staging shards' chunks
   (:func:`_compact`). It then writes ``features.parquet`` and ``quality.json``, writes
   ``complete: true`` last, then removes the staging data. A store is never marked complete before
   all of its data is written.

**Incremental builds.** When the store is complete with the same preprocessing fingerprint, hash key
and package version but the folder changed (files added, removed, replaced, or the labels CSV
edited), the old ``images`` and ``features.parquet`` stay in place as a *reuse source* while the
new build stages: a file whose name and content hash (sha256) match an old row is not decoded
again — its feature row and image are copied from the old store. The result is identical to a
from-scratch build; ``attrs["build"]`` reports ``decoded`` and ``reused``. Before compaction
overwrites ``images`` the reuse source is declared invalid in the attrs, so a later kill never
reuses half-written data.

**Where it runs.** Tasks run in this process (``workers=1``), on Dask's local multiprocessing
scheduler over ``workers=N`` processes forked from a forkserver that imported this module once
(:func:`_run_local`: no cluster to start and stop, and a codec crash still costs only its worker),
or on an existing dask.distributed cluster (``scheduler=``: a ``tcp://`` address or a scheduler
file). A task writes its shard straight into the store and sends back only its feature rows (the
Parquet bytes of its commit record, a few kB); the client assembles the table from those, writes
``features.parquet`` and ``quality.json`` and marks the store complete. The store may be a folder
the workers see, or an fsspec URL (``s3://bucket/store.zarr``) — see :mod:`neurocache.remote`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import math
import os
import re
import signal
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import zarr

from neurocache import SCHEMA_VERSION, __version__
from neurocache.config import PrepConfig
from neurocache.dicomio import quiet_pydicom
from neurocache.inputs import ID_COL, LABEL_COL, InputError, Inputs, label_id, scan_inputs
from neurocache.names import shown_name
from neurocache.isolate import preprocess_isolated
from neurocache.preprocess import ROW_COLUMNS, file_digest, preprocess_file
from neurocache.quality import quality_report
from neurocache.reasons import ENTRY_REASONS, MISSING, OK, QUARANTINED, TABLE_REASONS
from neurocache.remote import StoreLocation, StoreURL, store_address
from neurocache.shards import NO_CHUNK, ShardLayout
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
    write_store_json,
)

STAGING = "_staging"
PROGRESS = "_progress"


class BuildError(RuntimeError):
    """The build cannot go on (``--strict`` with quarantined files, an unusable store path)."""


@dataclass
class BuildResult:
    """What a build did: the store path, its summary attrs and whether anything was (re)computed."""

    store: Path | StoreURL
    attrs: dict[str, Any]
    features: pd.DataFrame
    skipped: bool  # True when the store was already complete with the same inputs and parameters


#: Names the build creates inside a store folder: a folder holding only these (e.g. the remains of a
#: killed ``--force`` removal) may be rebuilt; anything else is refused as "not a neurocache store".
STORE_MEMBERS = {"zarr.json", "images", STAGING, PROGRESS, FEATURES_FILE, QUALITY_FILE}

#: Test hook: ``NEUROCACHE_TEST_KILL=POINT:N`` SIGKILLs this process the N-th time it passes POINT
#: (``file``, ``batch_images``, ``batch``, ``compact_start``, ``compact``, ``features``, ``complete``).
#: Used by tests/test_resume.py to kill a real build at precise points; unset, it costs nothing.
#: ``NEUROCACHE_TEST_KILL_ONCE=POINT:N:MARKER`` does the same, but only in the first process that gets
#: there and creates the file MARKER (tests/test_cluster.py: one Dask worker dies once, mid-build).
_KILL_ENV = "NEUROCACHE_TEST_KILL"
_KILL_ONCE_ENV = "NEUROCACHE_TEST_KILL_ONCE"
_kill_counts: dict[str, int] = {}
_kill_once_counts: dict[str, int] = {}


def _kill_point(point: str) -> None:
    once = os.environ.get(_KILL_ONCE_ENV)
    if once:
        name, _, rest = once.partition(":")
        n, _, marker = rest.partition(":")
        if name == point:
            _kill_once_counts[point] = _kill_once_counts.get(point, 0) + 1
            if _kill_once_counts[point] >= int(n or 1):
                try:
                    fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    pass
                else:
                    os.write(fd, str(os.getpid()).encode())
                    os.close(fd)
                    os.kill(os.getpid(), signal.SIGKILL)
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
    complete store is up to date and whether an interrupted build may be resumed. Names are hashed
    as their bytes, so a name that is not valid UTF-8 counts too.
    """
    h = hashlib.sha256()
    lines = []
    for p in inputs.files:
        st = os.lstat(p)
        lines.append(os.fsencode(p.name) + f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    h.update(b"".join(lines))  # the same bytes as one update per file, hashed in one call
    h.update(inputs.labels_path.read_bytes())
    return h.hexdigest()


def _regular_bytes(paths: list[Path]) -> int:
    """Total size of the regular files among ``paths`` (from ``lstat``: folders, symlinks and special
    files count 0, as they are never read)."""
    sizes = (os.lstat(p) for p in paths)
    return int(sum(st.st_size for st in sizes if stat.S_ISREG(st.st_mode)))


def _batch_size(n_files: int, workers: int, shard_size: int) -> int:
    """Files per task: a divisor of ``shard_size`` (so ``images`` shards are made of whole staging
    shards), the largest one that still gives 8 tasks per worker for load balance, and at least
    ``min(8, shard_size)`` files. Large inputs get whole shards (``shard_size`` files per task), which
    compaction then links into ``images`` without reading them."""
    want = math.ceil(n_files / (8 * max(1, workers)))
    divisors = [d for d in range(min(8, shard_size), shard_size + 1) if shard_size % d == 0]
    fits = [d for d in divisors if d <= want]
    return max(fits) if fits else divisors[0]


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
    reuse: bytes | None = None,
    suspects: list[str] | None = None,
) -> dict[str, Any]:
    """One Dask task: preprocess ``paths`` and write the staging shard that begins at row ``start``.

    ``store`` is the store's folder or URL as the worker sees it (:mod:`neurocache.remote`).

    Before decoding each file the task writes its name to ``_progress/inflight_NNNNNN.txt``; a
    process that dies mid-batch thus names its *suspect*, and the next attempt decodes ``suspects``
    in a child process (:mod:`neurocache.isolate`), so a codec crash becomes a ``decoder_crash`` row.

    ``reuse`` is the Parquet bytes of the old feature rows of this batch's files that a rebuild may
    copy (:func:`_reuse_rows`: the per-file columns, ``file`` and ``row``): when a file's content hash
    still matches its row's ``sha256``, the row and its image are copied from the old store instead
    of decoding it. The task reads only these rows and their images, never the whole old table. Writes the images (quarantined slots keep the fill value) and then, atomically, the
    batch's feature rows; the progress file is the task's commit record. Returns
    ``{"index", "n", "rows"}``: ``rows`` is the commit record's Parquet bytes, so the client needs no
    second read of it (and no image ever travels back).
    """
    # One thread per task for zarr/blosc (Dask already runs one task per core), for this task only:
    # with workers=1 the task runs in the caller's process, whose own Zarr reads keep their threads.
    with zarr.config.set({"threading.max_workers": 1, "async.concurrency": 4}):
        return _process_batch(store, prep, key_hex, index, start, paths, reuse, suspects)


def _process_batch(
    store: str,
    prep: dict[str, Any],
    key_hex: str,
    index: int,
    start: int,
    paths: list[str],
    reuse: bytes | None,
    suspects: list[str] | None,
) -> dict[str, Any]:
    cfg = PrepConfig.from_dict(prep)
    key = bytes.fromhex(key_hex)
    suspects = set(suspects or ())
    loc = StoreLocation(store)
    journal = _Journal(loc, f"{PROGRESS}/inflight_{index:06d}.txt")
    old_feats = old_images = None
    hits: dict[str, tuple[str, int]] = {}  # file name -> (old sha256, position in old_feats)
    if reuse:
        old_feats = pd.read_parquet(io.BytesIO(reuse))
        hits = {str(f): (str(h), i) for i, (f, h) in enumerate(zip(old_feats["file"], old_feats["sha256"]))}
        old_images = zarr.open_array(loc.member_store("images", read_only=True), mode="r")
    stack = np.full((len(paths), cfg.size, cfg.size), cfg.pad_hu, dtype=np.int16)
    rows = []
    from_old: dict[int, int] = {}  # slot in this batch -> row of the old images
    with quiet_pydicom():  # once per batch, not per file
        for i, p in enumerate(paths):
            name = Path(p).name
            image, row, reused = None, None, False
            hit = hits.get(shown_name(name))
            if hit is not None and old_feats is not None and os.path.isfile(p) and not os.path.islink(p):
                try:
                    digest = file_digest(Path(p))[1]
                except OSError:
                    digest = ""
                if digest == hit[0]:
                    rec = old_feats.iloc[int(hit[1])]
                    row, reused = _reused_row(rec), True
                    if row["status"] == OK:
                        from_old[i] = int(rec["row"])
            if row is None:
                journal.note(name)
                if name in suspects:
                    image, row = preprocess_isolated(p, cfg, key, _isolate_scratch(loc))
                else:
                    image, row = preprocess_file(p, cfg, key)
                _kill_point("file")
            if image is not None:
                stack[i] = image
            row["file"] = shown_name(name)  # valid UTF-8 for Parquet; the bytes of a bad name escaped
            row["input_index"] = start + i
            row["_reused"] = reused
            rows.append(row)
    if from_old:  # the reused images, read in runs of consecutive old rows
        slots = sorted(from_old, key=from_old.get)
        stack[slots] = _read_rows(old_images, np.array([from_old[i] for i in slots]))
    _write_staging(loc, start, stack)
    _kill_point("batch_images")
    frame = pd.DataFrame(rows, columns=[*ROW_COLUMNS, "file", "input_index", "_reused"])
    data = loc.write_parquet(_batch_name(index), frame)
    journal.remove()
    _kill_point("batch")
    return {"index": index, "n": len(paths), "rows": data}


def _write_staging(loc: StoreLocation, start: int, stack: np.ndarray) -> None:
    """Write ``stack`` as the staging shard that begins at row ``start``: one shard file made here
    (:mod:`neurocache.shards`), or through Zarr when the array is not in the layout made here."""
    layout = ShardLayout.of(loc.read_bytes(f"{STAGING}/zarr.json"))
    if (layout is None or start % layout.shard or len(stack) > layout.shard
            or zarr.config.get("array.write_empty_chunks")):
        staging = zarr.open_array(loc.member_store(STAGING), mode="r+")
        staging[start : start + len(stack)] = stack
        return
    key = f"{STAGING}/{layout.key(start // layout.shard)}"
    data = layout.encode(stack)
    if data is None:
        loc.rm(key)  # every slice quarantined: no shard, as Zarr does (and none left by an earlier attempt)
    else:
        loc.put(key, data)


class _Journal:
    """``_progress/inflight_NNNNNN.txt``: the name of the file a task is decoding, rewritten before each
    file, as one line of JSON (ASCII: a name with a newline or bytes that are not UTF-8 survives; see
    :func:`_suspects`). Locally one open file rewritten in place (a write and a truncate, no
    open/close per file); on an object store one small object per file."""

    def __init__(self, loc: StoreLocation, name: str) -> None:
        self.loc, self.name, self.fd = loc, name, None

    def note(self, file: str) -> None:
        data = (json.dumps(file) + "\n").encode()
        if self.loc.path is None:
            self.loc.write_bytes(self.name, data, atomic=False)
            return
        if self.fd is None:
            self.fd = os.open(self.loc.path / self.name, os.O_WRONLY | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o644)
        os.pwrite(self.fd, data, 0)  # one write: a reader after a crash sees the whole first line
        os.ftruncate(self.fd, len(data))

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def remove(self) -> None:
        self.close()
        self.loc.rm(self.name)

    def __del__(self) -> None:  # a task that raised: do not leak the descriptor in a long-lived worker
        self.close()


def _batch_name(index: int) -> str:
    """The commit record of batch ``index``, relative to the store."""
    return f"{PROGRESS}/batch_{index:06d}.parquet"


_BATCH_RE = re.compile(r"^batch_(\d+)\.parquet$")


def _done_batches(loc: StoreLocation) -> set[int]:
    """Batches whose commit record exists."""
    return {int(m.group(1)) for m in map(_BATCH_RE.match, loc.listdir(PROGRESS)) if m}


def _isolate_scratch(loc: StoreLocation) -> Path:
    """Local scratch folder for :func:`neurocache.isolate.preprocess_isolated` (inside a local store)."""
    if loc.path is not None:
        return loc.path / PROGRESS / "isolate"
    return Path(tempfile.gettempdir()) / "neurocache-isolate"


def _suspects(loc: StoreLocation, index: int) -> list[str]:
    """The file a dead process was decoding in batch ``index`` (from its in-flight journal), if any."""
    try:
        text = loc.read_text(f"{PROGRESS}/inflight_{index:06d}.txt")
    except (OSError, FileNotFoundError):
        return []
    line = text.split("\n", 1)[0]
    try:
        name = json.loads(line)
    except ValueError:
        name = None
    if not isinstance(name, str):
        name = line.strip()  # a journal written before names were JSON
    return [name] if name else []


def _run_tasks(
    calls: list[tuple[Callable[..., Any], tuple]],
    *,
    workers: int,
    scheduler: str | None,
    on_done: Callable[[Any], None],
    retry_args: Callable[[tuple], tuple] = lambda a: a,
    worker_check: tuple[str, str] | None = None,
) -> None:
    """Run task calls serially (workers == 1, no scheduler), on local worker processes, or on a
    dask.distributed cluster.

    With no ``scheduler`` the tasks run on Dask's local multiprocessing scheduler over a pool of
    ``workers`` single-threaded processes (:func:`_run_local`; pydicom holds the GIL, so processes,
    not threads); with one, the existing cluster is used, after checking that every worker sees
    ``worker_check`` = (CT folder, store) (:func:`_worker_sees`).
    """
    if scheduler is None and workers <= 1:
        for fn, args in calls:
            on_done(fn(*args))
        return
    if scheduler is None:
        _run_local(calls, workers=workers, on_done=on_done, retry_args=retry_args)
        return
    from dask.distributed import as_completed

    client = _client(scheduler)
    if worker_check is not None:
        try:
            blind = {w: why for w, why in client.run(_worker_sees, *worker_check).items() if why}
        except Exception:
            client.close()
            raise
        if blind:
            client.close()
            raise BuildError(
                f"{len(blind)} worker(s) of {scheduler} cannot see what the build needs: "
                + "; ".join(f"{w}: {why}" for w, why in sorted(blind.items()))
                + ". Workers must reach --data-root and --store at the same path or URL as this command "
                "(a shared filesystem, or an object-store URL with credentials in each worker's environment)."
            )
    failed: list[tuple[Callable[..., Any], tuple]] = []
    try:
        futures = {client.submit(fn, *args, pure=False, retries=2): (fn, args) for fn, args in calls}
        for fut in as_completed(list(futures)):
            try:
                on_done(fut.result())
            except Exception:  # e.g. KilledWorker: a codec crashed the worker process, every retry
                failed.append(futures[fut])
    finally:
        client.close()
    # Redo those batches here, every file decoded in a child process (a dead worker's journal may
    # not name the file that killed it, and this process must survive it). A batch that fails for
    # another reason (disk full, a bug) raises now, with its real error.
    for fn, args in failed:
        on_done(fn(*_isolate_all(retry_args(args))))


#: Pool attempts of a local build before the batches still left are run in this process.
_LOCAL_ATTEMPTS = 3


def _run_local(
    calls: list[tuple[Callable[..., Any], tuple]],
    *,
    workers: int,
    on_done: Callable[[Any], None],
    retry_args: Callable[[tuple], tuple],
) -> None:
    """``calls`` on Dask's local multiprocessing scheduler (``dask.multiprocessing.get``) over a
    ``ProcessPoolExecutor`` of ``workers`` processes.

    The processes come from a *forkserver* (``spawn`` where there is none) that has imported this
    module once: starting a pool costs one interpreter start and import in all, not one per worker,
    and none later in the same process; no worker inherits this process's threads or imports (no
    torch). Each worker takes this process's environment as it is now.

    A worker that dies (a codec crash) breaks the pool: the batches not finished run again on a new
    pool, each decoding the file named by its in-flight journal in a child process (``retry_args``).
    Batches still failing after :data:`_LOCAL_ATTEMPTS` pools run here, raising their real error.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import dask
    import dask.multiprocessing
    from dask.callbacks import Callback

    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        # The modules a worker needs, imported once by the server (no effect once it runs: it has them).
        ctx.set_forkserver_preload(["neurocache.build", "dask.local"])
    todo = list(calls)
    for attempt in range(_LOCAL_ATTEMPTS):
        if not todo:
            return
        if attempt:
            todo = [(fn, retry_args(args)) for fn, args in todo]
        finished: set[int] = set()

        class _Collect(Callback):
            def _posttask(self, key, result, dsk, state, worker_id):  # noqa: ANN001 - Dask's hook
                if isinstance(key, str) and key.startswith("nc-task-"):
                    on_done(result)
                    finished.add(int(key.rsplit("-", 1)[1]))

        tasks = [dask.delayed(fn, pure=False)(*args, dask_key_name=f"nc-task-{i}") for i, (fn, args) in enumerate(todo)]
        pool = ProcessPoolExecutor(min(workers, len(todo)), mp_context=ctx, initializer=_init_worker,
                                   initargs=(dict(os.environ),))
        try:
            with _Collect():
                # The scheduler function itself: naming it ("processes") makes Dask import
                # dask.distributed (~0.3 s) to look for a default client first.
                dask.compute(*tasks, scheduler=dask.multiprocessing.get, pool=pool, chunksize=1, optimize_graph=False)
        except Exception:  # BrokenProcessPool (a worker died) or a task's own error: retried below
            pass
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        todo = [c for i, c in enumerate(todo) if i not in finished]
    for fn, args in todo:
        on_done(fn(*_isolate_all(retry_args(args))))


def _isolate_all(args: tuple) -> tuple:
    """:func:`process_batch` arguments with every file of the batch a suspect, for the last-resort
    redo in the client process: each file is then decoded in a child process, so a codec crash costs
    a ``decoder_crash`` row, never the build."""
    return (*args[:7], sorted({Path(p).name for p in args[5]}))


def _init_worker(environ: dict[str, str]) -> None:
    """Start of a local worker process: the parent's current environment (credentials, test hooks)."""
    os.environ.clear()
    os.environ.update(environ)


def _worker_sees(cts_dir: str, store: str) -> str:
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


def _client(scheduler: str):
    """A client of the existing cluster at ``scheduler`` (``tcp://HOST:PORT`` or a scheduler-file JSON)."""
    from dask.distributed import Client

    if scheduler.endswith(".json") and not Path(scheduler).is_file():
        raise BuildError(f"--scheduler {scheduler}: no such scheduler file")
    try:
        if scheduler.endswith(".json"):
            return Client(scheduler_file=scheduler)
        return Client(scheduler)
    except (OSError, TimeoutError, ValueError) as e:
        raise BuildError(f"cannot connect to the Dask scheduler {scheduler}: {type(e).__name__}: {e}") from e


def _cluster_threads(scheduler: str) -> int:
    """Worker threads of the cluster at ``scheduler`` (sizes the batches: 8 tasks per thread)."""
    with _client(scheduler) as client:
        return int(sum(client.nthreads().values()))


def _assemble(inputs: Inputs, staged: pd.DataFrame) -> pd.DataFrame:
    """The feature table from the staged per-file rows and the labels CSV.

    Sets ``ID``, ``label``, ``status``/``reason`` for files without a label, duplicate IDs and
    labels without a file, and ``row`` (the index into ``images``; -1 when not ok), ordered by ID.

    A label row belongs to every entry that answers to its ID (:func:`neurocache.inputs.label_id`:
    the entry's ID, or for a name that is not valid UTF-8 the ID of its Latin-1 reading), whatever
    the entry's type, so it is ``missing_file`` only when no entry answers to it. Entries quarantined
    for their type or name (:data:`ENTRY_REASONS`) are not files of their ID: they never make
    another file a ``duplicate_file`` and keep their own reason.

    Vectorised joins and sorts only (O(n log n) in files + labels, no Python step per duplicate;
    one :func:`label_id` call per entry): ``tests/test_scale.py`` compares 2k against 20k rows.
    """
    labels = inputs.labels.set_index(ID_COL)
    staged = staged.sort_values("input_index").reset_index(drop=True)
    staged.insert(0, ID_COL, [Inputs.file_id(Path(f)) for f in staged["file"]])
    answers = pd.Series([label_id(inputs.files[int(k)].name) for k in staged["input_index"]], dtype=object)
    staged.insert(1, "label", answers.map(labels[LABEL_COL]).astype("Int8").to_numpy())

    files = ~staged["reason"].isin(list(ENTRY_REASONS))
    dup = (staged[ID_COL].where(files).duplicated(keep="first") & files).to_numpy()
    if dup.any():
        first = staged.loc[files].groupby(ID_COL, sort=False)["file"].first()
        staged.loc[dup, "detail"] = (staged.loc[dup, "file"] + ": same ID as " + staged.loc[dup, ID_COL].map(first)).to_numpy()
        staged.loc[dup, "status"] = QUARANTINED
        staged.loc[dup, "reason"] = "duplicate_file"
    nolab = (staged["label"].isna() & (staged["status"] == OK)).to_numpy()
    staged.loc[nolab, "reason"] = "no_label"
    staged.loc[nolab, "detail"] = [f"{f}: ID not in {inputs.labels_path.name}" for f in staged.loc[nolab, "file"]]
    staged.loc[nolab, "status"] = QUARANTINED

    missing_ids = inputs.labels.loc[~inputs.labels[ID_COL].isin(answers), ID_COL].tolist()
    if missing_ids:
        miss = pd.DataFrame({ID_COL: missing_ids})
        miss["label"] = pd.array(labels.loc[missing_ids, LABEL_COL].astype(int).to_numpy(), dtype="Int8")
        miss["status"] = MISSING
        miss["reason"] = "missing_file"
        miss["detail"] = [f"{i}: no file {i}.dcm (or {i}) in {inputs.cts_dir.name}/" for i in missing_ids]
        miss["file"] = ""
        miss["input_index"] = -1
        staged = pd.concat([staged, miss], ignore_index=True)
        answers = pd.concat([answers, pd.Series(missing_ids, dtype=object)], ignore_index=True)

    # Extra CSV columns are kept (prefixed when a name is taken); None where the entry answers to no label row.
    extra = [c for c in inputs.labels.columns if c not in (ID_COL, LABEL_COL)]
    has_label = answers.isin(labels.index).to_numpy()
    for c in extra:
        name = c if c not in staged.columns else f"csv_{c}"
        values = labels[c].reindex(answers).to_numpy(dtype=object, copy=True)
        values[~has_label] = None
        staged[name] = values.tolist()

    staged = staged.sort_values([ID_COL, "file"], kind="stable").reset_index(drop=True)
    ok = (staged["status"] == OK).to_numpy()
    row = np.full(len(staged), -1, dtype=np.int64)
    row[ok] = np.arange(int(ok.sum()))
    staged.insert(2, "row", row)
    return staged


def _compact(loc: StoreLocation, table: pd.DataFrame, cfg: PrepConfig, progress: Callable[[int], None]) -> zarr.Array:
    """Copy the ok slices from ``_staging`` into a fresh ``images`` in ``row`` order, one output shard at a time.

    Staging and ``images`` encode each slice alike (one chunk per slice, same codecs), so no slice is
    decoded: an output shard whose rows are one whole staging shard, in order, is that shard's file
    (linked locally, copied server-side on an object store); any other output shard is assembled from
    the staging shards' encoded chunks (:class:`_ShardCopier`). Should the two arrays' layouts differ
    (a build resumed across versions), the slices are read in contiguous runs and re-encoded.
    ``_staging`` is left intact, so a compaction killed half-way simply runs again.
    """
    loc.rm("images")  # a Zarr v3 array is its folder/prefix (no consolidated metadata to update)
    group = zarr.open_group(loc.zarr_store(), mode="r+")
    ok = table[table["status"] == OK].sort_values("row")
    src_idx = ok["input_index"].to_numpy()
    images = create_image_array(group, "images", len(src_idx), cfg)
    if len(src_idx) == 0:
        return images
    staging = group[STAGING]
    copier = _ShardCopier.create(loc, staging, images)
    shard = images.shards[0]
    for j, start in enumerate(range(0, len(src_idx), shard)):
        idx = src_idx[start : start + shard]
        if copier is not None:
            copier.write(j, idx)
        else:
            images[start : start + len(idx)] = _read_rows(staging, idx)
        progress(len(idx))
        _kill_point("compact")
    return images


def _read_rows(array: zarr.Array, idx: np.ndarray) -> np.ndarray:
    """``array[idx]`` read as contiguous runs of ``idx`` (several times faster than an orthogonal selection)."""
    runs = np.split(idx, np.flatnonzero(np.diff(idx) != 1) + 1)
    return np.concatenate([array[int(r[0]) : int(r[-1]) + 1] for r in runs])


class _ShardCopier:
    """Writes ``images`` shards from ``_staging``'s encoded slices (:mod:`neurocache.shards`), no slice
    decoded: with one slice per chunk and the same codec, a slice's encoded bytes are the same in both
    arrays, so an output shard is its slices' chunk bytes plus a new index, byte for byte what Zarr
    would write."""

    def __init__(self, loc: StoreLocation, src: ShardLayout, dst: ShardLayout, n_staged: int) -> None:
        self.loc, self.src, self.dst, self.n_staged = loc, src, dst, n_staged
        self._cache: dict[int, tuple[bytes, np.ndarray]] = {}

    @classmethod
    def create(cls, loc: StoreLocation, staging: zarr.Array, images: zarr.Array) -> "_ShardCopier | None":
        """A copier when both arrays have the layout :mod:`neurocache.shards` knows, the same slice
        codec, else None (the caller re-encodes)."""
        try:
            src, dst = (ShardLayout.of(loc.read_bytes(f"{name}/zarr.json")) for name in (STAGING, "images"))
        except OSError:
            return None
        if src is None or dst is None or not src.same_chunks(dst):
            return None
        return cls(loc, src, dst, int(staging.shape[0]))

    def _staged(self, s: int) -> tuple[bytes, np.ndarray]:
        """(bytes, index) of staging shard ``s``; an absent shard has only absent chunks."""
        if s not in self._cache:
            if len(self._cache) >= 8:
                self._cache.pop(next(iter(self._cache)))
            what = f"{STAGING} shard {s}"
            try:
                blob = self.loc.read_bytes(f"{STAGING}/{self.src.key(s)}")
            except FileNotFoundError:
                blob, index = b"", np.full((self.src.shard, 2), NO_CHUNK, dtype="<u8")
            else:
                try:
                    index = self.src.index(blob, what)
                except ValueError as e:
                    raise BuildError(f"{e}; rerun with --force to rebuild the store") from None
            self._cache[s] = (blob, index)
        return self._cache[s]

    def write(self, j: int, idx: np.ndarray) -> None:
        """Write ``images`` shard ``j`` holding the staging rows ``idx`` (in that order)."""
        b = self.src.shard
        dst = f"images/{self.dst.key(j)}"
        s0, r0 = divmod(int(idx[0]), b)
        if (b == self.dst.shard and r0 == 0 and len(idx) == min(b, self.n_staged - s0 * b)
                and bool(np.all(np.diff(idx) == 1))):
            # The output shard is staging shard s0, byte for byte: link (or copy) the file.
            try:
                self.loc.copy(f"{STAGING}/{self.src.key(s0)}", dst)
            except FileNotFoundError:
                pass  # no staging shard: its slices are all absent, and so is the output shard
            return
        chunks: list[memoryview | None] = []
        for i in idx.tolist():
            blob, index = self._staged(i // b)
            off, n = index[i % b]
            chunks.append(None if off == NO_CHUNK else memoryview(blob)[int(off) : int(off) + int(n)])
        data = self.dst.pack(chunks)
        if data is not None:
            self.loc.put(dst, data)


def _is_remnant(loc: StoreLocation) -> bool:
    """True when the store holds only names a build creates (a store whose removal was interrupted)."""
    return all(name in STORE_MEMBERS or name.endswith((".tmp", ".partial")) for name in loc.listdir())


def _remove_staging(loc: StoreLocation) -> None:
    """Delete ``_staging`` and ``_progress`` (the decode phase's scratch data); a Zarr v3 array is
    just its folder/prefix, so removing that removes the array."""
    loc.rm(PROGRESS)
    loc.rm(STAGING)


def _reuse_rows(loc: StoreLocation, files: list[Path]) -> tuple[pd.DataFrame, np.ndarray]:
    """The old feature rows a rebuild may copy (per-file columns, ``file``, ``row``) and, for each of
    ``files``, its position among them (-1: decode it). One read of the old table and one vectorised
    lookup, so the client's cost is linear in files and each task is sent only its own rows.

    Rows whose status was set by the label join (``no_label``, ``duplicate_file``) are left out: the
    table does not hold their decode result, so such files are decoded again.
    """
    old = loc.read_parquet(FEATURES_FILE, columns=[*ROW_COLUMNS, "row", "file"])
    keep = (old["file"].astype(str) != "") & (old["sha256"].astype(str) != "")
    keep &= (old["status"] == OK) | ((old["status"] == QUARANTINED) & ~old["reason"].isin(list(TABLE_REASONS)))
    old = old[keep].drop_duplicates("file", keep="last").reset_index(drop=True)
    pos = pd.Index(old["file"].astype(str)).get_indexer([shown_name(p.name) for p in files])  # as the table holds them
    return old, pos


def _rows_bytes(frame: pd.DataFrame) -> bytes:
    """``frame`` as Parquet bytes (no index)."""
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return buf.getvalue()


def _reusable(loc: StoreLocation, old: dict[str, Any] | None, fingerprint: str, key_hex: str) -> bool:
    """Whether the store's current ``images`` + ``features.parquet`` may serve as a reuse source."""
    return bool(
        old is not None
        and old.get("fingerprint") == fingerprint
        and old.get("hash_key") == key_hex
        and old.get("package_version") == __version__
        and old.get("schema_version") == SCHEMA_VERSION
        and (old.get("complete") is True or old.get("reuse_source_valid") is True)
        and loc.isfile("images/zarr.json")
        and loc.isfile(FEATURES_FILE)
        and _has_columns(loc, FEATURES_FILE, [*ROW_COLUMNS, "row", "file"])
    )


def _has_columns(loc: StoreLocation, name: str, columns: list[str]) -> bool:
    try:
        return set(columns) <= set(loc.parquet_schema_names(name))
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
        store: the store to write: a folder (``STORE.zarr``) or an fsspec URL (``s3://bucket/STORE.zarr``;
            credentials from the environment, see :mod:`neurocache.remote`).
        cfg: preprocessing parameters (defaults when None).
        workers: Dask worker processes (default: all cores); 1 runs in this process, no Dask. With
            ``scheduler`` it only sizes the batches (default: the cluster's worker threads).
        scheduler: address (``tcp://host:port``) or scheduler-file of an existing dask.distributed cluster;
            its workers must see ``data_root`` and ``store`` at the same path or URL (checked first).
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
    loc = StoreLocation(store)
    store = loc.display  # Path or URL, for messages and the result
    inputs = scan_inputs(data_root, labels=labels, cts=cts)
    if inputs.problems:
        raise InputError("the labels CSV cannot be used:\n  " + "\n  ".join(inputs.problems))
    manifest = manifest_digest(inputs)
    fingerprint = cfg.fingerprint()
    workers = int(workers or (_cluster_threads(scheduler) if scheduler else 0) or os.cpu_count() or 1)

    old = read_attrs(loc)
    if old is None and loc.exists() and (not loc.isdir() or (loc.listdir() and not _is_remnant(loc))):
        raise StoreError(f"{store} exists and is not a neurocache store; choose another --store path or remove it")
    if old is not None and old.get("fingerprint") != fingerprint:
        if not force:
            diff = param_diff(old.get("preprocess", {}), cfg.value_params())
            raise StoreError(
                f"store {store} was built with other preprocessing parameters: {'; '.join(diff) or 'schema/code version'}. "
                f"Use --force to replace it, or build into a new --store path."
            )
        remove_store(loc)
        old = None
    if old is not None and old.get("complete") is True and old.get("source", {}).get("manifest") == manifest:
        from neurocache.store import open_store

        if loc.exists(STAGING) or loc.exists(PROGRESS):
            _remove_staging(loc)  # a build killed after `complete` was written, before its cleanup
        s = open_store(loc)
        return BuildResult(store=store, attrs=s.attrs, features=s.features, skipped=True)

    key_hex = (hash_key.hex() if hash_key else None) or (old or {}).get("hash_key") or os.urandom(16).hex()
    reusable = incremental and _reusable(loc, old, fingerprint, key_hex)
    n = len(inputs.files)
    resume = (
        old is not None
        and old.get("complete") is not True
        and old.get("source", {}).get("manifest") == manifest
        and old.get("hash_key") == key_hex  # finished batches hashed their identifiers with this key
        and isinstance(old.get("build", {}).get("batch_files"), int)
        and loc.isfile(f"{STAGING}/zarr.json")
        and (loc.isdir(PROGRESS) or loc.path is None)  # an object store has no empty folders
    )
    if resume:
        batch = int(old["build"]["batch_files"])
        reusable = reusable and old.get("reuse_source_valid") is True
    else:
        batch = _batch_size(n, workers, cfg.shard_size)
        if reusable:
            # Keep `images` + `features.parquet` as the reuse source; the store stops being complete first.
            write_attrs(loc, {**old, "complete": False, "reuse_source_valid": True})
            _remove_staging(loc)
        else:
            if loc.exists():
                remove_store(loc)
            zarr.open_group(loc.zarr_store(), mode="w")
        group = zarr.open_group(loc.zarr_store(), mode="r+")
        staging_cfg = PrepConfig.from_dict({**cfg.to_dict(), "shard_size": batch})
        create_image_array(group, STAGING, n, staging_cfg, flat_keys=True)
        loc.mkdir(PROGRESS)
    attrs: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "package_version": __version__,
        "preprocess": cfg.value_params(),
        "layout": {"shard_size": cfg.shard_size, "compression_level": cfg.compression_level, "shuffle": cfg.shuffle,
                   "chunks": [1, cfg.size, cfg.size]},
        "fingerprint": fingerprint,
        "hash_key": key_hex,
        "source": {
            "data_root": str(Path(data_root).resolve()),
            "cts": cts,
            "labels": labels,
            "n_files": n,
            "bytes": _regular_bytes(inputs.files),
            "manifest": manifest,
        },
        "build": {"batch_files": batch, "workers": workers, "scheduler": scheduler or "local"},
        "created": (old or {}).get("created") or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "complete": False,
        "reuse_source_valid": bool(reusable),
    }
    write_attrs(loc, attrs)

    old_rows, reuse_pos = _reuse_rows(loc, inputs.files) if reusable else (None, np.full(n, -1))
    done = _done_batches(loc)
    calls = []
    for index, start in enumerate(range(0, n, batch)):
        if index in done:
            continue
        paths = [os.path.abspath(p) for p in inputs.files[start : start + batch]]  # workers may run elsewhere
        take = reuse_pos[start : start + batch]
        take = take[take >= 0]
        sub = _rows_bytes(old_rows.iloc[take]) if old_rows is not None and len(take) else None
        calls.append((process_batch, (store_address(loc.url), cfg.to_dict(), key_hex, index, start, paths, sub, _suspects(loc, index))))
    n_todo = sum(len(c[1][5]) for c in calls)
    bar = _bar(n, n - n_todo, "decode", progress)

    def with_suspects(args: tuple) -> tuple:
        return (*args[:7], sorted(set(args[7]) | set(_suspects(loc, args[3]))))

    returned: dict[int, bytes] = {}  # batch index -> its feature rows, sent back by the task

    def on_done(r: dict[str, Any]) -> None:
        returned[int(r["index"])] = r["rows"]
        bar.update(int(r["n"]))

    _run_tasks(calls, workers=workers, scheduler=scheduler, on_done=on_done, retry_args=with_suspects,
               worker_check=(os.path.abspath(inputs.cts_dir), store_address(loc.url)))
    bar.close()

    # Rows of this run's batches came back with their tasks; those of a resumed run's earlier batches
    # are read from their commit records. Same bytes either way, so the same table.
    parts = [pd.read_parquet(io.BytesIO(returned[i])) if i in returned else loc.read_parquet(_batch_name(i))
             for i in sorted(set(returned) | _done_batches(loc))]
    staged = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
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
    write_attrs(loc, attrs)
    _kill_point("compact_start")
    bar = _bar(n_ok, 0, "compact", progress)
    images = _compact(loc, table, cfg, bar.update)
    bar.close()
    loc.write_parquet(FEATURES_FILE, table)
    write_store_json(loc, QUALITY_FILE, quality_report(table, cfg))
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
    write_attrs(loc, attrs)
    _kill_point("complete")
    _remove_staging(loc)
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
