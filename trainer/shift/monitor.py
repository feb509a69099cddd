"""The shift check inside ``trainer predict``: one :class:`ShiftMonitor` per call.

Predict records each ok file's feature row (:meth:`ShiftMonitor.record`) and, after each scoring
forward pass, which rows the batch held (:meth:`ShiftMonitor.batch`; the embeddings come from the
:class:`~trainer.shift.tap.EmbeddingTap` on that same pass). :meth:`ShiftMonitor.columns` then gives
the :data:`~trainer.shift.verdict.SHIFT_COLUMNS` of every row (empty for quarantined files) and keeps
the call's summary in :attr:`ShiftMonitor.summary`.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from trainer.runs import files as F
from trainer.shift.columns import column_values
from trainer.shift.reference import ShiftReference, load_reference
from trainer.shift.tap import EmbeddingTap
from trainer.shift.verdict import SHIFT_COLUMNS, judge, summarise

__all__ = ["SUMMARY_SUFFIX", "ShiftMonitor", "summary_path", "write_summary"]

#: ``--out preds.csv`` -> ``preds.shift.json``, the call's summary.
SUMMARY_SUFFIX = ".shift.json"


class ShiftMonitor:
    """Collects feature rows and embeddings while predict scores; see the module docstring.

    Without a reference (a final run made before the check) it warns once and gives empty columns.
    """

    def __init__(self, run: Path, model: torch.nn.Module) -> None:
        self.reference: ShiftReference | None = load_reference(run)
        if self.reference is None:
            warnings.warn(f"{run} has no {F.SHIFT_REFERENCE} (a final run made before the distribution-shift check): "
                          f"the shift columns stay empty; run `python -m trainer final` again to get them", stacklevel=3)
        self._tap = EmbeddingTap(model) if self.reference is not None and self.reference.gaussians is not None else None
        self._meta: dict[int, Mapping[str, Any]] = {}
        self._emb: dict[int, np.ndarray] = {}
        self.summary: dict[str, Any] = summarise(None, None, 0)

    def record(self, i: int, meta: Mapping[str, Any]) -> None:
        """Row ``i`` is an ok file with feature row ``meta`` (from ``preprocess_file``)."""
        if self.reference is not None:
            self._meta[i] = meta

    def batch(self, rows: Sequence[int]) -> None:
        """The forward pass just made scored rows ``rows``, in batch order."""
        if self._tap is not None:
            for i, e in zip(rows, self._tap.take()):
                self._emb[int(i)] = e

    def columns(self, n: int) -> pd.DataFrame:
        """The shift columns of all ``n`` rows (checked rows: those recorded); sets :attr:`summary`."""
        out = pd.DataFrame({"shift_score": np.full(n, np.nan), "shifted": pd.array([pd.NA] * n, dtype="boolean"),
                            "shift_reason": [""] * n}, columns=list(SHIFT_COLUMNS))
        self.close()
        if self.reference is None:
            self.summary = summarise(None, None, n)
            return out
        rows = sorted(self._meta)
        emb = np.stack([self._emb[i] for i in rows]) if self._tap is not None and rows else None
        v = judge(self.reference, column_values([self._meta[i] for i in rows], self.reference.columns), emb)
        out.loc[rows, "shift_score"] = np.round(v.score, 4)
        out.loc[rows, "shifted"] = v.shifted
        out.loc[rows, "shift_reason"] = v.reasons
        self.summary = summarise(self.reference, v, n)
        return out

    def close(self) -> None:
        """Remove the forward hook (idempotent)."""
        if self._tap is not None:
            self._tap.close()


def summary_path(out_csv: str | Path) -> Path:
    """``preds.csv`` -> ``preds.shift.json`` (beside it)."""
    p = Path(out_csv)
    return p.with_name(p.stem + SUMMARY_SUFFIX)


def write_summary(summary: Mapping[str, Any], out_csv: str | Path) -> Path:
    """Write the call's summary beside the predict CSV; returns its path."""
    path = summary_path(out_csv)
    path.write_text(json.dumps(dict(summary), indent=2) + "\n")
    return path
