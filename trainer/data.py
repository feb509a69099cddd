"""The trainer's data path: the store's ok slices as one int16 tensor on the training device.

Batches are ``images[idx]`` followed by batched tensor ops (:class:`trainer.transforms.BatchTransform`):
no DataLoader, no workers, no per-sample Python. The images are read from Zarr once per run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch

from neurocache.store import Store, StoreError, open_store
from trainer.config import prep_config

GROUP_COLUMNS = {"patient": "patient_key", "study": "study_key", "series": "series_key"}


@dataclass
class Dataset:
    """The ok rows of a store, in memory.

    Attributes:
        store: the opened store.
        table: ok feature rows ordered by ``row`` (index i <-> ``images[i]``), with a ``group`` column.
        images: int16 tensor (N, S, S), HU, on ``device``.
        labels: int64 numpy (N,) 0/1.
        groups: str numpy (N,) — the split key per row (patient hash by default; the ID for ``none``).
    """

    store: Store
    table: pd.DataFrame
    images: torch.Tensor
    labels: np.ndarray
    groups: np.ndarray

    @property
    def device(self) -> torch.device:
        return self.images.device


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


def load_dataset(store_path: str, cfg: dict[str, Any], device: torch.device) -> Dataset:
    """Open the store (checking schema, ``complete`` and fingerprint) and load its ok slices.

    Raises:
        StoreError: the store is missing, incomplete, or built with other preprocessing.
        RuntimeError: the ok images exceed ``memory_budget_gb``.
    """
    store = open_store(store_path, expect=prep_config(cfg))
    table = store.ok_rows()
    if table.empty:
        raise StoreError(f"store {store_path} has no ok slices (see `neurocache info {store_path}`)")
    n, s = len(table), store.images.shape[1]
    need_gb = n * s * s * 2 / 1e9
    if need_gb > cfg["memory_budget_gb"]:
        raise RuntimeError(
            f"the store's {n} ok slices need {need_gb:.1f} GB as int16, above memory_budget_gb={cfg['memory_budget_gb']}; "
            f"raise memory_budget_gb or build the store at a smaller preprocess.size"
        )
    arr = np.asarray(store.images[:])  # one sequential read of every shard
    images = torch.from_numpy(arr)
    if device.type == "cuda":
        images = images.pin_memory().to(device, non_blocking=True)
    table = table.assign(group=group_keys(table, cfg["group_by"]))
    return Dataset(
        store=store,
        table=table,
        images=images,
        labels=np.array(table["label"].astype(int), dtype=np.int64),
        groups=np.array(table["group"], dtype=str),
    )


def batch_indices(
    idx: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    *,
    generator: torch.Generator,
    sampler: str = "uniform",
    drop_last: bool = False,
) -> Iterator[torch.Tensor]:
    """Index batches for one epoch over ``idx``.

    ``uniform``: a random permutation. ``weighted``: ``len(idx)`` draws with replacement, each
    class drawn with equal total probability (weights inverse to class frequency).
    """
    idx_t = torch.as_tensor(idx, dtype=torch.long)
    if sampler == "weighted":
        y = torch.as_tensor(labels[idx])
        counts = torch.bincount(y, minlength=2).clamp(min=1).double()
        w = (1.0 / counts)[y]
        order = idx_t[torch.multinomial(w, len(idx_t), replacement=True, generator=generator)]
    else:
        order = idx_t[torch.randperm(len(idx_t), generator=generator)]
    stop = len(order) - (len(order) % batch_size if drop_last and len(order) > batch_size else 0)
    for i in range(0, stop, batch_size):
        yield order[i : i + batch_size]
