"""``trainer final``: the command and its run folder, end to end -- train once on the whole training
pool, score the held-out test once; every file of the final run folder is written here, once.

Reads the cv run's effective config, split and threshold (:func:`read_cv_run`); never re-selects
anything on test rows. :func:`run_final_command` checks the cheap local things first (the cv run,
the tracking settings, the store and its fingerprint, the device) and the ImageNet weights last.

Files (names in :mod:`trainer.runs.files`), in the order written: ``run_args.json``,
``effective_config.json``, ``store.json``, ``final_model.pt``, ``final_history.csv``, the distribution-shift
reference (``shift_reference.json``, ``shift_embedding.npz``, ``shift_scores.csv``, ``test_shift.png``),
``test_predictions.csv``, ``test_patient_predictions.csv``, ``test_calibration.png``, the test
ROC/PR/confusion figures, ``model_card.json``, ``test_metrics.json`` (last, with the command's wall
time), ``report.html``.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trainer.config import TrainConfig
from trainer.data import SliceSource, load_dataset, open_store_for, setup_device
from trainer.evaluation.calibrators import fit_calibrator
from trainer.evaluation.fold_health import chance_warning
from trainer.evaluation.inputs import canonical_groups
from trainer.evaluation.metrics import binary_metrics, ranking_scores
from trainer.evaluation.promise import fold_stats_of, format_promise, promise_vs_delivery
from trainer.loops import predict, train_model
from trainer.model import check_weights, save_weights
from trainer.progress import EpochBar
from trainer.report.plots import plot_confusion, plot_pr, plot_roc
from trainer.runs import files as F
from trainer.runs.folder import RunError, load_run, run_kind
from trainer.runs.results import CVResult, TestResult
from trainer.runs.tracking import check_tracking, track
from trainer.runs.write import environment, new_run_dir, write_config, write_json
from trainer.shift.final_ref import write_shift_reference
from trainer.split import holdout_split
from trainer.transforms import make_transform


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
    r = load_run(cv_run, require=(F.EFFECTIVE_CONFIG, F.SPLIT, F.THRESHOLD_SELECTION, F.STORE))
    if r.split is None or r.selection is None:  # load_run's require= has checked both; this narrows the types
        raise RunError(f"{cv_run} lacks {F.SPLIT} or {F.THRESHOLD_SELECTION}")
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


def check_labels(cv: CVRun, ok_rows: pd.DataFrame, store: str) -> None:
    """Refuse a store whose labels differ from those the cv run used (``store.json["labels_hash"]``;
    a cv run made before the key existed is not checked).

    Raises:
        RunError: the hashes differ: the store was relabelled (``neurocache relabel``) after the cv run.
    """
    want = cv.store.get("labels_hash")
    if not want:
        return
    from neurocache.relabel import labels_hash

    have = labels_hash(ok_rows)
    if have != want:
        raise RunError(f"the labels of store {store} (labels_hash {have}) differ from those cv run {cv.path} used "
                       f"(labels_hash {want}): the store was relabelled after this cv run; run `trainer cv` again "
                       f"(its folds, threshold and promise rest on the old labels)")


def run_final_command(
    cv_run: str | Path, *, store: str | None = None, out: str | Path, quiet: bool = False,
    argv: list[str] | None = None, started: float | None = None,
) -> Path:
    """``python -m trainer final``: check, train the final model, score the test once, write the run folder.

    Args:
        cv_run: the cv run folder (its config, split, threshold and store are used).
        store: the store to read (default: the cv run's ``store.json`` path); its fingerprint must be the cv run's.
        out: the folder for run folders; the run is ``out/run_YYYYMMDD_HHMMSS_final``.
        quiet: no progress bar.
        argv: the command line, recorded in ``run_args.json``.
        started: ``time.perf_counter()`` when the command started (default: now), for the wall time.

    Returns:
        The run folder.

    Raises:
        neurocache.errors.UserError: a missing or incomplete cv run, a store that is not the cv run's
            (another fingerprint, or labels changed since the cv run: :func:`check_labels`), an
            unavailable device or weights (the CLI prints its message); nothing is written before.
    """
    t0 = time.perf_counter() if started is None else started
    if store:
        from neurocache.remote import StoreLocation

        StoreLocation(store)  # an unusable --store (e.g. credentials in the URL), before the cv run is read
    cv = read_cv_run(cv_run)
    cfg = cv.config
    check_tracking(cfg)
    store = store or cv.store["path"]
    opened = open_store_for(str(store), cfg)
    if opened.fingerprint != cv.store["fingerprint"]:
        raise RunError(f"store {store} has fingerprint {opened.fingerprint[:12]}… but the cv run used {cv.store['fingerprint'][:12]}…")
    check_labels(cv, opened.ok_rows(), store)
    device = setup_device(cfg)
    check_weights(cfg.weights)
    from trainer.precision import recorded_precision

    cfg = cfg.with_overrides({"precision": recorded_precision(cfg.precision, cfg.amp, device)})  # as the fold models
    cv = dataclasses.replace(cv, config=cfg)
    data = load_dataset(str(store), cfg, device, store=opened)
    return _final_run(data, cv, store=str(store), out=out, quiet=quiet,
                      run_args={"argv": argv, "cv_run": str(cv_run), "store": str(store)}, started=t0)


def _final_run(data: SliceSource, cv: CVRun, *, store: str, out: str | Path, quiet: bool, run_args: dict[str, Any],
               started: float) -> Path:
    """The run itself, once every check has passed: the run folder, file by file (see the module docstring)."""
    from trainer.distributed import store_address

    cfg = cv.config
    run = new_run_dir(out, "final")
    write_json(run / F.RUN_ARGS, run_args)
    write_config(run, cfg)
    write_json(run / F.STORE, {**cv.store, "path": store_address(store), "environment": environment(data.device)})
    bar = EpochBar("final", cfg.total_epochs, quiet)
    m = run_final(data, cv, run, on_epoch=bar.update, started=started)
    bar.close()
    t = m.metrics
    print(f"TEST (n={m.n_test}, threshold {t['threshold']:.2f}): ROC-AUC {t['auc']:.3f}  AUPRC {t['ap']:.3f}  "
          f"sens {t['sens']:.3f}  spec {t['spec']:.3f}  PPV {t['ppv']:.3f}  NPV {t['npv']:.3f}  F1 {t['f1']:.3f}  "
          f"(tp {t['tp']} fp {t['fp']} tn {t['tn']} fn {t['fn']}); {m.wall_seconds:.0f} s")
    if m.promised is not None:
        print(format_promise(m.promised))
    for w in m.warnings:
        print(f"WARNING: {w}", file=sys.stderr)
    from trainer.report.html import write_run_report

    write_run_report(run, m.wall_seconds)
    track(run)
    print(f"run folder: {run}")
    return run


def run_final(
    data: SliceSource, cv: CVRun, run: Path, *, on_epoch: Callable[[dict[str, Any]], None] | None = None,
    started: float | None = None,
) -> TestResult:
    """Train on all non-test rows, score the test once; writes the model, predictions, plots, the model
    card and, last, ``test_metrics.json`` (``wall_seconds``: from ``started``, the command's
    ``time.perf_counter()`` at its start, to that write; default: this call's start).

    A grouped stratified holdout (``holdout_frac``) of the training pool is used for early stopping
    and for fitting the ``calibration`` map, exactly as each CV fold model did with its inner
    holdout; test probabilities are calibrated (``prob``) with the raw ones beside them
    (``prob_raw``). ``test_metrics.json["promised"]`` sets the CV's promise at the threshold
    beside the test's delivery (:func:`trainer.evaluation.promise.promise_vs_delivery`).
    """
    t0 = time.perf_counter() if started is None else started
    cfg = cv.config
    split = align_split(data, cv.split)
    pool = np.flatnonzero(~split["test"].to_numpy())
    test = np.flatnonzero(split["test"].to_numpy())
    groups = None if cfg.group_by == "none" else canonical_groups(data.groups)[pool]
    hold = holdout_split(data.labels[pool], groups, frac=cfg.holdout_frac, seed=cfg.seed)
    tr, ho = pool[~hold], pool[hold]
    model, hist, best = train_model(data, tr, ho, cfg, seed=int(cfg.seed), on_epoch=on_epoch)
    save_weights(model, run / F.FINAL_MODEL)
    pd.DataFrame(hist).to_csv(run / F.FINAL_HISTORY, index=False)

    tf = make_transform(cfg)
    write_shift_reference(run, model, data, tr, ho, test, tf, cfg)  # shift_reference.json & co (trainer/shift/)
    p_ho = predict(model, data, ho, tf, cfg)
    cal = fit_calibrator(cfg.calibration, data.labels[ho], p_ho)
    prob_raw = predict(model, data, test, tf, cfg)
    prob, y = cal(prob_raw), data.labels[test]
    pd.DataFrame({"ID": split["ID"].to_numpy()[test], "label": y, "prob": prob, "prob_raw": prob_raw,
                  "pred": (prob >= cv.threshold).astype(int)}).to_csv(run / F.TEST_PREDICTIONS, index=False)
    result = _test_result(run, cv, data, split, test, prob, cal, best, ranking_scores(data.labels[ho], p_ho)[1],
                          n_train=len(tr), n_holdout=len(ho))
    plot_roc(y, prob, run / F.TEST_ROC, title="Test ROC")
    plot_pr(y, prob, run / F.TEST_PR, title="Test precision-recall")
    plot_confusion({**result.confusion, "threshold": cv.threshold}, run / F.TEST_CONFUSION)
    write_json(run / F.MODEL_CARD, _model_card(cv, data, pool, y, cal))
    result = dataclasses.replace(result, wall_seconds=round(time.perf_counter() - t0, 2))
    write_json(run / F.TEST_METRICS, result)
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
        promised = promise_vs_delivery(cv.metrics.oof, m, ev.get("intervals"), threshold, fold_stats_of(cv.metrics),
                                       cv.selection.get("sens_bound"))
    return TestResult(
        metrics=m, confusion={k: int(m[k]) for k in ("tp", "fp", "tn", "fn")}, holdout_best_auprc=best,
        holdout_auc=holdout_auc, calibration=ev.get("calibration", cal.to_dict()), n_train=n_train,
        n_holdout=n_holdout, n_test=len(test),
        warnings=[w for w in (chance_warning("final model", holdout_auc), cal.note or None) if w],
        evaluation=ev.get("evaluation"), intervals=ev.get("intervals"), operating_points=ev.get("operating_points"),
        patient=ev.get("patient"), promised=promised,
    )


def _model_card(cv: CVRun, data: SliceSource, pool: np.ndarray, y: np.ndarray, cal: Any) -> dict[str, Any]:
    """``model_card.json``: what ``trainer predict`` needs to rebuild the model and its decision."""
    cfg = cv.config
    return {
        "model": "torchvision resnet18, head Dropout -> Linear(512, 1), sigmoid output",
        "weights_file": F.FINAL_MODEL,
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
        patient_table.to_csv(run / F.TEST_PATIENT_PREDICTIONS, index=False)
    if not len(y):
        return
    from trainer.report.plots import plot_calibration

    sets = {}
    oof_path = cv.path / F.CV_OOF_PREDICTIONS
    oof = pd.read_csv(oof_path, dtype={"ID": str}) if oof_path.is_file() else None
    if oof is not None and len(oof):
        sets["OOF (cv)"] = (oof["label"].to_numpy().astype(int), oof["prob"].to_numpy(dtype=float))
    sets["test"] = (np.asarray(y).astype(int), np.asarray(prob, dtype=float))
    plot_calibration(sets, run / F.TEST_CALIBRATION_PLOT, n_bins=cv.config.calibration_bins,
                     strategy=cv.config.calibration_strategy, title="Calibration (test)")
