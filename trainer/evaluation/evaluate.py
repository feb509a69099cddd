"""Clinical-grade evaluation of one prediction set: intervals, calibration and patient-level results.

Used by ``trainer cv`` (pooled out-of-fold predictions -> ``cv_metrics.json["oof"]`` and
``cv_oof_patient_predictions.csv``) and ``trainer final`` (test predictions ->
``test_metrics.json`` keys ``intervals``, ``calibration``, ``patient``, ``evaluation`` and
``test_patient_predictions.csv``); they write the files and draw the calibration figures.

Settings are config keys (defaults on :class:`trainer.config.TrainConfig`): ``n_boot``, ``ci_level``,
``ci_seed``, ``patient_aggregation``, ``calibration_bins``, ``calibration_strategy``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from trainer.evaluation.reliability import calibration_summary
from trainer.evaluation.intervals import interval_report
from trainer.evaluation.metrics import binary_metrics
from trainer.evaluation.operating_points import operating_points
from trainer.evaluation.patient import aggregate_patients, describe, patient_frame

if TYPE_CHECKING:
    from trainer.config import TrainConfig

EVAL_KEYS: tuple[str, ...] = ("n_boot", "ci_level", "ci_seed", "patient_aggregation", "calibration_bins",
                              "calibration_strategy", "gallery_n", "operating_points")


def eval_settings(cfg: TrainConfig) -> dict[str, Any]:
    """The evaluation keys of ``cfg`` (recorded in the metrics JSON as ``evaluation``)."""
    return {k: getattr(cfg, k) for k in EVAL_KEYS}


def evaluate_predictions(
    ids: Any, y: Any, prob: Any, patients: Any, threshold: float, cfg: TrainConfig,
    next_ids: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Intervals (Wilson, DeLong, patient bootstrap), calibration and patient-level metrics.

    ``next_ids`` (ID -> the next slice's ID in its series) is needed by ``patient_aggregation: pair``.

    Returns:
        ``{"intervals", "calibration" (with the expected calibration error ``ece`` beside the Brier score),
        "operating_points" (one entry per config ``operating_points`` item,
        :func:`trainer.evaluation.operating_points.operating_points`), "patient": {aggregation, score,
        label_rule, n_patients, metrics, intervals}, "evaluation": settings}`` plus ``"_patients"``:
        the patient table (a DataFrame, for writing; not JSON).
    """
    s = eval_settings(cfg)
    y = np.asarray(y).astype(int)
    prob = np.asarray(prob, dtype=float)
    thr = float(threshold)
    out: dict[str, Any] = {"evaluation": {**s, "threshold": thr, "bootstrap_unit": "patient",
                                          "note": "Wilson and DeLong treat slices as independent; the bootstrap "
                                                  "resamples patients (all slices of a drawn patient), percentile method"}}
    if y.size == 0:
        return out
    out["intervals"] = interval_report(y, prob, thr, patients, n_boot=int(s["n_boot"]), seed=int(s["ci_seed"]),
                                       level=float(s["ci_level"]), unit_name="patient")
    out["calibration"] = calibration_summary(y, prob, int(s["calibration_bins"]), s["calibration_strategy"])
    out["operating_points"] = operating_points(y, prob, s["operating_points"], float(s["ci_level"]))
    links = next_ids if s["patient_aggregation"] == "pair" else None
    pt = aggregate_patients(patient_frame(ids, y, prob, patients, links), group_col="patient",
                            how=s["patient_aggregation"], threshold=thr)
    out["patient"] = {
        **describe(s["patient_aggregation"]),
        "n_patients": len(pt),
        "n_pos_patients": int(pt["label"].sum()),
        "metrics": binary_metrics(pt["label"].to_numpy(), pt["prob"].to_numpy(), thr),
        "intervals": interval_report(pt["label"].to_numpy(), pt["prob"].to_numpy(), thr, pt["patient"].to_numpy(),
                                     n_boot=int(s["n_boot"]), seed=int(s["ci_seed"]), level=float(s["ci_level"]),
                                     unit_name="patient"),
    }
    out["_patients"] = pt
    return out


def public(ev: dict[str, Any]) -> dict[str, Any]:
    """:func:`evaluate_predictions`' JSON part (without the ``_patients`` table)."""
    return {k: v for k, v in ev.items() if not k.startswith("_")}


def oof_evaluation(
    split: pd.DataFrame, oof: pd.DataFrame, threshold: float, cfg: TrainConfig, patients: Mapping[str, str] | None = None,
    next_ids: Mapping[str, str] | None = None,
) -> tuple[dict[str, Any], pd.DataFrame | None]:
    """Evaluate the pooled OOF predictions at ``threshold``: (``cv_metrics.json["oof"]``, the patient table).

    ``patients`` maps ID -> patient key (default: the split's ``group`` column; :func:`oof_patient_keys`).
    """
    ids = oof["ID"].astype(str).to_numpy()
    pk = oof_patient_keys(split, oof, patients)
    y, p = oof["label"].to_numpy().astype(int), oof["prob"].to_numpy(dtype=float)
    ev = evaluate_predictions(ids, y, p, pk, threshold, cfg, next_ids)
    res: dict[str, Any] = {"what": "pooled out-of-fold predictions of the fold models, at the selected threshold",
                           "metrics": binary_metrics(y, p, threshold) if len(y) else {}, **public(ev)}
    return res, ev.get("_patients")


def oof_patient_keys(split: pd.DataFrame, oof: pd.DataFrame, patients: Mapping[str, str] | None = None) -> np.ndarray:
    """(n,) str: the patient key of each OOF row, the unit the bootstrap resamples.

    ``patients`` maps ID -> patient key (``trainer cv``: the store's patient keys); without it the
    split's ``group`` column (the patient key when the split grouped by patient). An ID in neither is its own key.
    """
    keymap = dict(patients) if patients is not None else dict(zip(split["ID"].astype(str), split["group"].astype(str)))
    return np.array([keymap.get(i, i) for i in oof["ID"].astype(str).to_numpy()], dtype=str)
