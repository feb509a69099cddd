"""``trainer final``: train once on the whole training pool and score the held-out test once.

Reads the cv run's effective config, split and threshold; never re-selects anything on test rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trainer.config import TrainConfig
from trainer.data import SliceSource
from trainer.evaluation.calibrators import fit_calibrator
from trainer.evaluation.fold_health import chance_warning
from trainer.evaluation.metrics import binary_metrics
from trainer.evaluation.promise import promise_vs_delivery
from trainer.loops import make_transform, predict, ranking_scores, train_model
from trainer.model import save_weights
from trainer.report.plots import plot_confusion, plot_pr, plot_roc
from trainer.run_folder import RunError, load_run, run_kind
from trainer.runs import write_json
from trainer.split import canonical_groups, holdout_split


def read_cv_run(cv_run: str | Path) -> dict[str, Any]:
    """The pieces of a cv run the final model needs (:func:`trainer.load_run`); a clear error naming a missing file."""
    if Path(cv_run).is_dir() and run_kind(cv_run) != "cv":
        raise RunError(f"{cv_run} is a final run, not a cv run: pass the cv run it was made from")
    r = load_run(cv_run, require=("effective_config.json", "split.csv", "threshold_selection.json", "store.json"))
    return {"config": TrainConfig.from_dict(r.config), "split": r.split, "threshold": r.selection, "store": r.store,
            "metrics": r.cv_metrics, "run": r.path}


def align_split(data: SliceSource, split: pd.DataFrame) -> pd.DataFrame:
    """The cv run's split rows in the dataset's row order; refuses a store whose ok IDs differ."""
    ids = data.table["ID"].astype(str).to_numpy()
    if set(ids) != set(split["ID"]) or len(ids) != len(split):
        raise RunError(
            f"the store's ok IDs ({len(ids)}) differ from the cv run's split ({len(split)} IDs): "
            f"use the store the cv run was made with"
        )
    return split.set_index("ID").loc[ids].reset_index()


def run_final(data: SliceSource, cv: dict[str, Any], run: Path, *, on_epoch=None) -> dict[str, Any]:
    """Train on all non-test rows, score the test once.

    A grouped stratified holdout (``holdout_frac``) of the training pool is used for early stopping
    and for fitting the ``calibration`` map, exactly as each CV fold model did with its inner
    holdout; test probabilities are calibrated (``prob``) with the raw ones beside them
    (``prob_raw``). ``test_metrics.json["promised"]`` sets the CV's promise at the threshold
    beside the test's delivery (:func:`trainer.evaluation.promise.promise_vs_delivery`).
    """
    cfg = cv["config"]
    split = align_split(data, cv["split"])
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
    threshold = float(cv["threshold"]["threshold"])
    prob_raw = predict(model, data, test, tf, cfg)
    prob = cal(prob_raw)
    y = data.labels[test]
    pred = (prob >= threshold).astype(int)
    pd.DataFrame({"ID": split["ID"].to_numpy()[test], "label": y, "prob": prob, "prob_raw": prob_raw, "pred": pred}).to_csv(
        run / "test_predictions.csv", index=False
    )
    m = binary_metrics(y, prob, threshold)
    holdout_auc = ranking_scores(data.labels[ho], p_ho)[1]
    warnings = [w for w in (chance_warning("final model", holdout_auc), cal.note or None) if w]
    metrics = {**m, "confusion": {k: m[k] for k in ("tp", "fp", "tn", "fn")}, "holdout_best_auprc": best,
               "holdout_auc": holdout_auc, "calibration": cal.to_dict(),
               "n_train": len(tr), "n_holdout": len(ho), "n_test": len(test), "warnings": warnings}
    # intervals (Wilson, DeLong, patient bootstrap), calibration and patient-level metrics
    from trainer.data import group_keys
    from trainer.evaluation import final_evaluation

    oof_path = Path(cv.get("run", "")) / "cv_oof_predictions.csv" if cv.get("run") else None
    oof = pd.read_csv(oof_path, dtype={"ID": str}) if oof_path is not None and oof_path.is_file() else None
    metrics.update(final_evaluation(run, split["ID"].to_numpy()[test], y, prob, group_keys(data.table, "patient")[test],
                                    threshold, cfg, oof=oof))
    if cv.get("metrics") and cv["metrics"].get("oof"):
        metrics["promised"] = promise_vs_delivery(cv["metrics"]["oof"], m, metrics.get("intervals"), threshold)
    write_json(run / "test_metrics.json", metrics)
    plot_roc(y, prob, run / "test_roc_curve.png", title="Test ROC")
    plot_pr(y, prob, run / "test_pr_curve.png", title="Test precision-recall")
    plot_confusion({**metrics["confusion"], "threshold": threshold}, run / "test_confusion.png")
    card = {
        "model": "torchvision resnet18, head Dropout -> Linear(512, 1), sigmoid output",
        "weights_file": "final_model.pt",
        "store": cv["store"],
        "config": cfg.to_dict(),
        "threshold": threshold,
        "threshold_selection": cv["threshold"],
        # applied to the sigmoid output before the threshold (trainer/evaluation/calibrators.py); fitted on the holdout
        "calibration": cal.to_dict(),
        "train_prevalence": float(data.labels[pool].mean()),
        "test_prevalence": float(y.mean()) if len(y) else None,
        "input": {"windows": [list(w) for w in cfg.windows], "out_size": cfg.out_size, "normalisation": "ImageNet mean/std"},
        # the store's preprocessing: `trainer predict` rebuilds it and checks it against store.fingerprint
        "preprocess": dict(data.store.attrs.get("preprocess", {})),
    }
    write_json(run / "model_card.json", card)
    return metrics
