"""``trainer cv``: split, (grid), K-fold cross-validation, threshold tables and selection.

Everything is chosen on the training pool only; test rows are flagged in ``split.csv`` and never
touched here.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
import yaml
from sklearn.metrics import roc_auc_score

from neurocache.config import ConfigError
from trainer.config import _merge, _validate
from trainer.data import Dataset
from trainer.loops import make_transform, predict, train_model
from trainer.metrics import threshold_grid
from trainer.report import plot_histories, plot_mean_pr, plot_mean_roc
from trainer.runs import write_json
from trainer.split import check_no_group_crosses, make_split
from trainer.thresholds import cv_threshold_tables, select_threshold


def split_table(data: Dataset, cfg: dict[str, Any]) -> pd.DataFrame:
    """The run's split: ID, group, label, test, fold (-1 for test rows); checked group-safe."""
    groups = None if cfg["group_by"] == "none" else data.groups
    is_test, fold = make_split(data.labels, groups, test_size=cfg["test_size"], k_folds=cfg["k_folds"], seed=cfg["seed"])
    check_no_group_crosses(data.groups, is_test, fold)
    return pd.DataFrame(
        {"ID": data.table["ID"].to_numpy(), "group": data.groups, "label": data.labels, "test": is_test, "fold": fold}
    )


def run_folds(
    data: Dataset, split: pd.DataFrame, cfg: dict[str, Any], *, progress: Callable[[str], Any] | None = None
) -> dict[str, Any]:
    """Train one model per fold; return OOF predictions, histories and per-fold scores."""
    oof_parts, hist_parts, folds = [], [], []
    fold_ids = sorted(split.loc[~split["test"], "fold"].unique())
    tf = make_transform(cfg)
    for k in fold_ids:
        tr = np.flatnonzero((~split["test"] & (split["fold"] != k)).to_numpy())
        va = np.flatnonzero((split["fold"] == k).to_numpy())
        t0 = time.perf_counter()
        bar = progress(f"fold {k + 1}/{len(fold_ids)}") if progress else None
        model, hist, best = train_model(
            data, tr, va, cfg, seed=int(cfg["seed"]) + int(k),
            on_epoch=(lambda r, bar=bar: bar.update(r)) if bar else None,
        )
        if bar:
            bar.close()
        p_val = predict(model, data, va, tf, cfg)
        p_tr = predict(model, data, tr, tf, cfg)
        y_tr = data.labels[tr]
        train_auc = float(roc_auc_score(y_tr, p_tr)) if len(np.unique(y_tr)) == 2 else float("nan")
        oof_parts.append(pd.DataFrame({"ID": split["ID"].to_numpy()[va], "label": data.labels[va], "prob": p_val, "fold": k}))
        hist_parts.append(pd.DataFrame(hist).assign(fold=k))
        folds.append({"fold": int(k), "best_val_auprc": best, "train_auc": train_auc, "n_train": len(tr), "n_val": len(va),
                      "seconds": time.perf_counter() - t0})
    oof = pd.concat(oof_parts, ignore_index=True)
    hist = pd.concat(hist_parts, ignore_index=True)
    cols = ["fold"] + [c for c in hist.columns if c != "fold"]
    return {"oof": oof, "histories": hist[cols], "folds": folds}


def summarise(result: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    """Threshold tables over the OOF predictions and the per-fold metric summary."""
    by_fold, summary = cv_threshold_tables(
        result["oof"], threshold_grid(cfg["threshold_step"]), {f["fold"]: f["train_auc"] for f in result["folds"]}
    )
    best = np.array([f["best_val_auprc"] for f in result["folds"]], dtype=float)
    return {"by_fold": by_fold, "summary": summary, "best_mean": float(np.mean(best)),
            "best_std": float(np.std(best, ddof=1)) if len(best) > 1 else float("nan")}


def load_grid(path: str | Path) -> list[dict[str, Any]]:
    """Candidates of ``configs/grid.yaml``: ``candidates: [ {key: value, ...}, ... ]``."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    cands = data.get("candidates") if isinstance(data, dict) else None
    if not isinstance(cands, list) or not cands or not all(isinstance(c, dict) for c in cands):
        raise ConfigError(f"{path}: expected `candidates:` with a list of mappings of config overrides")
    return cands


def run_grid(
    data: Dataset, split: pd.DataFrame, cfg: dict[str, Any], grid: list[dict[str, Any]], *, progress=None
) -> tuple[pd.DataFrame, dict[str, Any], dict[str, Any]]:
    """Cross-validate every candidate; return the grid table, the best config and its CV result."""
    rows, best = [], None
    for i, over in enumerate(grid):
        if "preprocess" in over or any(k in over for k in ("seed", "test_size", "k_folds", "group_by")):
            raise ConfigError(f"grid candidate {i} changes the split or preprocessing ({over}); only training keys may vary")
        c = _validate(_merge(copy.deepcopy(cfg), over))
        res = run_folds(data, split, c, progress=progress)
        s = summarise(res, c)
        rows.append({"candidate": i, **{k: str(v) for k, v in over.items()}, "cv_auprc_mean": s["best_mean"], "cv_auprc_std": s["best_std"]})
        if best is None or s["best_mean"] > best[0]:
            best = (s["best_mean"], c, res)
    return pd.DataFrame(rows), best[1], best[2]


def write_cv_outputs(
    run: Path, split: pd.DataFrame, res: dict[str, Any], cfg: dict[str, Any], *, patients: dict[str, str] | None = None
) -> dict[str, Any]:
    """Write the CV tables, plots, threshold selection and ``cv_metrics.json``; return the metrics.

    ``cv_metrics.json["oof"]`` holds the pooled OOF evaluation at the selected threshold (intervals,
    calibration, patient level; :func:`trainer.evaluation.cv_evaluation`); ``patients`` maps ID ->
    patient key for the patient bootstrap and aggregation (default: the split's group column).
    """
    s = summarise(res, cfg)
    res["oof"].to_csv(run / "cv_oof_predictions.csv", index=False)
    res["histories"].to_csv(run / "cv_histories.csv", index=False)
    s["by_fold"].to_csv(run / "cv_thresholds_by_fold.csv", index=False)
    s["summary"].to_csv(run / "cv_thresholds_summary.csv", index=False)
    roc = plot_mean_roc(res["oof"], run / "cv_mean_roc.png")
    pr = plot_mean_pr(res["oof"], run / "cv_mean_pr.png")
    plot_histories(res["histories"], run / "cv_history.png")
    selection = select_threshold(s["summary"], cfg["threshold_strategy"], cfg["sens_target"] if cfg["threshold_strategy"] == "sens_target" else None)
    write_json(run / "threshold_selection.json", selection)
    metrics = {
        "k_folds": int(cfg["k_folds"]),
        "per_fold": res["folds"],
        "best_val_auprc_mean": s["best_mean"],
        "best_val_auprc_std": s["best_std"],
        "oof_auc_mean": roc["mean_auc"], "oof_auc_std": roc["std_auc"],
        "oof_ap_mean": pr["mean_ap"], "oof_ap_std": pr["std_ap"],
        "n_train_pool": int((~split["test"]).sum()), "n_test": int(split["test"].sum()),
        "threshold": selection["threshold"], "threshold_strategy": selection["strategy"],
    }
    from trainer.evaluation import cv_evaluation

    metrics["oof"] = cv_evaluation(run, split, res["oof"], float(selection["threshold"]), cfg, patients)
    write_json(run / "cv_metrics.json", metrics)
    return metrics
