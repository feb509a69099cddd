"""Clinical-grade evaluation of one prediction set: intervals, calibration and patient-level results.

Used by ``trainer cv`` (pooled out-of-fold predictions -> ``cv_metrics.json["oof"]``,
``cv_calibration.png``, ``cv_oof_patient_predictions.csv``) and ``trainer final`` (test
predictions -> ``test_metrics.json`` keys ``intervals``, ``calibration``, ``patient``,
``evaluation``; ``test_calibration.png``; ``test_patient_predictions.csv``).

Settings are config keys (defaults on :class:`trainer.config.TrainConfig`): ``n_boot``, ``ci_level``,
``ci_seed``, ``patient_aggregation``, ``calibration_bins``, ``calibration_strategy``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trainer.config import TrainConfig
from trainer.evaluation.calibration import calibration_summary
from trainer.evaluation.intervals import interval_report
from trainer.evaluation.metrics import binary_metrics
from trainer.evaluation.patient import aggregate_patients, describe, patient_frame

EVAL_KEYS: tuple[str, ...] = ("n_boot", "ci_level", "ci_seed", "patient_aggregation", "calibration_bins",
                              "calibration_strategy", "gallery_n")


def eval_settings(cfg: TrainConfig) -> dict[str, Any]:
    """The evaluation keys of ``cfg`` (recorded in the metrics JSON as ``evaluation``)."""
    return {k: getattr(cfg, k) for k in EVAL_KEYS}


def evaluate_predictions(
    ids: Any, y: Any, prob: Any, patients: Any, threshold: float, cfg: TrainConfig
) -> dict[str, Any]:
    """Intervals (Wilson, DeLong, patient bootstrap), calibration and patient-level metrics.

    Returns:
        ``{"intervals", "calibration", "patient": {aggregation, score, label_rule, n_patients,
        metrics, intervals}, "evaluation": settings}`` plus ``"_patients"``: the patient table
        (a DataFrame, for writing; not JSON).
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
    pt = aggregate_patients(patient_frame(ids, y, prob, patients), group_col="patient",
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


def _public(ev: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in ev.items() if not k.startswith("_")}


def cv_evaluation(
    run: Path, split: pd.DataFrame, oof: pd.DataFrame, threshold: float, cfg: TrainConfig,
    patients: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Evaluate the pooled OOF predictions; writes ``cv_calibration.png`` and
    ``cv_oof_patient_predictions.csv``; returns the ``cv_metrics.json["oof"]`` dict.

    ``patients`` maps ID -> patient key (default: the split's ``group`` column).
    """
    keymap = dict(patients) if patients is not None else dict(zip(split["ID"].astype(str), split["group"].astype(str)))
    ids = oof["ID"].astype(str).to_numpy()
    pk = np.array([keymap.get(i, i) for i in ids], dtype=str)
    y, p = oof["label"].to_numpy().astype(int), oof["prob"].to_numpy(dtype=float)
    ev = evaluate_predictions(ids, y, p, pk, threshold, cfg)
    s = ev["evaluation"]
    res: dict[str, Any] = {"what": "pooled out-of-fold predictions of the fold models, at the selected threshold",
                           "metrics": binary_metrics(y, p, threshold) if len(y) else {}, **_public(ev)}
    if "_patients" in ev:
        ev["_patients"].to_csv(run / "cv_oof_patient_predictions.csv", index=False)
    if len(y):
        from trainer.report.plots import plot_calibration

        plot_calibration({"OOF": (y, p)}, run / "cv_calibration.png", n_bins=int(s["calibration_bins"]),
                         strategy=s["calibration_strategy"], title="Calibration (out-of-fold)")
    return res


def final_evaluation(
    run: Path, ids: Any, y: Any, prob: Any, patients: Any, threshold: float, cfg: TrainConfig,
    oof: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Evaluate the test predictions; writes ``test_calibration.png`` (with the OOF curve when
    ``oof`` is given) and ``test_patient_predictions.csv``; returns the keys added to
    ``test_metrics.json``."""
    ev = evaluate_predictions(ids, y, prob, patients, threshold, cfg)
    s = ev["evaluation"]
    if "_patients" in ev:
        ev["_patients"].to_csv(run / "test_patient_predictions.csv", index=False)
    y = np.asarray(y).astype(int)
    if len(y):
        sets = {}
        if oof is not None and len(oof):
            sets["OOF (cv)"] = (oof["label"].to_numpy().astype(int), oof["prob"].to_numpy(dtype=float))
        sets["test"] = (y, np.asarray(prob, dtype=float))
        from trainer.report.plots import plot_calibration

        plot_calibration(sets, run / "test_calibration.png", n_bins=int(s["calibration_bins"]),
                         strategy=s["calibration_strategy"], title="Calibration (test)")
    return _public(ev)
