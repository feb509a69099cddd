"""Patient-level results from slice-level predictions.

A patient's **label** is positive when any of its slices is positive (a scan with a finding is a
positive scan). Its **score** aggregates its slices' probabilities with the config key
``patient_aggregation``:

* ``max`` (default): the most suspicious slice decides -- matches the label rule ("any slice").
* ``mean``: the average slice probability -- smoother, but dilutes a finding seen on few slices.
* ``pair``: uses the series order -- the highest ``min(p, p_next)`` over the patient's linked pairs of
  consecutive slices (the store's ``next_row``), i.e. a finding counts when it continues on the next
  slice, as a radiologist believes it; a patient with no linked pair falls back to ``max``.

The patient is predicted positive when its score is ``>= threshold`` (the slice threshold chosen
in cross-validation; with ``max`` this is "any slice predicted positive").

The patient key is the store's keyed patient hash (``patient_key``; a row without one is its own
patient), see :func:`trainer.data.group_keys`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["AGGREGATIONS", "LABEL_RULE", "aggregate_patients", "describe", "patient_frame"]

AGGREGATIONS: tuple[str, ...] = ("max", "mean", "pair")
LABEL_RULE = "positive if any of the patient's slices is positive"


def aggregate_patients(
    frame: pd.DataFrame,
    *,
    group_col: str = "patient",
    how: str = "max",
    threshold: float | None = None,
) -> pd.DataFrame:
    """Collapse slice rows ``(group_col, label, prob)`` into one row per patient.

    ``how="pair"`` also needs ``prob_next`` (the next linked slice's probability, NaN where none:
    :func:`patient_frame` with ``next_ids``).

    Returns:
        Columns ``patient, label, prob, n_slices, n_pos_slices`` (and ``pred`` when
        ``threshold`` is given), in the order each patient first appears in ``frame``
        (:func:`~trainer.evaluation.inputs.canonical_groups`). ``label`` = any slice positive,
        ``prob`` = the aggregated score (module docstring).

    Raises:
        ValueError: unknown aggregation or missing columns.
    """
    if how not in AGGREGATIONS:
        raise ValueError(f"patient_aggregation={how!r} is invalid; allowed: {', '.join(AGGREGATIONS)}")
    missing = [c for c in (group_col, "label", "prob", *(("prob_next",) if how == "pair" else ())) if c not in frame.columns]
    if missing:
        raise ValueError(f"patient aggregation needs columns {missing}; got {list(frame.columns)}")
    f = pd.DataFrame({"patient": frame[group_col].astype(str).to_numpy(),
                      "label": frame["label"].astype(int).to_numpy(),
                      "prob": frame["prob"].astype(float).to_numpy()})
    g = f.groupby("patient", sort=False)  # first-appearance order: the keyed hashes' sorted order differs per build
    if how == "pair":
        pair = np.minimum(f["prob"].to_numpy(), frame["prob_next"].to_numpy(dtype=float))  # NaN where no next slice
        score = pd.Series(pair).groupby(f["patient"], sort=False).max().fillna(g["prob"].max())  # max skips NaN
    else:
        score = g["prob"].max() if how == "max" else g["prob"].mean()
    out = pd.DataFrame({
        "label": g["label"].max().astype(int),
        "prob": score,
        "n_slices": g.size().astype(int),
        "n_pos_slices": g["label"].sum().astype(int),
    }).reset_index()
    if threshold is not None:
        out["pred"] = (out["prob"] >= float(threshold)).astype(int)
    return out


def describe(how: str) -> dict[str, Any]:
    """The aggregation rule in words, for JSON and the report."""
    score = {"max": "maximum of the patient's slice probabilities",
             "mean": "mean of the patient's slice probabilities",
             "pair": "maximum over consecutive linked slice pairs of the lower probability (max without a pair)"}[how]
    return {"aggregation": how, "score": score, "label_rule": LABEL_RULE, "unit": "patient (keyed patient hash)"}


def patient_frame(ids: Any, labels: Any, prob: Any, patients: Any, next_ids: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Slice rows with their patient key: ``ID, patient, label, prob``, and ``prob_next`` when
    ``next_ids`` (ID -> the ID of the next slice of its series) is given: that slice's probability
    when it is among these rows, else NaN."""
    f = pd.DataFrame({"ID": np.asarray(ids).astype(str), "patient": np.asarray(patients).astype(str),
                      "label": np.asarray(labels).astype(int), "prob": np.asarray(prob, dtype=float)})
    if next_ids is not None:
        by_id = pd.Series(f["prob"].to_numpy(), index=f["ID"].to_numpy())
        nxt = f["ID"].map(next_ids)
        f["prob_next"] = nxt.map(by_id[~by_id.index.duplicated()]).astype(float).to_numpy()
    return f
