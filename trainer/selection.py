"""A cv run's operating point, chosen on its out-of-fold (OOF) predictions: one code path for ``trainer cv``
and ``trainer threshold``, and the one writer of each file both commands write.

:func:`choose` makes the threshold tables over the OOF predictions (candidates from the pooled OOF
scores, :func:`trainer.evaluation.thresholds.candidate_thresholds`), selects the threshold
(``threshold_strategy``, ``sens_target``, ``sens_confidence``, ``threshold_pooling``; each fold at it
and the warnings: :func:`select`) and evaluates the pooled OOF predictions there
(:func:`trainer.evaluation.oof_evaluation`). ``trainer cv`` calls it once its folds are trained;
``trainer threshold`` calls it on a finished cv run's saved predictions, with other selection keys.

With ``sens_confidence > 0`` (``threshold_strategy: sens_target`` only) the threshold is the highest
candidate whose one-sided ``sens_confidence`` lower confidence bound of the pooled OOF sensitivity
reaches ``sens_target`` (:func:`trainer.evaluation.sens_bound.select_with_confidence`: a BCa bootstrap
over the patients the OOF evaluation resamples, ``n_boot`` resamples seeded by ``ci_seed``), not the
highest-PPV candidate whose point estimate reaches it.

Writers (file names in :mod:`trainer.runs.files`): :func:`write_operating_point` (the threshold
tables, the selection with its history, the OOF patient table and reliability diagram),
:func:`write_cv_metrics` (``cv_metrics.json``). The selection history: every selection is also
``threshold_history/threshold_selection_<n>.json`` (n = 1, 2, ... in the order made) and a row of
``threshold_history.csv``; ``threshold_selection.json`` is the latest, the one ``trainer final`` uses.
"""

from __future__ import annotations

import datetime as _dt
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from trainer.evaluation.evaluate import oof_evaluation, oof_patient_keys
from trainer.evaluation.sens_bound import select_with_confidence
from trainer.evaluation.thresholds import (
    candidate_thresholds,
    cv_threshold_tables,
    select_threshold,
    selection_at,
    threshold_spread,
)
from trainer.runs import files as F
from trainer.runs.write import write_json

if TYPE_CHECKING:
    from collections.abc import Mapping

    from trainer.config import TrainConfig
    from trainer.runs.results import CVResult, FoldResult

#: Columns of ``threshold_history.csv``: one row per selection of the run, oldest first.
HISTORY_COLUMNS: tuple[str, ...] = ("n", "time", "command", "strategy", "pooling", "candidates", "sens_target",
                                    "sens_confidence", "threshold", "sens_pooled", "sens_lower_bound", "spec_pooled",
                                    "ppv_pooled", "file")


@dataclass(frozen=True)
class OperatingPoint:
    """What :func:`choose` gives: the threshold tables, the selection and the OOF evaluation at it.

    Attributes:
        by_fold, summary: ``cv_thresholds_by_fold.csv`` / ``cv_thresholds_summary.csv``.
        selection: ``threshold_selection.json``.
        oof_eval: ``cv_metrics.json["oof"]``.
        patient_table: ``cv_oof_patient_predictions.csv`` (None without OOF rows).
    """

    by_fold: pd.DataFrame
    summary: pd.DataFrame
    selection: dict[str, Any]
    oof_eval: dict[str, Any]
    patient_table: pd.DataFrame | None


def train_aucs(folds: list[FoldResult]) -> dict[int, float]:
    """fold -> the fold model's ROC-AUC on its fit rows (NaN where it has none), for the by-fold table."""
    return {f.fold: float("nan") if f.train_auc is None else float(f.train_auc) for f in folds}


def threshold_tables(oof: pd.DataFrame, cfg: TrainConfig, train_auc: Mapping[int, float]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(by fold, summary): the threshold tables over the candidates of the pooled OOF scores."""
    cand = candidate_thresholds(oof["prob"].to_numpy(), source=cfg.threshold_candidates, step=cfg.threshold_step)
    return cv_threshold_tables(oof, cand, train_auc)


def _with_bound(summary: pd.DataFrame, oof: pd.DataFrame, cfg: TrainConfig, patient_keys: np.ndarray) -> dict[str, Any]:
    """``sens_confidence``: the highest candidate whose lower confidence bound of the pooled sensitivity reaches the target.

    Raises:
        SensBoundUnreachableError: no candidate's bound reaches it (a UserError naming target, level and best bound).
    """
    thr = summary["threshold"].to_numpy(dtype=np.float64)
    bound = select_with_confidence(oof["label"].to_numpy().astype(int), oof["prob"].to_numpy(dtype=float), patient_keys,
                                   thr, cfg.sens_target, level=cfg.sens_confidence, n_boot=cfg.n_boot, seed=cfg.ci_seed)
    idx = int(np.flatnonzero(thr == bound["threshold"])[0])
    out = selection_at(summary, idx, "sens_target", cfg.threshold_pooling, float(cfg.sens_target))
    out.update({"sens_confidence": float(cfg.sens_confidence), "sens_lower_bound": bound["sens_lower_bound"],
                "sens_bound": bound})
    return out


def select(by_fold: pd.DataFrame, summary: pd.DataFrame, oof: pd.DataFrame, cfg: TrainConfig,
           patient_keys: np.ndarray) -> dict[str, Any]:
    """``threshold_selection.json``: the selected threshold, each fold at it and the warnings.

    ``patient_keys``: (n,) the patient of each OOF row (the bootstrap unit of ``sens_confidence``).
    """
    if cfg.sens_confidence > 0:
        selection = _with_bound(summary, oof, cfg, patient_keys)
    else:
        selection = select_threshold(summary, cfg.threshold_strategy,
                                     cfg.sens_target if cfg.threshold_strategy == "sens_target" else None,
                                     pooling=cfg.threshold_pooling)
    spread = threshold_spread(by_fold, selection["threshold"])
    pooled_pos = int((oof["prob"] >= selection["threshold"]).sum())
    if pooled_pos in (0, len(oof)) and oof["label"].nunique() == 2:
        spread["warnings"].append(f"every OOF slice falls in one class at threshold {selection['threshold']:.4g}: "
                                  f"the fold models do not separate the classes")
    selection.update({"candidates": cfg.threshold_candidates, "n_candidates": len(summary),
                      "per_fold": spread["per_fold"], "sens_std_folds": spread["sens_std"],
                      "spec_std_folds": spread["spec_std"], "warnings": spread["warnings"]})
    return selection


def choose(
    oof: pd.DataFrame, split: pd.DataFrame, cfg: TrainConfig, *, train_auc: Mapping[int, float],
    patients: Mapping[str, str] | None = None, next_ids: Mapping[str, str] | None = None,
    tables: tuple[pd.DataFrame, pd.DataFrame] | None = None,
) -> OperatingPoint:
    """The operating point of OOF predictions ``oof`` (``cv_oof_predictions.csv``) under ``cfg``'s selection keys.

    Args:
        oof, split: the run's OOF predictions and split (``split.csv``).
        cfg: the config (``threshold_*``, ``sens_target``, ``sens_confidence`` and the evaluation keys are read).
        train_auc: :func:`train_aucs` of the fold models.
        patients: ID -> patient key (default: the split's group column; :func:`trainer.evaluation.evaluate.oof_patient_keys`).
        next_ids: ID -> the next slice's ID (``patient_aggregation: pair``).
        tables: the threshold tables when already made (:func:`threshold_tables` with the same arguments).

    Raises:
        ThresholdUnreachableError: ``sens_target`` (or its bound) cannot be reached (a UserError).
    """
    by_fold, summary = tables if tables is not None else threshold_tables(oof, cfg, train_auc)
    selection = select(by_fold, summary, oof, cfg, oof_patient_keys(split, oof, patients))
    oof_eval, patient_table = oof_evaluation(split, oof, float(selection["threshold"]), cfg, patients, next_ids)
    return OperatingPoint(by_fold, summary, selection, oof_eval, patient_table)


def result_fields(op: OperatingPoint, stuck: list[dict[str, Any]]) -> dict[str, Any]:
    """The :class:`~trainer.runs.results.CVResult` fields that follow from the selection (``cv_metrics.json``)."""
    sel = op.selection
    return {"threshold": sel["threshold"], "threshold_strategy": sel["strategy"], "threshold_pooling": sel["pooling"],
            "warnings": [f"fold {f['fold']}: {f['why']}" for f in stuck] + list(sel["warnings"]), "oof": op.oof_eval}


def bound_line(selection: dict[str, Any]) -> str | None:
    """"threshold 0.31: pooled OOF sens 0.93, 95% lower bound 0.86 >= target 0.85 (...)"; None without ``sens_confidence``."""
    b = selection.get("sens_bound")
    if not b:
        return None
    return (f"threshold {b['threshold']:.4g}: pooled OOF sens {b['sens']:.2f}, {100 * b['level']:g}% lower bound "
            f"{b['sens_lower_bound']:.2f} >= target {b['sens_target']:.2f} (patient bootstrap, {b['method']}, "
            f"{b['n_boot']} resamples of {b['n_groups']} patients, {b['n_pos_groups']} with positive slices)")


def say_results(m: CVResult, selection: dict[str, Any]) -> None:
    """The CV's headline (and the sensitivity bound) on stdout, its warnings on stderr."""
    o = m.oof_metrics
    print(f"CV ({m.k_folds} folds, early stopping on {m.early_stopping}, calibration {m.calibration}): "
          f"OOF ROC-AUC {m.oof_auc_mean:.3f}±{m.oof_auc_std:.3f}  AUPRC {m.oof_ap_mean:.3f}±{m.oof_ap_std:.3f} "
          f"(mean±sd over folds); threshold ({m.threshold_strategy}, {m.threshold_pooling}) {m.threshold:.4g}: "
          f"sens {o['sens']:.3f}  spec {o['spec']:.3f}  PPV {o['ppv']:.3f}  NPV {o['npv']:.3f} (pooled OOF)")
    line = bound_line(selection)
    if line:
        print(line)
    for w in m.warnings:
        print(f"WARNING: {w}", file=sys.stderr)


# -- the files ---------------------------------------------------------------------------------
def write_operating_point(run: Path, op: OperatingPoint, oof: pd.DataFrame, cfg: TrainConfig, *, command: str) -> None:
    """The threshold tables, ``threshold_selection.json`` (+ its history) and the OOF evaluation's files."""
    op.by_fold.to_csv(run / F.CV_THRESHOLDS_BY_FOLD, index=False)
    op.summary.to_csv(run / F.CV_THRESHOLDS_SUMMARY, index=False)
    write_selection(run, op.selection, command=command)
    write_oof_evaluation(run, oof, op.patient_table, cfg)


def _history_row(selection: dict[str, Any], n: int, time: str, command: str) -> dict[str, Any]:
    return {"n": n, "time": time, "command": command, "strategy": selection.get("strategy"),
            "pooling": selection.get("pooling"), "candidates": selection.get("candidates"),
            "sens_target": selection.get("sens_target"), "sens_confidence": selection.get("sens_confidence", 0.0),
            "threshold": selection.get("threshold"), "sens_pooled": selection.get("sens_pooled"),
            "sens_lower_bound": selection.get("sens_lower_bound"), "spec_pooled": selection.get("spec_pooled"),
            "ppv_pooled": selection.get("ppv_pooled"), "file": F.threshold_history_selection(n)}


def read_history(run: Path) -> pd.DataFrame:
    """``threshold_history.csv`` of a cv run (no rows for a run made before the history existed)."""
    path = run / F.THRESHOLD_HISTORY
    return pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=list(HISTORY_COLUMNS))


def write_selection(run: Path, selection: dict[str, Any], *, command: str) -> None:
    """``threshold_selection.json`` (the selection ``trainer final`` uses), its copy
    ``threshold_history/threshold_selection_<n>.json`` and row n of ``threshold_history.csv``.

    A run made before the history existed gets its earlier selection recorded first (row 1, the
    file's modification time, command ``cv``).
    """
    rows = read_history(run).to_dict("records")
    current = run / F.THRESHOLD_SELECTION
    (run / F.THRESHOLD_HISTORY_DIR).mkdir(exist_ok=True)
    if not rows and current.is_file():
        import json

        old = json.loads(current.read_text())
        stamp = _dt.datetime.fromtimestamp(current.stat().st_mtime, _dt.UTC).isoformat(timespec="seconds")
        write_json(run / F.threshold_history_selection(1), old)
        rows.append(_history_row(old, 1, stamp, "cv"))
    n = len(rows) + 1
    write_json(current, selection)
    write_json(run / F.threshold_history_selection(n), selection)
    rows.append(_history_row(selection, n, _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), command))
    pd.DataFrame(rows, columns=list(HISTORY_COLUMNS)).to_csv(run / F.THRESHOLD_HISTORY, index=False)


def write_oof_evaluation(run: Path, oof: pd.DataFrame, patient_table: pd.DataFrame | None, cfg: TrainConfig) -> None:
    """``cv_oof_patient_predictions.csv`` and the OOF reliability diagram ``cv_calibration.png``."""
    if patient_table is not None:
        patient_table.to_csv(run / F.CV_OOF_PATIENT_PREDICTIONS, index=False)
    if len(oof):
        from trainer.report.plots import plot_calibration

        plot_calibration({"OOF": (oof["label"].to_numpy().astype(int), oof["prob"].to_numpy(dtype=float))},
                         run / F.CV_CALIBRATION_PLOT, n_bins=cfg.calibration_bins, strategy=cfg.calibration_strategy,
                         title="Calibration (out-of-fold)")


def write_cv_metrics(run: Path, metrics: CVResult) -> None:
    """``cv_metrics.json``."""
    write_json(run / F.CV_METRICS, metrics)
