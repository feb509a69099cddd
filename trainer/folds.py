"""The folds of a cross-validation: the split, each fold's rows and inner holdout, one fold model
trained and scored (:func:`run_fold`), and every fold in turn or on a cluster (:func:`run_folds`).

:func:`run_fold` is the one per-fold body of every CV path: :func:`run_folds` calls it in turn on
this machine, and :func:`trainer.distributed.fold_task` inside a dask.distributed worker, so a
fold-parallel CV is the sequential one by construction. Nothing here writes files: ``trainer cv``
(:mod:`trainer.cv`) writes the run folder from what these return.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from trainer.config import TrainConfig
from trainer.data import SliceSource
from trainer.evaluation.calibrators import fit_calibrator
from trainer.evaluation.inputs import canonical_groups
from trainer.evaluation.metrics import ranking_scores
from trainer.loops import predict, train_model
from trainer.runs.results import FoldResult
from trainer.split import SplitError, check_no_group_crosses, holdout_split, make_split
from trainer.transforms import make_transform


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
        SplitError: naming the fold's training rows and the fix, when the rows have too few
            groups per class for a holdout (a ``ValueError``).
    """
    groups = None if cfg.group_by == "none" else canonical_groups(data.groups)[tr]
    try:
        hold = holdout_split(data.labels[tr], groups, frac=cfg.holdout_frac, seed=seed)
    except ValueError as e:
        raise SplitError(
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
    its validation fold is scored once, never seen before. With ``val_fold`` (the original pipeline's way,
    optimistic) it early-stops and is calibrated on the validation fold itself.

    Used in turn by :func:`run_folds` and, inside a dask.distributed worker, by
    :func:`trainer.distributed.fold_task`, so a fold-parallel CV is the sequential one by construction.

    Returns plain Python values (small enough to send back from a worker):
    ``{"oof": {"ID", "label", "prob" (calibrated), "prob_raw", "fold"}, "history": [epoch rows],
    "fold": FoldResult.to_dict()}`` (:class:`trainer.runs.results.FoldResult`).
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
        folds: one :class:`~trainer.runs.results.FoldResult` per fold.
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
