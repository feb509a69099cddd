"""Compaction: the ``ok`` slices of ``_staging`` -> ``images`` in ``row`` order, as encoded bytes.

Staging and ``images`` encode each slice alike (one chunk per slice, same codecs), so no slice is
decoded: an output shard whose rows are one whole staging shard, in order, is that shard's file
(linked locally, copied server-side on an object store); any other output shard is assembled from
the staging shards' encoded chunks (:class:`ShardCopier`). Should the two arrays' layouts differ
(a build resumed across versions), the slices are read in contiguous runs and re-encoded by Zarr.
Why not always Zarr: see :func:`neurocache.build.tasks.write_staging` (the measured figures).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import zarr

from neurocache.build.hooks import NO_HOOKS, BuildHooks
from neurocache.build.state import STAGING, BuildError
from neurocache.build.tasks import read_rows
from neurocache.config import PrepConfig
from neurocache.reasons import OK
from neurocache.remote import StoreLocation
from neurocache.shards import NO_CHUNK, ShardLayout
from neurocache.store import create_image_array


def compact(loc: StoreLocation, table: pd.DataFrame, cfg: PrepConfig, progress: Callable[[int], object],
            hooks: BuildHooks = NO_HOOKS) -> zarr.Array:
    """Write a fresh ``images`` from ``_staging``, one output shard at a time; ``progress`` gets the
    number of slices written. ``_staging`` is left intact, so a compaction killed half-way simply
    runs again."""
    loc.rm("images")  # a Zarr v3 array is its folder/prefix (no consolidated metadata to update)
    group = zarr.open_group(loc.zarr_store(), mode="r+")
    ok = table[table["status"] == OK].sort_values("row")
    src_idx = ok["input_index"].to_numpy()
    images = create_image_array(group, "images", len(src_idx), cfg)
    if len(src_idx) == 0:
        return images
    staging = zarr.open_array(loc.member_store(STAGING), mode="r")
    copier = ShardCopier.create(loc, staging, images)
    shard = cfg.shard_size if images.shards is None else images.shards[0]
    for j, start in enumerate(range(0, len(src_idx), shard)):
        idx = src_idx[start : start + shard]
        if copier is not None:
            copier.write(j, idx)
        else:
            images[start : start + len(idx)] = read_rows(staging, idx)
        progress(len(idx))
        hooks.reached("compact")
    return images


class ShardCopier:
    """Writes ``images`` shards from ``_staging``'s encoded slices (:mod:`neurocache.shards`), no slice
    decoded: with one slice per chunk and the same codec, a slice's encoded bytes are the same in both
    arrays, so an output shard is its slices' chunk bytes plus a new index, byte for byte what Zarr
    would write."""

    def __init__(self, loc: StoreLocation, src: ShardLayout, dst: ShardLayout, n_staged: int) -> None:
        self.loc, self.src, self.dst, self.n_staged = loc, src, dst, n_staged
        self._cache: dict[int, tuple[bytes, np.ndarray]] = {}

    @classmethod
    def create(cls, loc: StoreLocation, staging: zarr.Array, images: zarr.Array) -> ShardCopier | None:
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
