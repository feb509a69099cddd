"""Patient-level results from slice-level predictions.

A patient's **label** is positive when any of its slices is positive (a scan with a finding is a
positive scan). Its **score** aggregates its slices' probabilities with the config key
``patient_aggregation``:

* ``max`` (default): the most suspicious slice decides -- matches the label rule ("any slice").
* ``mean``: the average slice probability -- smoother, but dilutes a finding seen on few slices.

The patient is predicted positive when its score is ``>= threshold`` (the slice threshold chosen
in cross-validation; with ``max`` this is "any slice predicted positive").

The patient key is the store's keyed patient hash (``patient_key``; a row without one is its own
patient), see :func:`trainer.data.group_keys`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

__all__ = ["AGGREGATIONS", "LABEL_RULE", "aggregate_patients", "describe", "patient_frame"]

AGGREGATIONS: tuple[str, ...] = ("max", "mean")
LABEL_RULE = "positive if any of the patient's slices is positive"


def aggregate_patients(
    frame: pd.DataFrame,
    *,
    group_col: str = "patient",
    how: str = "max",
    threshold: float | None = None,
) -> pd.DataFrame:
    """Collapse slice rows ``(group_col, label, prob)`` into one row per patient.

    Returns:
        Columns ``patient, label, prob, n_slices, n_pos_slices`` (and ``pred`` when
        ``threshold`` is given), sorted by patient key. ``label`` = any slice positive,
        ``prob`` = max (or mean) slice probability.

    Raises:
        ValueError: unknown aggregation or missing columns.
    """
    if how not in AGGREGATIONS:
        raise ValueError(f"patient_aggregation={how!r} is invalid; allowed: {', '.join(AGGREGATIONS)}")
    missing = [c for c in (group_col, "label", "prob") if c not in frame.columns]
    if missing:
        raise ValueError(f"patient aggregation needs columns {missing}; got {list(frame.columns)}")
    f = pd.DataFrame({"patient": frame[group_col].astype(str).to_numpy(),
                      "label": frame["label"].astype(int).to_numpy(),
                      "prob": frame["prob"].astype(float).to_numpy()})
    g = f.groupby("patient", sort=True)
    out = pd.DataFrame({
        "label": g["label"].max().astype(int),
        "prob": g["prob"].max() if how == "max" else g["prob"].mean(),
        "n_slices": g.size().astype(int),
        "n_pos_slices": g["label"].sum().astype(int),
    }).reset_index()
    if threshold is not None:
        out["pred"] = (out["prob"] >= float(threshold)).astype(int)
    return out


def describe(how: str) -> dict[str, Any]:
    """The aggregation rule in words, for JSON and the report."""
    score = ("maximum of the patient's slice probabilities" if how == "max"
             else "mean of the patient's slice probabilities")
    return {"aggregation": how, "score": score, "label_rule": LABEL_RULE, "unit": "patient (keyed patient hash)"}


def patient_frame(ids: Any, labels: Any, prob: Any, patients: Any) -> pd.DataFrame:
    """Slice rows with their patient key: ``ID, patient, label, prob``."""
    return pd.DataFrame({"ID": np.asarray(ids).astype(str), "patient": np.asarray(patients).astype(str),
                         "label": np.asarray(labels).astype(int), "prob": np.asarray(prob, dtype=float)})
