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


def fold_rows(split: pd.DataFrame, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, validation) of fold ``k``: the other folds' pool rows, and fold ``k``'s rows."""
    tr = np.flatnonzero((~split["test"] & (split["fold"] != k)).to_numpy())
    va = np.flatnonzero((split["fold"] == k).to_numpy())
    return tr, va


def fold_ids(split: pd.DataFrame) -> list[int]:
    """The folds of the split's training pool, in order."""
    return [int(k) for k in sorted(split.loc[~split["test"], "fold"].unique())]


def run_fold(
    data: Dataset, split: pd.DataFrame, cfg: dict[str, Any], k: int, *,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train and score fold ``k`` (seed ``cfg["seed"] + k``); the one per-fold body of every CV path.

    Used in turn by :func:`run_folds` and, inside a dask.distributed worker, by
    :func:`trainer.distributed.fold_task`, so a fold-parallel CV is the sequential one by construction.

    Returns plain Python values (small enough to send back from a worker):
    ``{"oof": {"ID": [...], "label": [...], "prob": [...], "fold": [...]}, "history": [epoch rows],
    "fold": {"fold", "best_val_auprc", "train_auc", "n_train", "n_val", "seconds", "device"}}``.
    """
    k = int(k)
    tr, va = fold_rows(split, k)
    t0 = time.perf_counter()
    tf = make_transform(cfg)
    model, hist, best = train_model(data, tr, va, cfg, seed=int(cfg["seed"]) + k, on_epoch=on_epoch)
    p_val = predict(model, data, va, tf, cfg)
    p_tr = predict(model, data, tr, tf, cfg)
    y_tr = data.labels[tr]
    train_auc = float(roc_auc_score(y_tr, p_tr)) if len(np.unique(y_tr)) == 2 else float("nan")
    return {
        "oof": {"ID": [str(i) for i in split["ID"].to_numpy()[va]], "label": data.labels[va].tolist(),
                "prob": np.asarray(p_val, dtype=np.float64).tolist(), "fold": [k] * len(va)},
        "history": [{key: (v.item() if isinstance(v, np.generic) else v) for key, v in r.items()} for r in hist],
        "fold": {"fold": k, "best_val_auprc": float(best), "train_auc": train_auc, "n_train": len(tr), "n_val": len(va),
                 "seconds": time.perf_counter() - t0, "device": str(data.device)},
    }


def collect_folds(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The :func:`run_fold` results of every fold -> ``{"oof", "histories", "folds"}`` (frames ordered by fold)."""
    parts = sorted(parts, key=lambda r: r["fold"]["fold"])
    oof = pd.concat([pd.DataFrame(r["oof"], columns=["ID", "label", "prob", "fold"]) for r in parts], ignore_index=True)
    hist = pd.concat([pd.DataFrame(r["history"]).assign(fold=r["fold"]["fold"]) for r in parts], ignore_index=True)
    cols = ["fold"] + [c for c in hist.columns if c != "fold"]
    return {"oof": oof, "histories": hist[cols], "folds": [dict(r["fold"]) for r in parts]}


#: ``runner(jobs)`` runs ``[(cfg, fold), ...]`` and returns their :func:`run_fold` results in the same
#: order (e.g. :meth:`trainer.distributed.FoldRunner.__call__`, one Dask task per job); None: in turn, here.
FoldRunnerFn = Callable[[list[tuple[dict[str, Any], int]]], list[dict[str, Any]]]


def run_folds(
    data: Dataset, split: pd.DataFrame, cfg: dict[str, Any], *, progress: Callable[[str], Any] | None = None,
    runner: FoldRunnerFn | None = None,
) -> dict[str, Any]:
    """Train one model per fold; return OOF predictions, histories and per-fold scores.

    With ``runner`` the folds run wherever it sends them (a dask.distributed cluster); without, in
    turn on ``data``'s device. Both call :func:`run_fold` for each fold.
    """
    ids = fold_ids(split)
    if runner is not None:
        return collect_folds(runner([(cfg, k) for k in ids]))
    parts = []
    for k in ids:
        bar = progress(f"fold {k + 1}/{len(ids)}") if progress else None
        parts.append(run_fold(data, split, cfg, k, on_epoch=(lambda r, bar=bar: bar.update(r)) if bar else None))
        if bar:
            bar.close()
    return collect_folds(parts)


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
    data: Dataset, split: pd.DataFrame, cfg: dict[str, Any], grid: list[dict[str, Any]], *, progress=None,
    runner: FoldRunnerFn | None = None,
) -> tuple[pd.DataFrame, dict[str, Any], dict[str, Any]]:
    """Cross-validate every candidate; return the grid table, the best config and its CV result.

    With ``runner`` every candidate x fold is one job, all submitted at once.
    """
    cands = []
    for i, over in enumerate(grid):
        if "preprocess" in over or any(k in over for k in ("seed", "test_size", "k_folds", "group_by")):
            raise ConfigError(f"grid candidate {i} changes the split or preprocessing ({over}); only training keys may vary")
        cands.append(_validate(_merge(copy.deepcopy(cfg), over)))
    if runner is not None:
        ids = fold_ids(split)
        parts = runner([(c, k) for c in cands for k in ids])
        results = [collect_folds(parts[i * len(ids) : (i + 1) * len(ids)]) for i in range(len(cands))]
    else:
        results = [run_folds(data, split, c, progress=progress) for c in cands]
    rows, best = [], None
    for i, (over, c, res) in enumerate(zip(grid, cands, results)):
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
