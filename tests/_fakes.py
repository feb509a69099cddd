"""Stand-ins for the split and fold tests that need no store (not a test module: no ``test_`` prefix)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd

from trainer.split import make_split


def fake_data(n_patients: int = 30, per: int = 5, seed: int = 0) -> SimpleNamespace:
    """A stand-in for a SliceSource: ``n_patients`` x ``per`` slices, half the patients with a run of positives."""
    rng = np.random.default_rng(seed)
    groups = np.repeat([f"P{i:03d}" for i in range(n_patients)], per)
    labels = np.zeros(groups.size, dtype=np.int64)
    for i in range(n_patients):  # half of the patients carry a lesion on a run of slices
        if i % 2:
            start = rng.integers(0, per - 1)
            labels[i * per + start: i * per + per] = 1
    ids = np.array([f"ID_{i:05d}" for i in range(groups.size)])
    return SimpleNamespace(labels=labels, groups=groups, table=pd.DataFrame({"ID": ids}), device="cpu")


def fake_split(data: SimpleNamespace, k: int = 3) -> pd.DataFrame:
    """The split table of ``data`` (as trainer.folds.split_table makes it), ``k`` folds."""
    is_test, fold = make_split(data.labels, data.groups, test_size=0.2, k_folds=k, seed=3)
    return pd.DataFrame({"ID": data.table["ID"], "group": data.groups, "label": data.labels, "test": is_test, "fold": fold})
