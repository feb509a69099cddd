"""The trainer's data path: the store's ok slices, batched on the training device.

Two modes behind one API, :meth:`SliceSource.batches`, which yields ``(rows, hu)`` pairs:

* **resident** (the ok images fit ``memory_budget_gb``): every ok slice is read from Zarr once per
  run into one int16 tensor on the training device; a batch is ``images[rows]``.
* **streaming** (they do not): whole shards are read in a shuffled order by a background thread
  into (pinned, on CUDA) host buffers, a few shards ahead of the consumer; each group of
  ``stream_shards`` shards is copied to the device (non-blocking) and its rows are drawn in a
  shuffled order, so a store far larger than memory trains with the same loop.

With ``context_slices`` k > 0 a batch holds each row's stack of 2k + 1 slices (the row and its
series neighbours from the store's ``prev_row``/``next_row`` links, :func:`trainer.context.context_rows`):
resident, one gather; streaming, neighbours in the shard group on the device come from there and
the rest are read from the store row by row (the store is ordered by ID, so most are).

Either way the batch then goes through batched tensor ops (:class:`trainer.transforms.BatchTransform`):
no DataLoader, no workers, no per-sample Python.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from neurocache.errors import UserError
from neurocache.remote import StoreLocation
from neurocache.store import Store, StoreError, open_store
from trainer.config import TrainConfig, prep_config
from trainer.context import context_rows
from trainer.streaming import StoreImages, stream_batches

GROUP_COLUMNS = {"patient": "patient_key", "study": "study_key", "series": "series_key"}


class DeviceUnavailableError(UserError, RuntimeError):
    """The config (or ``--device``) names a device this machine does not have."""


@dataclass
class SliceSource:
    """The ok slices of a store, resident on the training device or streamed from the store.

    Not a ``torch.utils.data.Dataset``: batches come from :meth:`batches` as device tensors.

    Attributes:
        store: the opened store.
        table: ok feature rows ordered by ``row`` (index i <-> ``images[i]``), with a ``group`` column.
        images: int16 tensor (N, S, S), HU, on the training device (resident mode), or a
            :class:`StoreImages` that reads rows on demand (streaming mode).
        labels: int64 numpy (N,) 0/1.
        groups: str numpy (N,) — the split key per row (patient hash by default; the ID for ``none``).
        stream_shards: streaming mode: shards shuffled together (and held on the device) at a time.
        stream_readers: streaming mode: threads reading and decoding shards ahead of the consumer.
        context: neighbour slices per side in each sample (0: the slice alone).
        links: (2, N) int64 ``prev_row`` / ``next_row`` of every row (-1: none), on the device when
            resident (CPU when streaming); needed when ``context`` > 0.
    """

    store: Store
    table: pd.DataFrame
    images: torch.Tensor | StoreImages
    labels: np.ndarray
    groups: np.ndarray
    stream_shards: int = 4
    stream_readers: int = 1
    context: int = 0
    links: torch.Tensor | None = None

    def stack_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """(B, 2k + 1) int64 rows of each row's context stack (column k is ``rows``), on ``rows``' device."""
        if self.links is None:
            raise ValueError("SliceSource has no neighbour links (context > 0 needs the store's prev_row/next_row)")
        links = self.links.to(rows.device)
        return context_rows(rows, links[0], links[1], self.context)

    def sample_images(self, rows: torch.Tensor) -> torch.Tensor:
        """The model's HU input for ``rows`` (on the images' device): int16 (B, S, S), or the
        (B, 2k + 1, S, S) stacks of :meth:`stack_rows` when ``context`` > 0."""
        return self.images[self.stack_rows(rows) if self.context else rows]

    @property
    def device(self) -> torch.device:
        return self.images.device

    @property
    def streaming(self) -> bool:
        """True when the images stay in the store and batches are streamed shard by shard."""
        return isinstance(self.images, StoreImages)

    def batches(
        self,
        idx: np.ndarray,
        batch_size: int,
        *,
        generator: torch.Generator | None = None,
        sampler: str = "uniform",
        shuffle: bool = True,
        drop_last: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of ``(rows, hu)`` batches over the rows ``idx``.

        Args:
            idx: row indices (into ``images``/``labels``).
            batch_size: rows per batch (the last one may be smaller unless ``drop_last``).
            generator: CPU generator for the order (required when ``shuffle``).
            sampler: ``uniform`` (each row of ``idx`` once, in random order) or ``weighted``
                (``len(idx)`` class-balanced draws with replacement); class-balanced draws: weights inverse to class frequency.
            shuffle: False: every row of ``idx`` once, in order (resident) or shard by shard
                (streaming) — for evaluation; ``sampler`` is then ignored.
            drop_last: drop a final partial batch.

        Yields:
            ``rows``: int64 (b,) on the device; ``hu``: int16 (b, S, S) HU on the device, ``hu[i]``
            being the image of ``rows[i]`` — or (b, 2k + 1, S, S), the stack of :meth:`stack_rows`,
            when ``context`` k > 0.
        """
        idx = np.ascontiguousarray(idx, dtype=np.int64)
        if shuffle:
            if generator is None:
                raise ValueError("SliceSource.batches(shuffle=True) needs a CPU torch.Generator")
            order = _epoch_order(idx, self.labels, sampler, generator)
        else:
            order = torch.as_tensor(idx)
        if self.streaming:
            stacks = self.stack_rows if self.context else None
            yield from stream_batches(self.images, order, batch_size, generator if shuffle else None,
                               self.stream_shards, drop_last, self.stream_readers, stacks)
            return
        order = order.to(self.device, non_blocking=True)  # one host -> device copy per epoch
        stop = len(order) - (len(order) % batch_size if drop_last and len(order) > batch_size else 0)
        for i in range(0, stop, batch_size):
            b = order[i : i + batch_size]
            yield b, self.sample_images(b)


def pick_device(name: str) -> torch.device:
    """``auto`` -> cuda when available else cpu; anything else is passed to torch.device.

    A CUDA device is made the current one (``torch.cuda.set_device``), so that streams, events and the
    caching allocator of every later call are that card's, not GPU 0's.
    """
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(f"config key device={name!r} but CUDA is not available; use device: auto or cpu")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(dev)
    return dev


def setup_device(cfg: TrainConfig) -> torch.device:
    """The training device of ``cfg`` (:func:`pick_device`), with torch's CPU threads set to ``threads`` (0: torch's default).

    Raises:
        DeviceUnavailableError: ``device: cuda`` on a machine without CUDA.
    """
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    return pick_device(cfg.device)


def group_keys(table: pd.DataFrame, group_by: str) -> np.ndarray:
    """The split key per row: keyed patient/study/series hash, or the ID for ``group_by: none``.

    Rows whose header had no such identifier fall back to their own ID (a group of one).
    """
    if group_by == "none":
        return table["ID"].astype(str).to_numpy()
    col = GROUP_COLUMNS[group_by]
    keys = table[col].astype(str).to_numpy().copy()
    empty = keys == ""
    keys[empty] = table["ID"].astype(str).to_numpy()[empty]
    return keys


def next_slice_ids(table: pd.DataFrame) -> dict[str, str]:
    """ID -> the ID of the next slice of its series (the store's ``next_row``), for the ok rows that have one.

    ``table`` is :attr:`SliceSource.table` (index i <-> ``images`` row i); {} for a store without geometry."""
    if "next_row" not in table.columns:
        return {}
    ids = table["ID"].astype(str).to_numpy()
    nxt = table["next_row"].to_numpy(dtype=np.int64)
    has = np.flatnonzero(nxt >= 0)
    return dict(zip(ids[has], ids[nxt[has]]))


def open_store_for(store_path: str, cfg: TrainConfig) -> Store:
    """The store at ``store_path`` opened for ``cfg``: a usable location (no credentials in a URL), a
    neurocache store of this schema, complete, built with the config's preprocessing -- cheap, so the
    commands do it before anything slow (:func:`neurocache.store.open_store`).

    Raises:
        StoreError: the store is missing, incomplete, or built with other preprocessing.
    """
    return open_store(store_path, expect=prep_config(cfg))


def load_dataset(store_path: str, cfg: TrainConfig, device: torch.device, *, store: Store | None = None) -> SliceSource:
    """Open the store (checking schema, ``complete`` and fingerprint) and load its ok slices.

    ``store``: the store at ``store_path`` already opened and checked (:func:`open_store_for`, as the
    commands do before anything slow), so it is not opened twice.

    The ok images are read once into an int16 tensor on ``device`` when they fit
    ``memory_budget_gb``; otherwise they stay in the store and :meth:`SliceSource.batches` streams
    them shard by shard (``stream_shards`` shards at a time on the device).

    Raises:
        StoreError: the store is missing, incomplete, or built with other preprocessing.
    """
    if store is None:
        store = open_store_for(store_path, cfg)
    table = store.ok_rows()
    if table.empty:
        raise StoreError(f"store {store_path} has no ok slices (see `neurocache info {store_path}`)")
    n, s = len(table), store.images.shape[1]
    if store.images.shape[0] != n:
        raise StoreError(f"store {store_path}: images has {store.images.shape[0]} rows but the feature table {n} ok rows")
    need_gb = n * s * s * 2 / 1e9
    images: torch.Tensor | StoreImages
    if need_gb > cfg.memory_budget_gb:
        images = StoreImages(store.images, device, StoreLocation(store_path))
    else:
        images = torch.from_numpy(np.asarray(store.images[:]))  # one sequential read of every shard
        if device.type == "cuda":
            images = images.pin_memory().to(device, non_blocking=True)
    table = table.assign(group=group_keys(table, cfg.group_by))
    links = None
    if cfg.context_slices:
        if not {"prev_row", "next_row"} <= set(table.columns):
            raise StoreError(f"store {store_path} has no series geometry (prev_row/next_row) for context_slices="
                             f"{cfg.context_slices}; rebuild it with this version: neurocache build --store {store_path} ...")
        links = torch.as_tensor(table[["prev_row", "next_row"]].to_numpy(np.int64).T.copy())
        if isinstance(images, StoreImages):
            warnings.warn(
                f"context_slices={cfg.context_slices} on a store streamed from disk ({need_gb:.1f} GB of ok images > "
                f"memory_budget_gb={cfg.memory_budget_gb}): `images` is in ID order, so most neighbours are read one "
                "by one (about 25x fewer samples/s than without context, docs/benchmarks.md); raise memory_budget_gb "
                "if the images fit on the device", stacklevel=2)
        else:
            links = links.to(device)
    return SliceSource(
        store=store,
        table=table,
        images=images,
        labels=np.array(table["label"].astype(int), dtype=np.int64),
        groups=np.array(table["group"], dtype=str),
        stream_shards=int(cfg.stream_shards),
        stream_readers=int(cfg.stream_readers),
        context=int(cfg.context_slices),
        links=links,
    )


def _epoch_order(idx: np.ndarray, labels: np.ndarray, sampler: str, generator: torch.Generator) -> torch.Tensor:
    """int64 CPU tensor: an epoch's rows in draw order.

    ``uniform``: a permutation; ``weighted``: ``len(idx)`` class-balanced draws with replacement."""
    idx_t = torch.as_tensor(idx, dtype=torch.long)
    if sampler == "weighted":
        y = torch.as_tensor(labels[idx])
        counts = torch.bincount(y, minlength=2).clamp(min=1).double()
        w = (1.0 / counts)[y]
        return idx_t[torch.multinomial(w, len(idx_t), replacement=True, generator=generator)]
    return idx_t[torch.randperm(len(idx_t), generator=generator)]
