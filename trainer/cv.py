"""``trainer cv``: split, (grid), K-fold cross-validation, threshold tables and selection.

Everything is chosen on the training pool only; test rows are flagged in ``split.csv`` and never
touched here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from neurocache.config import ConfigError
from trainer.config import TrainConfig
from trainer.data import SliceSource
from trainer.evaluation.calibrators import fit_calibrator
from trainer.evaluation.curves import mean_pr, mean_roc
from trainer.evaluation.fold_health import stuck_folds
from trainer.evaluation.thresholds import (
    candidate_thresholds,
    cv_threshold_tables,
    select_threshold,
    threshold_spread,
)
from trainer.loops import make_transform, predict, ranking_scores, train_model
from trainer.report.history import plot_histories
from trainer.report.plots import plot_mean_pr, plot_mean_roc
from trainer.results import CVResult, FoldResult
from trainer.runs import write_json
from trainer.split import (
    canonical_groups,
    check_no_group_crosses,
    holdout_split,
    make_split,
)


def split_table(data: SliceSource, cfg: TrainConfig) -> pd.DataFrame:
    """The run's split: ID, group, label, test, fold (-1 for test rows); checked group-safe."""
    groups = None if cfg.group_by == "none" else canonical_groups(data.groups)
    is_test, fold = make_split(data.labels, groups, test_size=cfg.test_size, k_folds=cfg.k_folds, seed=cfg.seed)
    check_no_group_crosses(data.groups, is_test, fold)
    return pd.DataFrame(
        {"ID": data.table["ID"].to_numpy(), "group": data.groups, "label": data.labels, "test": is_test, "fold": fold}
    )


#: ``cv_oof_predictions.csv``: ``prob`` is calibrated (what thresholds are chosen on), ``prob_raw`` the model's sigmoid.
OOF_COLUMNS: tuple[str, ...] = ("ID", "label", "prob", "prob_raw", "fold")


def fold_rows(split: pd.DataFrame, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, validation) of fold ``k``: the other folds' pool rows, and fold ``k``'s rows."""
    tr = np.flatnonzero((~split["test"] & (split["fold"] != k)).to_numpy())
    va = np.flatnonzero((split["fold"] == k).to_numpy())
    return tr, va


def inner_holdout(data: SliceSource, tr: np.ndarray, cfg: TrainConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split training rows ``tr`` into (fit rows, early-stopping/calibration holdout rows).

    The same rule as the final model's: a grouped (by ``group_by``), stratified holdout of about
    ``holdout_frac`` of the groups (:func:`trainer.split.holdout_split`), seeded by ``seed``.

    Raises:
        ValueError: naming the fold's training rows and the fix, when the rows have too few
            groups per class for a holdout.
    """
    groups = None if cfg.group_by == "none" else canonical_groups(data.groups)[tr]
    try:
        hold = holdout_split(data.labels[tr], groups, frac=cfg.holdout_frac, seed=seed)
    except ValueError as e:
        raise ValueError(
            f"cannot carve an inner holdout (holdout_frac={cfg.holdout_frac}) from {len(tr)} training rows: {e} "
            f"Use fewer k_folds, another holdout_frac, more data, or cv_early_stopping=val_fold (optimistic)."
        ) from None
    return tr[~hold], tr[hold]


def fold_ids(split: pd.DataFrame) -> list[int]:
    """The folds of the split's training pool, in order."""
    return [int(k) for k in sorted(split.loc[~split["test"], "fold"].unique())]


def run_fold(
    data: SliceSource, split: pd.DataFrame, cfg: TrainConfig, k: int, *,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train and score fold ``k`` (seed ``cfg.seed + k``); the one per-fold body of every CV path.

    With ``cv_early_stopping: inner_holdout`` (default) the fold's model is what ``trainer final``
    would make from the other folds: it trains on them minus an inner holdout
    (:func:`inner_holdout`), early-stops and is calibrated (``calibration``) on that holdout, and
    its validation fold is scored once, never seen before. With ``val_fold`` (the seed's way,
    optimistic) it early-stops and is calibrated on the validation fold itself.

    Used in turn by :func:`run_folds` and, inside a dask.distributed worker, by
    :func:`trainer.distributed.fold_task`, so a fold-parallel CV is the sequential one by construction.

    Returns plain Python values (small enough to send back from a worker):
    ``{"oof": {"ID", "label", "prob" (calibrated), "prob_raw", "fold"}, "history": [epoch rows],
    "fold": FoldResult.to_dict()}`` (:class:`trainer.results.FoldResult`).
    """
    k = int(k)
    tr, va = fold_rows(split, k)
    seed = int(cfg.seed) + k
    if cfg.cv_early_stopping == "inner_holdout":
        fit, stop = inner_holdout(data, tr, cfg, seed)
    else:
        fit, stop = tr, va
    t0 = time.perf_counter()
    tf = make_transform(cfg)
    model, hist, best = train_model(data, fit, stop, cfg, seed=seed, on_epoch=on_epoch)
    p_stop = predict(model, data, stop, tf, cfg)
    cal = fit_calibrator(cfg.calibration, data.labels[stop], p_stop)
    p_raw = predict(model, data, va, tf, cfg) if stop is not va else p_stop
    p_val = cal(p_raw)
    p_fit = predict(model, data, fit, tf, cfg)
    val_ap, val_auc = ranking_scores(data.labels[va], p_val)
    return {
        "oof": {"ID": [str(i) for i in split["ID"].to_numpy()[va]], "label": data.labels[va].tolist(),
                "prob": p_val.tolist(), "prob_raw": np.asarray(p_raw, dtype=np.float64).tolist(), "fold": [k] * len(va)},
        "history": [{key: (v.item() if isinstance(v, np.generic) else v) for key, v in r.items()} for r in hist],
        "fold": FoldResult(
            fold=k, early_stopping=cfg.cv_early_stopping, best_val_auprc=float(best),
            holdout_auc=ranking_scores(data.labels[stop], p_stop)[1], val_auc=val_auc, val_ap=val_ap,
            train_auc=ranking_scores(data.labels[fit], p_fit)[1], n_train=len(fit),
            n_holdout=len(stop) if stop is not va else 0, n_val=len(va), calibration=cal.to_dict(),
            seconds=time.perf_counter() - t0, device=str(data.device)).to_dict(),
    }


@dataclass(frozen=True)
class CVFolds:
    """Every fold of one cross-validation, ordered by fold.

    Attributes:
        oof: ``cv_oof_predictions.csv`` rows (:data:`OOF_COLUMNS`).
        histories: ``cv_histories.csv``: one row per fold x epoch (``fold`` first).
        folds: one :class:`~trainer.results.FoldResult` per fold.
    """

    oof: pd.DataFrame
    histories: pd.DataFrame
    folds: list[FoldResult]


def collect_folds(parts: list[dict[str, Any]]) -> CVFolds:
    """The :func:`run_fold` results of every fold -> :class:`CVFolds` (ordered by fold)."""
    parts = sorted(parts, key=lambda r: r["fold"]["fold"])
    oof = pd.concat([pd.DataFrame(r["oof"], columns=list(OOF_COLUMNS)) for r in parts], ignore_index=True)
    hist = pd.concat([pd.DataFrame(r["history"]).assign(fold=r["fold"]["fold"]) for r in parts], ignore_index=True)
    cols = ["fold"] + [c for c in hist.columns if c != "fold"]
    return CVFolds(oof=oof, histories=hist[cols], folds=[FoldResult.from_dict(r["fold"]) for r in parts])


#: ``runner(jobs)`` runs ``[(cfg, fold), ...]`` and returns their :func:`run_fold` results in the same
#: order (e.g. :meth:`trainer.distributed.FoldRunner.__call__`, one Dask task per job); None: in turn, here.
FoldRunnerFn = Callable[[list[tuple[TrainConfig, int]]], list[dict[str, Any]]]


def run_folds(
    data: SliceSource, split: pd.DataFrame, cfg: TrainConfig, *, progress: Callable[[str], Any] | None = None,
    runner: FoldRunnerFn | None = None,
) -> CVFolds:
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


def summarise(result: CVFolds, cfg: TrainConfig) -> dict[str, Any]:
    """Threshold tables over the OOF predictions (candidates from the pooled OOF scores, see
    :func:`trainer.evaluation.thresholds.candidate_thresholds`) and the per-fold metric summary.

    ``oof_ap_mean`` (mean over folds of the validation folds' AUPRC, each scored once) is what
    a grid ranks candidates by; ``best_mean`` is the mean best early-stopping AUPRC.
    """
    cand = candidate_thresholds(result.oof["prob"].to_numpy(), source=cfg.threshold_candidates,
                                step=cfg.threshold_step)
    by_fold, summary = cv_threshold_tables(result.oof, cand, {f.fold: float("nan") if f.train_auc is None else f.train_auc for f in result.folds})
    best = np.array([f.best_val_auprc for f in result.folds], dtype=float)
    fold_ap = by_fold.groupby("fold")["ap"].first().to_numpy(dtype=float)
    return {"by_fold": by_fold, "summary": summary, "best_mean": float(np.mean(best)),
            "best_std": float(np.std(best, ddof=1)) if len(best) > 1 else float("nan"),
            "oof_ap_mean": float(np.nanmean(fold_ap)),
            "oof_ap_std": float(np.nanstd(fold_ap, ddof=1)) if len(fold_ap) > 1 else float("nan")}


def load_grid(path: str | Path) -> list[dict[str, Any]]:
    """Candidates of ``configs/grid.yaml``: ``candidates: [ {key: value, ...}, ... ]``."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    cands = data.get("candidates") if isinstance(data, dict) else None
    if not isinstance(cands, list) or not cands or not all(isinstance(c, dict) for c in cands):
        raise ConfigError(f"{path}: expected `candidates:` with a list of mappings of config overrides")
    return cands


def run_grid(
    data: SliceSource, split: pd.DataFrame, cfg: TrainConfig, grid: list[dict[str, Any]], *, progress=None,
    runner: FoldRunnerFn | None = None,
) -> tuple[pd.DataFrame, TrainConfig, CVFolds]:
    """Cross-validate every candidate; return the grid table, the best config and its CV result.

    With ``runner`` every candidate x fold is one job, all submitted at once.
    """
    cands = []
    for i, over in enumerate(grid):
        if "preprocess" in over or any(k in over for k in ("seed", "test_size", "k_folds", "group_by")):
            raise ConfigError(f"grid candidate {i} changes the split or preprocessing ({over}); only training keys may vary")
        cands.append(cfg.with_overrides(over))
    if runner is not None:
        ids = fold_ids(split)
        parts = runner([(c, k) for c in cands for k in ids])
        results = [collect_folds(parts[i * len(ids) : (i + 1) * len(ids)]) for i in range(len(cands))]
    else:
        results = [run_folds(data, split, c, progress=progress) for c in cands]
    rows, best = [], None
    for i, (over, c, res) in enumerate(zip(grid, cands, results)):
        s = summarise(res, c)
        # ranked by the validation folds' AUPRC, each fold scored once by a model that never saw it
        rows.append({"candidate": i, **{k: str(v) for k, v in over.items()}, "cv_auprc_mean": s["oof_ap_mean"],
                     "cv_auprc_std": s["oof_ap_std"], "stopping_auprc_mean": s["best_mean"]})
        if best is None or s["oof_ap_mean"] > best[0]:
            best = (s["oof_ap_mean"], c, res)
    return pd.DataFrame(rows), best[1], best[2]


def _select(s: dict[str, Any], oof: pd.DataFrame, cfg: TrainConfig) -> dict[str, Any]:
    """``threshold_selection.json``: the selected threshold, each fold at it and the warnings."""
    selection = select_threshold(s["summary"], cfg.threshold_strategy,
                                 cfg.sens_target if cfg.threshold_strategy == "sens_target" else None,
                                 pooling=cfg.threshold_pooling)
    spread = threshold_spread(s["by_fold"], selection["threshold"])
    pooled_pos = int((oof["prob"] >= selection["threshold"]).sum())
    if pooled_pos in (0, len(oof)) and oof["label"].nunique() == 2:
        spread["warnings"].append(f"every OOF slice falls in one class at threshold {selection['threshold']:.4g}: "
                                  f"the fold models do not separate the classes")
    selection.update({"candidates": cfg.threshold_candidates, "n_candidates": len(s["summary"]),
                      "per_fold": spread["per_fold"], "sens_std_folds": spread["sens_std"],
                      "spec_std_folds": spread["spec_std"], "warnings": spread["warnings"]})
    return selection


def write_cv_outputs(
    run: Path, split: pd.DataFrame, res: CVFolds, cfg: TrainConfig, *, patients: dict[str, str] | None = None,
    next_ids: dict[str, str] | None = None,
) -> CVResult:
    """Write the CV tables, plots, threshold selection and ``cv_metrics.json``; return the metrics.

    ``cv_metrics.json["oof"]`` holds the pooled OOF evaluation at the selected threshold (intervals,
    calibration, patient level; :func:`trainer.evaluation.oof_evaluation`); ``patients`` maps ID ->
    patient key for the patient bootstrap and aggregation (default: the split's group column);
    ``next_ids`` maps ID -> the next slice's ID (``patient_aggregation: pair``).
    """
    s = summarise(res, cfg)
    res.oof.to_csv(run / "cv_oof_predictions.csv", index=False)
    res.histories.to_csv(run / "cv_histories.csv", index=False)
    s["by_fold"].to_csv(run / "cv_thresholds_by_fold.csv", index=False)
    s["summary"].to_csv(run / "cv_thresholds_summary.csv", index=False)
    roc, pr = mean_roc(res.oof), mean_pr(res.oof)
    plot_mean_roc(roc, run / "cv_mean_roc.png")
    plot_mean_pr(pr, run / "cv_mean_pr.png")
    plot_histories(res.histories, run / "cv_history.png")
    selection = _select(s, res.oof, cfg)
    write_json(run / "threshold_selection.json", selection)
    stuck = stuck_folds([f.to_dict() for f in res.folds])
    from trainer.evaluation import oof_evaluation

    oof_eval, patient_table = oof_evaluation(split, res.oof, float(selection["threshold"]), cfg, patients, next_ids)
    _write_oof_evaluation(run, res.oof, patient_table, cfg)
    metrics = CVResult(
        k_folds=int(cfg.k_folds), early_stopping=cfg.cv_early_stopping, calibration=cfg.calibration,
        per_fold=res.folds, best_val_auprc_mean=s["best_mean"], best_val_auprc_std=s["best_std"],
        oof_auc_mean=roc.mean, oof_auc_std=roc.std, oof_ap_mean=pr.mean, oof_ap_std=pr.std,
        n_train_pool=int((~split["test"]).sum()), n_test=int(split["test"].sum()),
        threshold=selection["threshold"], threshold_strategy=selection["strategy"],
        threshold_pooling=selection["pooling"], stuck_folds=stuck,
        warnings=[f"fold {f['fold']}: {f['why']}" for f in stuck] + list(selection["warnings"]),
        oof=oof_eval,
    )
    write_json(run / "cv_metrics.json", metrics)
    return metrics


def _write_oof_evaluation(run: Path, oof: pd.DataFrame, patient_table: pd.DataFrame | None, cfg: TrainConfig) -> None:
    """``cv_oof_patient_predictions.csv`` and the OOF reliability diagram ``cv_calibration.png``."""
    if patient_table is not None:
        patient_table.to_csv(run / "cv_oof_patient_predictions.csv", index=False)
    if len(oof):
        from trainer.report.plots import plot_calibration

        plot_calibration({"OOF": (oof["label"].to_numpy().astype(int), oof["prob"].to_numpy(dtype=float))},
                         run / "cv_calibration.png", n_bins=cfg.calibration_bins, strategy=cfg.calibration_strategy,
                         title="Calibration (out-of-fold)")
