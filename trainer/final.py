"""``trainer final``: train once on the whole training pool and score the held-out test once.

Reads the cv run's effective config, split and threshold; never re-selects anything on test rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trainer.config import TrainConfig
from trainer.data import SliceSource
from trainer.evaluation.calibrators import fit_calibrator
from trainer.evaluation.fold_health import chance_warning
from trainer.evaluation.metrics import binary_metrics
from trainer.evaluation.promise import fold_stats_of, promise_vs_delivery
from trainer.loops import make_transform, predict, ranking_scores, train_model
from trainer.model import save_weights
from trainer.report.plots import plot_confusion, plot_pr, plot_roc
from trainer.results import CVResult, TestResult
from trainer.run_folder import RunError, load_run, run_kind
from trainer.runs import write_json
from trainer.split import canonical_groups, holdout_split


@dataclass(frozen=True)
class CVRun:
    """What ``trainer final`` reads from a cv run folder.

    Attributes:
        config: its ``effective_config.json``.
        split: its ``split.csv`` (ID, group, label, test, fold).
        selection: its ``threshold_selection.json`` (``threshold`` is the frozen decision threshold).
        store: its ``store.json`` (path, fingerprint, environment).
        metrics: its ``cv_metrics.json`` (None when absent).
        path: the folder.
    """

    config: TrainConfig
    split: pd.DataFrame
    selection: dict[str, Any]
    store: dict[str, Any]
    metrics: CVResult | None
    path: Path

    @property
    def threshold(self) -> float:
        """The decision threshold chosen in cross-validation."""
        return float(self.selection["threshold"])


def read_cv_run(cv_run: str | Path) -> CVRun:
    """The pieces of a cv run the final model needs (:func:`trainer.load_run`); a clear error naming a missing file."""
    if Path(cv_run).is_dir() and run_kind(cv_run) != "cv":
        raise RunError(f"{cv_run} is a final run, not a cv run: pass the cv run it was made from")
    r = load_run(cv_run, require=("effective_config.json", "split.csv", "threshold_selection.json", "store.json"))
    if r.split is None or r.selection is None:  # load_run's require= has checked both; this narrows the types
        raise RunError(f"{cv_run} lacks split.csv or threshold_selection.json")
    return CVRun(config=r.train_config, split=r.split, selection=r.selection, store=r.store,
                 metrics=CVResult.from_dict(r.cv_metrics) if r.cv_metrics else None, path=r.path)


def align_split(data: SliceSource, split: pd.DataFrame) -> pd.DataFrame:
    """The cv run's split rows in the dataset's row order; refuses a store whose ok IDs differ."""
    ids = data.table["ID"].astype(str).to_numpy()
    if set(ids) != set(split["ID"]) or len(ids) != len(split):
        raise RunError(
            f"the store's ok IDs ({len(ids)}) differ from the cv run's split ({len(split)} IDs): "
            f"use the store the cv run was made with"
        )
    return split.set_index("ID").loc[ids].reset_index()


def run_final(
    data: SliceSource, cv: CVRun, run: Path, *, on_epoch: Callable[[dict[str, Any]], None] | None = None
) -> TestResult:
    """Train on all non-test rows, score the test once; writes the model, predictions, metrics and plots.

    A grouped stratified holdout (``holdout_frac``) of the training pool is used for early stopping
    and for fitting the ``calibration`` map, exactly as each CV fold model did with its inner
    holdout; test probabilities are calibrated (``prob``) with the raw ones beside them
    (``prob_raw``). ``test_metrics.json["promised"]`` sets the CV's promise at the threshold
    beside the test's delivery (:func:`trainer.evaluation.promise.promise_vs_delivery`).
    """
    cfg = cv.config
    split = align_split(data, cv.split)
    pool = np.flatnonzero(~split["test"].to_numpy())
    test = np.flatnonzero(split["test"].to_numpy())
    groups = None if cfg.group_by == "none" else canonical_groups(data.groups)[pool]
    hold = holdout_split(data.labels[pool], groups, frac=cfg.holdout_frac, seed=cfg.seed)
    tr, ho = pool[~hold], pool[hold]
    model, hist, best = train_model(data, tr, ho, cfg, seed=int(cfg.seed), on_epoch=on_epoch)
    save_weights(model, run / "final_model.pt")
    pd.DataFrame(hist).to_csv(run / "final_history.csv", index=False)

    tf = make_transform(cfg)
    p_ho = predict(model, data, ho, tf, cfg)
    cal = fit_calibrator(cfg.calibration, data.labels[ho], p_ho)
    prob_raw = predict(model, data, test, tf, cfg)
    prob, y = cal(prob_raw), data.labels[test]
    pd.DataFrame({"ID": split["ID"].to_numpy()[test], "label": y, "prob": prob, "prob_raw": prob_raw,
                  "pred": (prob >= cv.threshold).astype(int)}).to_csv(run / "test_predictions.csv", index=False)
    result = _test_result(run, cv, data, split, test, prob, cal, best, ranking_scores(data.labels[ho], p_ho)[1],
                          n_train=len(tr), n_holdout=len(ho))
    write_json(run / "test_metrics.json", result)
    plot_roc(y, prob, run / "test_roc_curve.png", title="Test ROC")
    plot_pr(y, prob, run / "test_pr_curve.png", title="Test precision-recall")
    plot_confusion({**result.confusion, "threshold": cv.threshold}, run / "test_confusion.png")
    write_json(run / "model_card.json", _model_card(cv, data, pool, y, cal))
    return result


def _test_result(
    run: Path, cv: CVRun, data: SliceSource, split: pd.DataFrame, test: np.ndarray, prob: np.ndarray, cal: Any,
    best: float, holdout_auc: float, *, n_train: int, n_holdout: int,
) -> TestResult:
    """Threshold metrics, intervals (Wilson, DeLong, patient bootstrap), calibration, patient level and
    the CV's promise of the test predictions; writes ``test_calibration.png`` and ``test_patient_predictions.csv``."""
    from trainer.data import group_keys, next_slice_ids
    from trainer.evaluation import evaluate_predictions, public

    y, threshold = data.labels[test], cv.threshold
    m = binary_metrics(y, prob, threshold)
    full = evaluate_predictions(split["ID"].to_numpy()[test], y, prob, group_keys(data.table, "patient")[test],
                                threshold, cv.config, next_slice_ids(data.table))
    _write_test_evaluation(run, cv, y, prob, full.get("_patients"))
    ev = public(full)
    promised = None
    if cv.metrics is not None and cv.metrics.oof:
        promised = promise_vs_delivery(cv.metrics.oof, m, ev.get("intervals"), threshold, fold_stats_of(cv.metrics))
    return TestResult(
        metrics=m, confusion={k: int(m[k]) for k in ("tp", "fp", "tn", "fn")}, holdout_best_auprc=best,
        holdout_auc=holdout_auc, calibration=ev.get("calibration", cal.to_dict()), n_train=n_train,
        n_holdout=n_holdout, n_test=len(test),
        warnings=[w for w in (chance_warning("final model", holdout_auc), cal.note or None) if w],
        evaluation=ev.get("evaluation"), intervals=ev.get("intervals"), patient=ev.get("patient"), promised=promised,
    )


def _model_card(cv: CVRun, data: SliceSource, pool: np.ndarray, y: np.ndarray, cal: Any) -> dict[str, Any]:
    """``model_card.json``: what ``trainer predict`` needs to rebuild the model and its decision."""
    cfg = cv.config
    return {
        "model": "torchvision resnet18, head Dropout -> Linear(512, 1), sigmoid output",
        "weights_file": "final_model.pt",
        "store": cv.store,
        "config": cfg.to_dict(),
        "threshold": cv.threshold,
        "threshold_selection": cv.selection,
        # applied to the sigmoid output before the threshold (trainer/evaluation/calibrators.py); fitted on the holdout
        "calibration": cal.to_dict(),
        # trained, calibrated and (by `trainer predict`) scored in this arithmetic: bf16 autocast or fp32 (trainer/precision.py)
        "precision": cfg.precision,
        "train_prevalence": float(data.labels[pool].mean()),
        "test_prevalence": float(y.mean()) if len(y) else None,
        "input": {"windows": [list(w) for w in cfg.windows], "out_size": cfg.out_size, "normalisation": "ImageNet mean/std"},
        # the store's preprocessing: `trainer predict` rebuilds it and checks it against store.fingerprint
        "preprocess": dict(data.store.attrs.get("preprocess", {})),
    }


def _write_test_evaluation(run: Path, cv: CVRun, y: np.ndarray, prob: np.ndarray, patient_table: pd.DataFrame | None) -> None:
    """``test_patient_predictions.csv`` and ``test_calibration.png`` (with the cv run's OOF curve when it has one)."""
    if patient_table is not None:
        patient_table.to_csv(run / "test_patient_predictions.csv", index=False)
    if not len(y):
        return
    from trainer.report.plots import plot_calibration

    sets = {}
    oof_path = cv.path / "cv_oof_predictions.csv"
    oof = pd.read_csv(oof_path, dtype={"ID": str}) if oof_path.is_file() else None
    if oof is not None and len(oof):
        sets["OOF (cv)"] = (oof["label"].to_numpy().astype(int), oof["prob"].to_numpy(dtype=float))
    sets["test"] = (np.asarray(y).astype(int), np.asarray(prob, dtype=float))
    plot_calibration(sets, run / "test_calibration.png", n_bins=cv.config.calibration_bins,
                     strategy=cv.config.calibration_strategy, title="Calibration (test)")
