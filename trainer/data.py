"""The trainer's data path: the store's ok slices, batched on the training device.

Two modes behind one API, :meth:`SliceSource.batches`, which yields ``(rows, hu)`` pairs:

* **resident** (the ok images fit ``memory_budget_gb``): every ok slice is read from Zarr once per
  run into one int16 tensor on the training device; a batch is ``images[rows]``.
* **streaming** (they do not): whole shards are read in a shuffled order by a background thread
  into (pinned, on CUDA) host buffers, a few shards ahead of the consumer; each group of
  ``stream_shards`` shards is copied to the device (non-blocking) and its rows are drawn in a
  shuffled order, so a store far larger than memory trains with the same loop.

Either way the batch then goes through batched tensor ops (:class:`trainer.transforms.BatchTransform`):
no DataLoader, no workers, no per-sample Python.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from neurocache.remote import StoreLocation
from neurocache.shards import ShardLayout
from neurocache.store import Store, StoreError, open_store
from trainer.config import TrainConfig, prep_config

GROUP_COLUMNS = {"patient": "patient_key", "study": "study_key", "series": "series_key"}


class StoreImages:
    """The ok images left in the store, for stores above ``memory_budget_gb``: int16 (N, S, S), HU.

    Indexing (``images[rows]``) reads just those rows and returns an int16 tensor on ``device``, so
    code written for the resident tensor (pictures, a few rows) still works; training and
    evaluation go through :meth:`SliceSource.batches`, which reads whole shards instead.
    """

    def __init__(self, array: Any, device: torch.device, loc: StoreLocation | None = None) -> None:
        self.array = array
        self.device = device
        self.shape = tuple(int(v) for v in array.shape)
        self.dtype = torch.int16
        shards = getattr(array, "shards", None)
        self.shard_rows = int((shards or array.chunks)[0])
        # The store's own shard layout: whole shards are then read as one file and decoded by blosc
        # straight into the output (neurocache.shards), several times faster than through Zarr.
        self._loc, self._layout = loc, None
        if loc is not None:
            try:
                self._layout = ShardLayout.of(loc.read_bytes("images/zarr.json"))
            except OSError:
                self._layout = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: Any) -> torch.Tensor:
        r = np.atleast_1d(torch.as_tensor(rows).cpu().numpy()).astype(np.int64)
        uniq, inv = np.unique(r, return_inverse=True)
        arr = np.asarray(self.array.get_orthogonal_selection((uniq, slice(None), slice(None))))
        return torch.from_numpy(np.ascontiguousarray(arr[inv])).to(self.device)

    def read_shard(self, k: int, pin: bool) -> torch.Tensor:
        """Rows ``[k * shard_rows, (k + 1) * shard_rows)`` as one int16 CPU tensor (pinned when ``pin``)."""
        lo = k * self.shard_rows
        hi = min(lo + self.shard_rows, self.shape[0])
        if self._layout is not None and self._layout.shard == self.shard_rows:
            try:
                blob: bytes | None = self._loc.read_bytes(f"images/{self._layout.key(k)}")
            except FileNotFoundError:
                blob = None  # every slice of the shard is the fill value
            arr = self._layout.decode(blob, hi - lo, f"images shard {k}")
        else:
            arr = np.asarray(self.array[lo:hi])
        t = torch.from_numpy(arr)
        return t.pin_memory() if pin else t


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
    """

    store: Store
    table: pd.DataFrame
    images: torch.Tensor | StoreImages
    labels: np.ndarray
    groups: np.ndarray
    stream_shards: int = 4
    stream_readers: int = 1

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
            being the image of ``rows[i]``.
        """
        idx = np.ascontiguousarray(idx, dtype=np.int64)
        if shuffle:
            if generator is None:
                raise ValueError("SliceSource.batches(shuffle=True) needs a CPU torch.Generator")
            order = _epoch_order(idx, self.labels, sampler, generator)
        else:
            order = torch.as_tensor(idx)
        if self.streaming:
            yield from _stream(self.images, order, batch_size, generator if shuffle else None,
                               self.stream_shards, drop_last, self.stream_readers)
            return
        order = order.to(self.device, non_blocking=True)  # one host -> device copy per epoch
        stop = len(order) - (len(order) % batch_size if drop_last and len(order) > batch_size else 0)
        for i in range(0, stop, batch_size):
            b = order[i : i + batch_size]
            yield b, self.images[b]


def pick_device(name: str) -> torch.device:
    """``auto`` -> cuda when available else cpu; anything else is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"config key device={name!r} but CUDA is not available; use device: auto or cpu")
    return dev


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


def load_dataset(store_path: str, cfg: TrainConfig, device: torch.device) -> SliceSource:
    """Open the store (checking schema, ``complete`` and fingerprint) and load its ok slices.

    The ok images are read once into an int16 tensor on ``device`` when they fit
    ``memory_budget_gb``; otherwise they stay in the store and :meth:`SliceSource.batches` streams
    them shard by shard (``stream_shards`` shards at a time on the device).

    Raises:
        StoreError: the store is missing, incomplete, or built with other preprocessing.
    """
    store = open_store(store_path, expect=prep_config(cfg))
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
    return SliceSource(
        store=store,
        table=table,
        images=images,
        labels=np.array(table["label"].astype(int), dtype=np.int64),
        groups=np.array(table["group"], dtype=str),
        stream_shards=int(cfg.stream_shards),
        stream_readers=int(cfg.stream_readers),
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


def _stream(
    images: StoreImages,
    order: torch.Tensor,
    batch_size: int,
    generator: torch.Generator | None,
    group_shards: int,
    drop_last: bool,
    readers: int = 1,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Streaming mode of :meth:`SliceSource.batches`.

    The shards holding ``order``'s rows are visited in a random order (in order without a
    generator) and cut into groups of ``group_shards``; the rows are regrouped by shard group,
    keeping their random draw order inside a group, and cut into batches. A background thread
    reads the shards (each one whole) ahead of the consumer (``readers`` threads); a group is copied to the device
    when its first batch needs it and freed after its last one (a batch may straddle two groups).
    """
    rows = order.numpy()
    shard_of = rows // images.shard_rows
    shards = np.unique(shard_of)
    if generator is not None:
        shards = shards[torch.randperm(len(shards), generator=generator).numpy()]
    g = max(1, int(group_shards))
    rank = np.empty(int(shards.max()) + 1 if len(shards) else 0, dtype=np.int64)
    rank[shards] = np.arange(len(shards))
    group_of_row = rank[shard_of] // g
    keep = np.argsort(group_of_row, kind="stable")
    rows, group_of_row = rows[keep], group_of_row[keep]
    stop = len(rows) - (len(rows) % batch_size if drop_last and len(rows) > batch_size else 0)
    if stop <= 0:
        return
    n_groups = int(group_of_row[stop - 1]) + 1
    reader = _ShardReader(images, [int(k) for k in shards[: n_groups * g]], ahead=max(2 * g, 2 * readers), threads=readers)
    slot = np.full(len(rank), -1, dtype=np.int64)  # shard -> position within its group's buffer
    slot[shards] = np.arange(len(shards)) % g
    loaded: dict[int, torch.Tensor] = {}
    dev = images.device
    try:
        for i in range(0, stop, batch_size):
            b, gb = rows[i : i + batch_size], group_of_row[i : i + batch_size]
            for grp in range(int(gb[0]), int(gb[-1]) + 1):
                if grp not in loaded:
                    loaded[grp] = _load_group(reader, images, min(g, len(shards) - grp * g))
            local = torch.from_numpy(slot[b // images.shard_rows] * images.shard_rows + b % images.shard_rows)
            if gb[0] == gb[-1]:
                hu = loaded[int(gb[0])][local.to(dev, non_blocking=True)]
            else:
                hu = torch.empty((len(b),) + images.shape[1:], dtype=torch.int16, device=dev)
                for grp in range(int(gb[0]), int(gb[-1]) + 1):
                    m = torch.from_numpy(gb == grp)
                    hu[m.to(dev)] = loaded[grp][local[m].to(dev, non_blocking=True)]
            for grp in [k for k in loaded if k < int(gb[-1])]:
                del loaded[grp]  # every later batch lies in group gb[-1] or after
            yield torch.from_numpy(b).to(dev, non_blocking=True), hu
    finally:
        reader.close()


def _load_group(reader: _ShardReader, images: StoreImages, n_shards: int) -> torch.Tensor:
    """The next ``n_shards`` shards from ``reader`` in one int16 device buffer, shard j at rows j*shard_rows."""
    buf = torch.empty((n_shards * images.shard_rows,) + images.shape[1:], dtype=torch.int16, device=images.device)
    for j in range(n_shards):
        t = reader.next()
        buf[j * images.shard_rows : j * images.shard_rows + len(t)].copy_(t, non_blocking=True)
    return buf


class _ShardReader:
    """Reads shards in a given order on ``threads`` daemon threads, up to ``ahead`` shards ahead of
    :meth:`next`, which returns them in that order.

    Zarr's decompression and file reads release the GIL, so the reads overlap the training step, and
    several threads decode several shards at once (``stream_readers``; one thread decodes about one
    core's worth, see docs/benchmarks.md). Pinned host buffers on CUDA let the device copies run
    asynchronously; the caching host allocator does not reuse a pinned block before its copy has finished.
    """

    def __init__(self, images: StoreImages, order: list[int], ahead: int, threads: int = 1) -> None:
        self._order = order
        self._done: dict[int, Any] = {}  # position in order -> shard tensor or the exception raised
        self._cv = threading.Condition()
        self._next_claim = 0  # next position a thread reads
        self._pos = 0  # next position next() returns
        self._ahead = max(1, ahead)
        self._stop = threading.Event()
        pin = images.device.type == "cuda"

        def work() -> None:
            while True:
                with self._cv:
                    while not self._stop.is_set() and self._next_claim - self._pos >= self._ahead:
                        self._cv.wait(0.1)
                    if self._stop.is_set() or self._next_claim >= len(order):
                        return
                    i = self._next_claim
                    self._next_claim += 1
                try:
                    item: Any = images.read_shard(order[i], pin)
                except BaseException as e:  # handed to the consumer, raised there
                    item = e
                with self._cv:
                    self._done[i] = item
                    self._cv.notify_all()
                if isinstance(item, BaseException):
                    return

        self._threads = [threading.Thread(target=work, name=f"neurocache-shard-reader-{j}", daemon=True)
                         for j in range(max(1, int(threads)))]
        for t in self._threads:
            t.start()

    def next(self) -> torch.Tensor:
        with self._cv:
            while self._pos not in self._done:
                self._cv.wait()
            item = self._done.pop(self._pos)
            self._pos += 1
            self._cv.notify_all()
        if isinstance(item, BaseException):
            raise RuntimeError(f"reading a store shard failed: {type(item).__name__}: {item}") from item
        return item

    def close(self) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        for t in self._threads:
            t.join(timeout=5)
