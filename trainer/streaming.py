"""Streaming mode of :class:`trainer.data.SliceSource`: whole store shards read ahead by background threads.

:class:`StoreImages` stands for the ok images left in the store; :func:`stream_batches` visits the
shards holding an epoch's rows in a shuffled order, groups ``stream_shards`` of them on the device at
a time and cuts the rows (in their random draw order within a group) into batches; :class:`ShardReader`
reads and decodes shards on threads ahead of the consumer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from neurocache.remote import StoreLocation
from neurocache.shards import ShardLayout

__all__ = ["ShardReader", "StoreImages", "stream_batches"]


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



def stream_batches(
    images: StoreImages,
    order: torch.Tensor,
    batch_size: int,
    generator: torch.Generator | None,
    group_shards: int,
    drop_last: bool,
    readers: int = 1,
    stacks: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Streaming mode of :meth:`SliceSource.batches`.

    The shards holding ``order``'s rows are visited in a random order (in order without a
    generator) and cut into groups of ``group_shards``; the rows are regrouped by shard group,
    keeping their random draw order inside a group, and cut into batches. A background thread
    reads the shards (each one whole) ahead of the consumer (``readers`` threads); a group is copied to the device
    when its first batch needs it and freed after its last one (a batch may straddle two groups).
    ``stacks`` (context > 0): rows -> (b, 2k + 1) context rows; a neighbour outside the groups on the
    device is read from the store (:meth:`StoreImages.__getitem__`).
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
    reader = ShardReader(images, [int(k) for k in shards[: n_groups * g]], ahead=max(2 * g, 2 * readers), threads=readers)
    n_store = -(-images.shape[0] // images.shard_rows)  # every shard of the store (neighbours may lie anywhere)
    slot = np.full(n_store, -1, dtype=np.int64)  # shard -> position within its group's buffer
    slot[shards] = np.arange(len(shards)) % g
    group_of_shard = np.full(n_store, -1, dtype=np.int64)
    group_of_shard[shards] = rank[shards] // g
    loaded: dict[int, torch.Tensor] = {}
    dev = images.device
    try:
        for i in range(0, stop, batch_size):
            b, gb = rows[i : i + batch_size], group_of_row[i : i + batch_size]
            for grp in range(int(gb[0]), int(gb[-1]) + 1):
                if grp not in loaded:
                    loaded[grp] = _load_group(reader, images, min(g, len(shards) - grp * g))
            want = b if stacks is None else stacks(torch.from_numpy(b)).numpy()
            hu = _gather(images, want.reshape(-1), loaded, group_of_shard, slot).reshape(*want.shape, *images.shape[1:])
            for grp in [k for k in loaded if k < int(gb[-1])]:
                del loaded[grp]  # every later batch lies in group gb[-1] or after
            yield torch.from_numpy(b).to(dev, non_blocking=True), hu
    finally:
        reader.close()


def _gather(
    images: StoreImages, rows: np.ndarray, loaded: dict[int, torch.Tensor], group_of_shard: np.ndarray, slot: np.ndarray
) -> torch.Tensor:
    """int16 (len(rows), S, S) on the device: rows in a loaded shard group from its buffer, the rest from the store."""
    sr, dev = images.shard_rows, images.device
    shard = rows // sr
    grp = group_of_shard[shard]
    groups = np.unique(grp)
    if len(groups) == 1 and int(groups[0]) in loaded:  # the usual case without context: one group, one gather
        return loaded[int(groups[0])][torch.from_numpy(slot[shard] * sr + rows % sr).to(dev, non_blocking=True)]
    # Positions are computed on the host and sent as indices: a boolean device mask (out[mask] = ...) would
    # make the host wait for the device to count the mask, once per straddling batch.
    out = torch.empty((len(rows),) + images.shape[1:], dtype=torch.int16, device=dev)
    here = np.zeros(len(rows), dtype=bool)
    put = lambda at, src: out.index_copy_(0, torch.from_numpy(at).to(dev, non_blocking=True), src)
    for g in groups:
        if int(g) in loaded:
            m = grp == g
            here |= m
            local = torch.from_numpy(slot[shard[m]] * sr + rows[m] % sr).to(dev, non_blocking=True)
            put(np.flatnonzero(m), loaded[int(g)][local])
    if not here.all():
        put(np.flatnonzero(~here), images[rows[~here]])
    return out


def _load_group(reader: ShardReader, images: StoreImages, n_shards: int) -> torch.Tensor:
    """The next ``n_shards`` shards from ``reader`` in one int16 device buffer, shard j at rows j*shard_rows."""
    buf = torch.empty((n_shards * images.shard_rows,) + images.shape[1:], dtype=torch.int16, device=images.device)
    for j in range(n_shards):
        t = reader.next()
        buf[j * images.shard_rows : j * images.shard_rows + len(t)].copy_(t, non_blocking=True)
    return buf


class ShardReader:
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
