"""The reference ``trainer final`` saves with the model: fitted on its training rows, thresholds on
its inner holdout rows, then the check applied to every pool and test row (``shift_scores.csv``,
``test_shift.png``) so ``report.html`` can show the test set against the reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from trainer.runs import files as F
from trainer.shift.columns import column_values
from trainer.shift.plot import plot_shift
from trainer.shift.reference import ShiftReference, fit_reference
from trainer.shift.tap import embed_rows
from trainer.shift.verdict import judge

__all__ = ["write_shift_reference"]


def write_shift_reference(
    run: Path, model: torch.nn.Module, data: Any, fit: np.ndarray, holdout: np.ndarray, test: np.ndarray, tf: Any, cfg: Any,
) -> ShiftReference:
    """Fit and save the reference of a final run (``shift_reference.json``, ``shift_embedding.npz``), and
    write ``shift_scores.csv`` and ``test_shift.png``.

    Args:
        run: the final run folder.
        model: the final model (its ``fc`` input is the embedding).
        data: the :class:`trainer.data.SliceSource` (feature rows in ``data.table``).
        fit, holdout, test: dataset rows: the final model's training rows, its inner holdout, the test rows.
        tf, cfg: the evaluation transform and the run's config (batch size, precision).
    """
    parts = {"fit": np.asarray(fit), "holdout": np.asarray(holdout), "test": np.asarray(test)}
    idx = np.concatenate(list(parts.values())).astype(np.int64)
    emb = embed_rows(model, data, idx, tf, cfg)
    vals = column_values(data.table.iloc[idx])
    n1, n2 = len(fit), len(fit) + len(holdout)
    ref = fit_reference(vals[:n1], emb[:n1], data.labels[parts["fit"]], vals[n1:n2], emb[n1:n2])
    ref.save(run)
    v = judge(ref, vals, emb)
    frame = pd.DataFrame({
        "ID": data.table["ID"].astype(str).to_numpy()[idx],
        "part": np.repeat(list(parts), [len(p) for p in parts.values()]),
        "label": data.labels[idx], "embedding_distance": np.round(v.embedding_distance, 4),
        "feature_distance": np.round(v.feature_distance, 4), "shift_score": np.round(v.score, 4),
        "shifted": v.shifted, "shift_reason": v.reasons,
    })
    frame.to_csv(run / F.SHIFT_SCORES, index=False)
    plot_shift(frame, ref, vals, run / F.SHIFT_PLOT)
    t = frame[frame["part"] == "test"]
    print(f"shift check: {int(t['shifted'].sum())} of {len(t)} test slices outside the training distribution "
          f"(thresholds set to flag {100 * ref.info['alpha']:.0f} % of the {ref.info['n_holdout']} holdout slices; "
          f"{100 * (ref.info['holdout_flag_rate'] or 0):.1f} % flagged)")
    return ref
