""":func:`build_store`: plan, prepare the store, decode, join the labels, compact, mark complete."""

from __future__ import annotations

import datetime as _dt
import io
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr
from tqdm.auto import tqdm

from neurocache import SCHEMA_VERSION, __version__
from neurocache.build.compact import compact
from neurocache.build.hooks import NO_HOOKS, BuildHooks
from neurocache.build.labels import assemble
from neurocache.build.plan import BuildPlan, StoreFacts, manifest_digest, plan, regular_bytes
from neurocache.build.run import run_batches
from neurocache.build.state import (
    PROGRESS,
    STAGED_COLUMNS,
    STAGING,
    BuildError,
    BuildResult,
    batch_name,
    done_batches,
    remove_staging,
    reuse_rows,
    rows_bytes,
    store_facts,
)
from neurocache.build.tasks import Batch, suspects
from neurocache.config import PrepConfig
from neurocache.errors import InputError
from neurocache.execution import cluster_threads
from neurocache.inputs import Inputs, scan_inputs
from neurocache.preprocess import CONTENT_HASH
from neurocache.quality import quality_report
from neurocache.reasons import MISSING, OK, QUARANTINED
from neurocache.remote import StoreLocation, store_address
from neurocache.store import (
    FEATURES_FILE,
    QUALITY_FILE,
    create_image_array,
    open_store,
    remove_store,
    write_attrs,
    write_store_json,
)


def build_store(
    data_root: str | Path, store: str | Path, *, cfg: PrepConfig | None = None, labels: str = "labels1.csv",
    cts: str = "CTs", workers: int | None = None, scheduler: str | None = None, strict: bool = False,
    force: bool = False, progress: bool = True, hash_key: bytes | None = None, incremental: bool = True,
    hooks: BuildHooks = NO_HOOKS,
) -> BuildResult:
    """Build (or resume, or update incrementally, or confirm up to date) the store for a data folder.

    Args:
        data_root: folder holding ``cts`` (the CT files) and ``labels`` (the labels CSV).
        store: a folder (``STORE.zarr``) or an fsspec URL (``s3://bucket/STORE.zarr``, :mod:`neurocache.remote`).
        cfg: preprocessing parameters (defaults when None).
        workers: worker processes (default: all cores; 1: this process); with ``scheduler`` it only
            sizes the batches (default: the cluster's worker threads).
        scheduler: ``tcp://host:port`` or scheduler-file of a dask.distributed cluster whose workers
            see ``data_root`` and ``store`` at the same path or URL (checked first).
        strict: fail (store left incomplete) when any file is quarantined.
        force: replace a store built with other parameters. progress: show progress bars.
        hash_key: key for the patient/study/series hashes (default: the store's own, or a new random one).
        incremental: reuse unchanged files (same name and content hash) of a previous build of this store.
        hooks: test hooks (:mod:`neurocache.build.hooks`); the default does nothing.

    Raises:
        InputError: unusable data folder or labels CSV. StoreError: other parameters, no ``force``.
        BuildError: ``strict`` and some files were quarantined. ClusterError: no such ``scheduler``.
    """
    cfg, t0, loc = cfg or PrepConfig(), time.perf_counter(), StoreLocation(store)
    inputs = scan_inputs(data_root, labels=labels, cts=cts)
    if inputs.problems:
        raise InputError("the labels CSV cannot be used:\n  " + "\n  ".join(inputs.problems))
    manifest = manifest_digest(inputs)
    workers = int(workers or (cluster_threads(scheduler) if scheduler else 0) or os.cpu_count() or 1)
    facts, decision = _decide(loc, inputs, cfg, manifest, workers, hash_key=hash_key, force=force, incremental=incremental)
    if decision.replace:
        remove_store(loc)
    if decision.action == "noop":
        return _up_to_date(loc)
    if decision.action != "resume":
        _prepare(loc, decision, facts.attrs, cfg, len(inputs.files))
    attrs = _attrs(decision, cfg, inputs, data_root, cts, labels, manifest, workers, scheduler,
                   None if decision.replace else (facts.attrs or {}).get("created"))
    write_attrs(loc, attrs)

    resumed = done_batches(loc)
    staged = _decode(loc, decision, cfg, inputs, workers, scheduler, progress, hooks)
    n_reused = int(staged["_reused"].astype(bool).sum())
    table = assemble(inputs, staged.drop(columns=["_reused"]))
    if strict:
        _refuse_quarantined(table, loc)
    images = _write_outputs(loc, table, cfg, attrs, progress, hooks)
    attrs["counts"] = _counts(table, len(inputs.files))
    attrs["shape"] = list(images.shape)
    attrs["build"].update({"seconds": round(time.perf_counter() - t0, 3), "decoded": len(inputs.files) - n_reused,
                           "reused": n_reused, "resumed_batches": len(resumed), "incremental": decision.reuse})
    attrs["complete"] = True  # written last: a reader never trusts a store without it
    write_attrs(loc, attrs)
    hooks.reached("complete")
    remove_staging(loc)
    return BuildResult(store=loc.display, attrs=attrs, features=table, skipped=False)


def _decide(
    loc: StoreLocation, inputs: Inputs, cfg: PrepConfig, manifest: str, workers: int, *, hash_key: bytes | None,
    force: bool, incremental: bool,
) -> tuple[StoreFacts, BuildPlan]:
    """Read the store at ``loc`` and :func:`plan` the build: (what the store holds, what to do)."""
    facts = store_facts(loc)
    decision = plan(facts, store=str(loc.display), manifest=manifest, fingerprint=cfg.fingerprint(),
                    params=cfg.value_params(), n_files=len(inputs.files), workers=workers,
                    shard_size=cfg.shard_size, new_key_hex=os.urandom(16).hex(),
                    hash_key_hex=hash_key.hex() if hash_key else None, force=force, incremental=incremental)
    return facts, decision


def _up_to_date(loc: StoreLocation) -> BuildResult:
    """The result for a complete store of the same inputs and parameters (nothing is rebuilt)."""
    if loc.exists(STAGING) or loc.exists(PROGRESS):
        remove_staging(loc)  # a build killed after `complete` was written, before its cleanup
    s = open_store(loc)
    return BuildResult(store=loc.display, attrs=s.attrs, features=s.features, skipped=True)


def _refuse_quarantined(table: pd.DataFrame, loc: StoreLocation) -> None:
    """``--strict``: raise :class:`BuildError` when any file is quarantined (the store stays incomplete)."""
    quarantined = table["status"] == QUARANTINED
    if quarantined.any():
        counts = table.loc[quarantined, "reason"].value_counts().to_dict()
        raise BuildError(
            f"--strict: {int(quarantined.sum())} file(s) quarantined {counts}; see `detail` in the message rows or "
            f"drop --strict. The store {loc.display} is left incomplete."
        )


def _prepare(loc: StoreLocation, decision: BuildPlan, old: dict[str, Any] | None, cfg: PrepConfig, n: int) -> None:
    """A fresh or incremental build's empty ``_staging`` array and ``_progress`` folder. An
    incremental build keeps ``images`` + ``features.parquet`` as the reuse source (the store stops
    being complete first); a fresh one starts from an empty group."""
    if decision.reuse:
        write_attrs(loc, {**(old or {}), "complete": False, "reuse_source_valid": True})
        remove_staging(loc)
    else:
        if loc.exists():
            remove_store(loc)
        zarr.open_group(loc.zarr_store(), mode="w")
    group = zarr.open_group(loc.zarr_store(), mode="r+")
    staging_cfg = PrepConfig.from_dict({**cfg.to_dict(), "shard_size": decision.batch_files})
    create_image_array(group, STAGING, n, staging_cfg, flat_keys=True)
    loc.mkdir(PROGRESS)


def _attrs(decision: BuildPlan, cfg: PrepConfig, inputs: Inputs, data_root: str | Path, cts: str, labels: str,
           manifest: str, workers: int, scheduler: str | None, created: str | None) -> dict[str, Any]:
    """The store's ``neurocache`` attrs while it is being built (``complete: false``)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "package_version": __version__,
        "content_hash": CONTENT_HASH,
        "preprocess": cfg.value_params(),
        "layout": {"shard_size": cfg.shard_size, "compression_level": cfg.compression_level, "shuffle": cfg.shuffle,
                   "chunks": [1, cfg.size, cfg.size]},
        "fingerprint": cfg.fingerprint(),
        "hash_key": decision.key_hex,
        "source": {
            "data_root": str(Path(data_root).resolve()),
            "cts": cts,
            "labels": labels,
            "n_files": len(inputs.files),
            "bytes": regular_bytes(inputs.files),
            "manifest": manifest,
        },
        "build": {"batch_files": decision.batch_files, "workers": workers, "scheduler": scheduler or "local"},
        "created": created or _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "complete": False,
        "reuse_source_valid": bool(decision.reuse),
    }


def _decode(loc: StoreLocation, decision: BuildPlan, cfg: PrepConfig, inputs: Inputs, workers: int,
            scheduler: str | None, progress: bool, hooks: BuildHooks) -> pd.DataFrame:
    """Run the batches not yet committed; returns every batch's staged rows (:data:`STAGED_COLUMNS`)."""
    n, size = len(inputs.files), decision.batch_files
    old_rows, reuse_pos = reuse_rows(loc, inputs.files) if decision.reuse else (None, np.full(n, -1))
    done = done_batches(loc)
    batches = []
    for index, start in enumerate(range(0, n, size)):
        if index in done:
            continue
        take = reuse_pos[start : start + size]
        take = take[take >= 0]
        batches.append(Batch(
            store=store_address(loc.url), prep=cfg.to_dict(), key_hex=decision.key_hex, index=index, start=start,
            paths=tuple(os.path.abspath(p) for p in inputs.files[start : start + size]),  # workers may run elsewhere
            reuse=rows_bytes(old_rows.iloc[take]) if old_rows is not None and len(take) else None,
            suspects=tuple(suspects(loc, index)), hooks=hooks,
        ))
    returned: dict[int, bytes] = {}  # batch index -> its feature rows, sent back by the task
    with tqdm(total=n, initial=n - sum(len(b.paths) for b in batches), desc="decode", unit="file",
              dynamic_ncols=True, disable=not progress) as bar:
        def on_done(r: dict[str, Any]) -> None:
            returned[int(r["index"])] = r["rows"]
            bar.update(int(r["n"]))

        run_batches(batches, loc, workers=workers, scheduler=scheduler, on_done=on_done,
                    cts_dir=os.path.abspath(inputs.cts_dir))
    # Rows of this run's batches came back with their tasks; those of a resumed run's earlier batches
    # are read from their commit records. Same bytes either way, so the same table.
    parts = [pd.read_parquet(io.BytesIO(returned[i])) if i in returned else loc.read_parquet(batch_name(i))
             for i in sorted(set(returned) | done_batches(loc))]
    staged = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=STAGED_COLUMNS)
    if len(staged) != n:
        raise BuildError(f"internal: {len(staged)} staged rows for {n} files in {loc.display}; rerun the build to resume")
    return staged


def _write_outputs(loc: StoreLocation, table: pd.DataFrame, cfg: PrepConfig, attrs: dict[str, Any],
                   progress: bool, hooks: BuildHooks) -> zarr.Array:
    """``images`` (compaction), ``features.parquet`` and ``quality.json``. From here ``images`` is
    overwritten: the attrs first declare the old store no longer a valid reuse source."""
    attrs["reuse_source_valid"] = False
    write_attrs(loc, attrs)
    hooks.reached("compact_start")
    n_ok = int((table["status"] == OK).sum())
    with tqdm(total=n_ok, desc="compact", unit="file", dynamic_ncols=True, disable=not progress) as bar:
        images = compact(loc, table, cfg, bar.update, hooks)
    loc.write_parquet(FEATURES_FILE, table)
    write_store_json(loc, QUALITY_FILE, quality_report(table, cfg))
    hooks.reached("features")
    return images


def _counts(table: pd.DataFrame, n_files: int) -> dict[str, int]:
    """``attrs["counts"]``: files, ok, quarantined, labels without a file, table rows."""
    return {
        "n_files": n_files,
        "n_ok": int((table["status"] == OK).sum()),
        "n_quarantined": int((table["status"] == QUARANTINED).sum()),
        "n_missing_file": int((table["status"] == MISSING).sum()),
        "n_rows": len(table),
    }
