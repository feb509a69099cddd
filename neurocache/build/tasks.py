"""The decode phase's task: one batch of files -> one staging shard + one commit record.

A task reads and preprocesses its files (or copies unchanged ones from the reuse source), writes its
images into ``_staging`` (one shard file per batch, :func:`write_staging`) and then its feature rows
into ``_progress/batch_NNNNNN.parquet`` (temp file + rename: the task's commit record). A batch whose
commit record exists is done, so a killed build rerun with the same command continues from there.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr

from neurocache.build.hooks import NO_HOOKS, BuildHooks
from neurocache.build.state import PROGRESS, STAGED_COLUMNS, STAGING, batch_name
from neurocache.config import PrepConfig
from neurocache.dicomio import quiet_pydicom
from neurocache.isolate import preprocess_isolated
from neurocache.names import shown_name
from neurocache.preprocess import ROW_COLUMNS, file_digest, preprocess_file
from neurocache.reasons import OK
from neurocache.remote import StoreLocation
from neurocache.shards import ShardLayout


@dataclass(frozen=True)
class Batch:
    """One decode task (plain values and a hooks object: it travels to worker processes).

    Attributes:
        store: the store's folder or URL as the worker sees it (:func:`neurocache.remote.store_address`).
        prep: the preprocessing parameters (:meth:`PrepConfig.to_dict`).
        key_hex: the hash key for patient/study/series hashes, hex.
        index: the batch number (names its commit record and in-flight journal).
        start: the batch's first row in ``_staging`` (its first file's position in the sorted input).
        paths: absolute paths of its files, in input order.
        reuse: Parquet bytes of the old feature rows of these files that may be copied
            (:func:`neurocache.build.state.reuse_rows`), or None.
        suspects: names of files to decode in a child process (a process died decoding them).
        hooks: the test hooks (:mod:`neurocache.build.hooks`).
    """

    store: str
    prep: dict[str, Any]
    key_hex: str
    index: int
    start: int
    paths: tuple[str, ...]
    reuse: bytes | None = None
    suspects: tuple[str, ...] = ()
    hooks: BuildHooks = NO_HOOKS

    def with_suspects(self, names: list[str] | set[str]) -> Batch:
        """This batch with ``names`` added to its suspects."""
        return replace(self, suspects=tuple(sorted(set(self.suspects) | set(names))))

    def all_suspect(self) -> Batch:
        """This batch with every file a suspect, for the last-resort redo in the client process: each
        file is then decoded in a child process, so a codec crash costs a ``decoder_crash`` row."""
        return self.with_suspects({Path(p).name for p in self.paths})


def process_batch(batch: Batch) -> dict[str, Any]:
    """Run one decode task; returns ``{"index", "n", "rows"}``, ``rows`` being the commit record's
    Parquet bytes (so the client needs no second read of it, and no image ever travels back).

    Before decoding each file the task writes its name to ``_progress/inflight_NNNNNN.txt``; a
    process that dies mid-batch thus names its *suspect*, and the next attempt decodes it in a child
    process (:mod:`neurocache.isolate`), so a codec crash becomes a ``decoder_crash`` row. A file
    whose name and content hash match a row of ``reuse`` is not decoded: its row and image are
    copied from the old store. Quarantined slots keep the fill value.
    """
    # One thread per task for zarr/blosc (one task runs per core already), for this task only:
    # with workers=1 the task runs in the caller's process, whose own Zarr reads keep their threads.
    with zarr.config.set({"threading.max_workers": 1, "async.concurrency": 4}):
        loc = StoreLocation(batch.store)
        cfg = PrepConfig.from_dict(batch.prep)
        source = _ReuseSource(loc, batch.reuse)
        stack = np.full((len(batch.paths), cfg.size, cfg.size), cfg.pad_hu, dtype=np.int16)
        journal = Journal(loc, f"{PROGRESS}/inflight_{batch.index:06d}.txt")
        rows = []
        with quiet_pydicom():  # once per batch, not per file
            for i, p in enumerate(batch.paths):
                image, row = None, source.row(i, p)
                if row is None:
                    image, row = _decode(batch, cfg, loc, journal, p)
                if image is not None:
                    stack[i] = image
                row["file"] = shown_name(Path(p).name)  # valid UTF-8 for Parquet; a bad name's bytes escaped
                row["input_index"] = batch.start + i
                rows.append(row)
        source.fill(stack)
        write_staging(loc, batch.start, stack)
        batch.hooks.reached("batch_images")
        data = loc.write_parquet(batch_name(batch.index), pd.DataFrame(rows, columns=STAGED_COLUMNS))
        journal.remove()
        batch.hooks.reached("batch")
        return {"index": batch.index, "n": len(batch.paths), "rows": data}


def _decode(batch: Batch, cfg: PrepConfig, loc: StoreLocation, journal: Journal, path: str
            ) -> tuple[np.ndarray | None, dict[str, Any]]:
    """Preprocess one file, named first in the journal; a suspect in a child process."""
    name = Path(path).name
    journal.note(name)
    key = bytes.fromhex(batch.key_hex)
    if name in batch.suspects:
        image, row = preprocess_isolated(path, cfg, key, isolate_scratch(loc), batch.hooks.isolate_command())
    else:
        batch.hooks.decoding(path)
        image, row = preprocess_file(path, cfg, key)
    batch.hooks.reached("file")
    row["_reused"] = False
    return image, row


class _ReuseSource:
    """The old store's rows and images a batch may copy (empty without ``reuse`` bytes)."""

    def __init__(self, loc: StoreLocation, reuse: bytes | None) -> None:
        self.hits: dict[str, tuple[str, int]] = {}  # file name -> (old content hash, position in feats)
        self.from_old: dict[int, int] = {}  # slot in this batch -> row of the old images
        self.loc = loc
        if reuse:
            self.feats = pd.read_parquet(io.BytesIO(reuse))
            self.hits = {str(f): (str(h), i) for i, (f, h) in enumerate(zip(self.feats["file"], self.feats["content_hash"]))}

    def row(self, slot: int, path: str) -> dict[str, Any] | None:
        """The old row of ``path`` when its content hash is unchanged (its image is copied later by
        :meth:`fill`), else None: decode it."""
        hit = self.hits.get(shown_name(Path(path).name))
        if hit is None or not os.path.isfile(path) or os.path.islink(path):
            return None
        try:
            digest = file_digest(Path(path))[1]
        except OSError:
            return None
        if digest != hit[0]:
            return None
        rec = self.feats.iloc[int(hit[1])]
        row = {c: (rec[c].item() if isinstance(rec[c], np.generic) else rec[c]) for c in ROW_COLUMNS}
        row["_reused"] = True
        if row["status"] == OK:
            self.from_old[slot] = int(rec["row"])
        return row

    def fill(self, stack: np.ndarray) -> None:
        """Copy the reused images into ``stack``, read in runs of consecutive old rows."""
        if not self.from_old:
            return
        old_images = zarr.open_array(self.loc.member_store("images", read_only=True), mode="r")
        slots = sorted(self.from_old, key=self.from_old.__getitem__)
        stack[slots] = read_rows(old_images, np.array([self.from_old[i] for i in slots]))


def read_rows(array: zarr.Array, idx: np.ndarray) -> np.ndarray:
    """``array[idx]`` read as contiguous runs of ``idx`` (several times faster than an orthogonal selection)."""
    runs = np.split(idx, np.flatnonzero(np.diff(idx) != 1) + 1)
    return np.concatenate([array[int(r[0]) : int(r[-1]) + 1] for r in runs])


def write_staging(loc: StoreLocation, start: int, stack: np.ndarray) -> None:
    """Write ``stack`` (int16 (k, S, S) HU) as the staging shard that begins at row ``start``.

    The shard file is made here in one pass (:mod:`neurocache.shards`) when the array has the layout
    made by :func:`neurocache.store.create_image_array`, else through Zarr. Why not always Zarr:
    measured on 480 synthetic 512-px files, ``workers=1``, 2 shared cores (min of 5 builds, CPU s),
    the build took 1.45 s with this path and the shard copy of compaction, 2.27 s with Zarr's API
    writing both: Zarr's sharded writes were ~36 % of the build time. The bytes are Zarr's own
    (``tests/test_fast_build.py`` compares them file for file and reads every shard back through Zarr).
    """
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


class Journal:
    """``_progress/inflight_NNNNNN.txt``: the name of the file a task is decoding, rewritten before each
    file, as one line of JSON (ASCII: a name with a newline or bytes that are not UTF-8 survives; see
    :func:`suspects`). Locally one open file rewritten in place (a write and a truncate, no
    open/close per file); on an object store one small object per file."""

    def __init__(self, loc: StoreLocation, name: str) -> None:
        self.loc, self.name = loc, name
        self.fd: int | None = None

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


def isolate_scratch(loc: StoreLocation) -> Path:
    """Local scratch folder for :func:`neurocache.isolate.preprocess_isolated` (inside a local store)."""
    if loc.path is not None:
        return loc.path / PROGRESS / "isolate"
    return Path(tempfile.gettempdir()) / "neurocache-isolate"


def suspects(loc: StoreLocation, index: int) -> list[str]:
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
