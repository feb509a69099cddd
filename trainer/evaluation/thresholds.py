"""Cross-validated threshold tables and operating-point selection.

The out-of-fold (OOF) predictions of a k-fold cross-validation are turned into
one :func:`trainer.evaluation.metrics.threshold_table` per fold, which are then summarised
per threshold (mean / sample std across folds, summed counts). A decision
threshold is then picked from that summary with :func:`select_threshold`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from neurocache.errors import UserError
from trainer.evaluation.inputs import check_frame
from trainer.evaluation.metrics import (
    _ratios,
    binary_metrics,
    threshold_grid,
    threshold_table,
)

__all__ = [
    "CANDIDATE_SOURCES",
    "MAX_CANDIDATES",
    "POOLINGS",
    "RATIO_METRICS",
    "SPREAD_WARN",
    "STRATEGIES",
    "ThresholdUnreachableError",
    "candidate_thresholds",
    "cv_threshold_tables",
    "select_threshold",
    "selection_at",
    "threshold_spread",
]

#: Per-threshold ratios that get a ``_mean`` and ``_std`` column in the summary.
RATIO_METRICS: tuple[str, ...] = ("sens", "spec", "ppv", "npv", "f1", "acc")
#: Allowed values of ``select_threshold(strategy=...)``.
STRATEGIES: tuple[str, ...] = ("max_f1", "sens_target")
#: Allowed values of ``select_threshold(pooling=...)``: the summary's ``_pooled`` or ``_mean`` columns.
POOLINGS: tuple[str, ...] = ("pooled", "folds")
#: Allowed values of ``candidate_thresholds(source=...)`` (config key ``threshold_candidates``).
CANDIDATE_SOURCES: tuple[str, ...] = ("oof", "grid")
#: At most this many data-driven candidates (quantiles of the midpoints beyond it): 750k OOF rows
#: must not mean 750k thresholds per fold.
MAX_CANDIDATES: int = 2000
#: A fold standard deviation of sensitivity or specificity above this at the chosen threshold is
#: reported as a warning: the operating point is not stable across folds.
SPREAD_WARN: float = 0.15
#: Tolerance used when comparing ``sens_mean`` with ``sens_target`` (absorbs
#: float round-off of the fold average, e.g. mean([0.9, 0.9, 0.9])).
SENS_TOL: float = 1e-9

_OOF_COLUMNS = ("ID", "label", "prob", "fold")


class ThresholdUnreachableError(UserError, ValueError):
    """No threshold reaches the requested sensitivity (a user error: lower ``sens_target`` or change
    the strategy; the command line prints the message in one line)."""


def _check_oof(oof: pd.DataFrame) -> pd.DataFrame:
    check_frame(oof, "oof", _OOF_COLUMNS)
    if oof["fold"].isna().any():
        raise ValueError("The 'oof' DataFrame has missing values in column 'fold'.")
    folds = oof["fold"].to_numpy()
    if not np.all(np.equal(np.mod(folds, 1), 0)) or (folds < 0).any():
        bad = sorted(set(folds[(folds < 0) | (np.mod(folds, 1) != 0)].tolist()))
        raise ValueError(
            "The 'fold' column of 'oof' must contain non-negative integers "
            f"(out-of-fold validation rows only, no test rows with fold=-1); got {bad}."
        )
    return oof


def cv_threshold_tables(
    oof: pd.DataFrame,
    thresholds: Any,
    train_auc_by_fold: Mapping[int, float] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-fold threshold tables and their per-threshold summary.

    Parameters
    ----------
    oof : pandas.DataFrame
        Out-of-fold predictions with columns ``ID, label, prob, fold``
        (``fold`` >= 0; test rows must not be included).
    thresholds : array-like of float
        Thresholds to evaluate (e.g. :func:`trainer.evaluation.metrics.threshold_grid`).
    train_auc_by_fold : mapping fold -> float, optional
        Training-set ROC AUC of each fold's model. When given it must have an
        entry for every fold in ``oof``.

    Returns
    -------
    by_fold : pandas.DataFrame
        ``fold`` followed by the :func:`~trainer.evaluation.metrics.threshold_table`
        columns, plus ``ap`` and ``auc`` of the fold's validation predictions
        (constant within a fold; ``auc`` is NaN for a single-class fold) and
        ``train_auc`` when ``train_auc_by_fold`` is given. Sorted by fold, then
        in the order of ``thresholds``.
    summary : pandas.DataFrame
        One row per threshold (order of ``thresholds``) with ``threshold``,
        ``<m>_mean`` and ``<m>_std`` for ``m`` in sens, spec, ppv, npv, f1,
        acc; ``ap_mean``, ``auc_mean``, ``train_auc_mean`` (NaN when not
        given); ``tp_sum, fp_sum, tn_sum, fn_sum`` (pooled counts over folds)
        and ``n_folds``.

    Notes
    -----
    ``_std`` is the *sample* standard deviation across folds (``ddof=1``); it
    is NaN when there is a single fold. Means skip NaN values (e.g. the AUC
    of a single-class fold).
    """
    _check_oof(oof)
    folds = sorted(int(f) for f in pd.unique(oof["fold"]))
    if train_auc_by_fold is not None:
        missing = [f for f in folds if f not in train_auc_by_fold]
        if missing:
            raise ValueError(
                f"The 'train_auc_by_fold' parameter has no entry for fold(s) {missing}; "
                f"expected keys {folds}, got {sorted(train_auc_by_fold)}."
            )

    thr_arr = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
    if np.unique(thr_arr).size != thr_arr.size:
        raise ValueError("The 'thresholds' parameter must not contain duplicate values.")

    by_fold = _fold_tables(oof, folds, thresholds, train_auc_by_fold)
    return by_fold, _summarise_folds(by_fold, train_auc_by_fold is not None)


def _fold_tables(
    oof: pd.DataFrame, folds: list[int], thresholds: Any, train_auc_by_fold: Mapping[int, float] | None
) -> pd.DataFrame:
    """:func:`cv_threshold_tables`' ``by_fold``: one threshold table per fold, stacked."""
    tables: list[pd.DataFrame] = []
    fold_col = oof["fold"].astype(np.int64).to_numpy()
    labels = oof["label"].to_numpy()
    probs = oof["prob"].to_numpy()
    for f in folds:
        m = fold_col == f
        tab = threshold_table(labels[m], probs[m], thresholds)
        # binary_metrics' threshold is irrelevant for ap/auc.
        bm = binary_metrics(labels[m], probs[m], 0.5)
        tab.insert(0, "fold", f)
        tab["ap"] = bm["ap"]
        tab["auc"] = bm["auc"]
        if train_auc_by_fold is not None:
            tab["train_auc"] = float(train_auc_by_fold[f])
        tables.append(tab)
    return pd.concat(tables, ignore_index=True)


def _summarise_folds(by_fold: pd.DataFrame, has_train_auc: bool) -> pd.DataFrame:
    """:func:`cv_threshold_tables`' ``summary``: per threshold (first fold's order), means/SDs over folds,
    summed counts and the pooled ratios of those counts."""
    order = by_fold.loc[by_fold["fold"] == by_fold["fold"].iloc[0], "threshold"].to_numpy()
    g = by_fold.groupby("threshold", sort=False)
    cols: dict[str, Any] = {"threshold": order}
    for m_name in RATIO_METRICS:
        cols[f"{m_name}_mean"] = g[m_name].mean().reindex(order).to_numpy()
        cols[f"{m_name}_std"] = g[m_name].std(ddof=1).reindex(order).to_numpy()
    cols["ap_mean"] = g["ap"].mean().reindex(order).to_numpy()
    cols["auc_mean"] = g["auc"].mean().reindex(order).to_numpy()
    if has_train_auc:
        cols["train_auc_mean"] = g["train_auc"].mean().reindex(order).to_numpy()
    else:
        cols["train_auc_mean"] = np.full(order.shape, np.nan)
    for c in ("tp", "fp", "tn", "fn"):
        cols[f"{c}_sum"] = g[c].sum().reindex(order).to_numpy().astype(np.int64)
    cols["n_folds"] = g["fold"].nunique().reindex(order).to_numpy().astype(np.int64)
    pooled = _ratios(cols["tp_sum"], cols["fp_sum"], cols["tn_sum"], cols["fn_sum"])
    for m_name in RATIO_METRICS:
        cols[f"{m_name}_pooled"] = pooled[m_name]
    return pd.DataFrame(cols)


def candidate_thresholds(prob: Any, *, source: str = "oof", step: float = 0.01) -> np.ndarray:
    """Thresholds worth evaluating for pooled out-of-fold scores ``prob`` (shape (n,), in [0, 1]).

    ``source="oof"``: the midpoints between consecutive distinct scores, so the candidates are
    dense exactly where the scores are (a model whose scores all sit below 0.01 still gets a
    fine choice); more than :data:`MAX_CANDIDATES` are thinned to that many quantiles.
    ``source="grid"``: :func:`trainer.evaluation.metrics.threshold_grid` with ``step``.

    Either way a candidate that puts every pooled score on one side (``t <= min`` predicts all
    positive, ``t > max`` all negative) is dropped -- unless all scores are equal, when nothing
    else exists and the caller is told by the one-class check of :func:`threshold_spread`.

    Returns:
        float64 thresholds, ascending, unique.
    """
    p = np.unique(np.asarray(prob, dtype=np.float64))
    if p.size == 0:
        raise ValueError("candidate_thresholds needs at least one score")
    if source == "grid":
        cand = threshold_grid(step)
    elif source == "oof":
        cand = (p[:-1] + p[1:]) / 2.0 if p.size > 1 else p.copy()
        if cand.size > MAX_CANDIDATES:
            cand = np.unique(np.quantile(cand, np.linspace(0.0, 1.0, MAX_CANDIDATES)))
    else:
        raise ValueError(f"threshold candidates source={source!r} is invalid; allowed: {', '.join(CANDIDATE_SOURCES)}")
    keep = (cand > p[0]) & (cand <= p[-1])
    return np.unique(cand[keep]) if keep.any() else np.unique(cand)


def threshold_spread(by_fold: pd.DataFrame, threshold: float) -> dict[str, Any]:
    """Per-fold sensitivity/specificity/PPV/NPV at ``threshold`` (a row of ``by_fold``) and warnings.

    Returns:
        ``{"per_fold": [{fold, sens, spec, ppv, npv, n_pred_pos, n}], "sens_std", "spec_std",
        "warnings": [str]}``; a warning when a fold standard deviation exceeds
        :data:`SPREAD_WARN` or a fold predicts one class only at the threshold.
    """
    rows = by_fold[np.isclose(by_fold["threshold"].to_numpy(dtype=float), float(threshold), rtol=0, atol=1e-12)]
    per_fold = [{"fold": int(r.fold), "sens": float(r.sens), "spec": float(r.spec), "ppv": float(r.ppv),
                 "npv": float(r.npv), "n_pred_pos": int(r.tp + r.fp), "n": int(r.tp + r.fp + r.tn + r.fn)}
                for r in rows.itertuples()]
    out: dict[str, Any] = {"per_fold": per_fold, "warnings": []}
    for m in ("sens", "spec"):
        vals = np.array([f[m] for f in per_fold], dtype=float)
        sd = float(np.std(vals, ddof=1)) if vals.size > 1 else float("nan")
        out[f"{m}_std"] = sd
        if np.isfinite(sd) and sd > SPREAD_WARN:
            each = ", ".join(f"fold {int(f['fold'])}: {f[m]:.2f}" for f in per_fold)
            out["warnings"].append(f"{m} at threshold {threshold:.4g} varies across folds (sd {sd:.2f} > "
                                   f"{SPREAD_WARN}; {each}): the operating point is unstable")
    for f in per_fold:
        if f["n_pred_pos"] in (0, f["n"]):
            what = "negative" if f["n_pred_pos"] == 0 else "positive"
            out["warnings"].append(f"fold {f['fold']} predicts every slice {what} at threshold {threshold:.4g}")
    return out


def _row_to_dict(row: pd.Series) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in row.items():
        try:
            out[str(k)] = float(v)
        except (TypeError, ValueError):
            out[str(k)] = v
    return out


def select_threshold(
    summary: pd.DataFrame,
    strategy: str,
    sens_target: float | None = None,
    pooling: str = "folds",
) -> dict[str, Any]:
    """Pick an operating threshold from a :func:`cv_threshold_tables` summary.

    ``pooling="folds"`` (the original pipeline's) reads the fold means (``f1_mean``, ``sens_mean``,
    ``ppv_mean``); ``pooling="pooled"`` the ratios of the pooled OOF counts (``f1_pooled``...).
    Below, ``_x`` is that suffix.

    Strategies
    ----------
    ``"max_f1"``
        The row with the largest ``f1_x``. Ties (exactly equal
        ``f1_x``) are broken toward the **lowest** threshold, i.e. the
        more sensitive operating point. NaN ``f1_x`` rows are ignored.
    ``"sens_target"``
        Among rows with ``sens_x >= sens_target`` (up to a ``1e-9``
        round-off tolerance), the row with the largest ``ppv_x`` (NaN
        counts as lowest); ties are broken toward the **highest** threshold.

    Returns
    -------
    dict
        ``strategy``, ``pooling``, ``threshold``, ``sens_target`` (None for
        ``max_f1``) and every other column of the selected row converted to ``float``.

    Raises
    ------
    ValueError
        Unknown ``strategy``, missing/invalid ``sens_target`` or missing columns.
    ThresholdUnreachableError
        (subclass of ValueError) when no threshold reaches ``sens_target``.
    """
    sfx, what = _check_summary(summary, strategy, pooling)
    thr = summary["threshold"].to_numpy(dtype=np.float64)
    if strategy == "max_f1":
        idx, target_out = _pick_max_f1(summary, thr, sfx, sens_target), None
    else:
        target_out = _check_sens_target(sens_target)
        idx = _pick_sens_target(summary, thr, sfx, what, target_out)

    return selection_at(summary, idx, strategy, pooling, target_out)


def selection_at(summary: pd.DataFrame, idx: int, strategy: str, pooling: str, sens_target: float | None) -> dict[str, Any]:
    """The selection dict of row ``idx`` of a :func:`cv_threshold_tables` summary (what :func:`select_threshold`
    returns): ``strategy``, ``pooling``, ``threshold``, ``sens_target``, then every other column as ``float``."""
    row = summary.iloc[int(idx)]
    out: dict[str, Any] = {
        "strategy": strategy,
        "pooling": pooling,
        "threshold": float(row["threshold"]),
        "sens_target": sens_target,
    }
    for k, v in _row_to_dict(row.drop(labels=["threshold"])).items():
        out[k] = v
    return out


def _pick_max_f1(summary: pd.DataFrame, thr: np.ndarray, sfx: str, sens_target: Any) -> int:
    """Row of the largest ``f1_<sfx>`` (ties: the lowest threshold)."""
    if sens_target is not None:
        raise ValueError(
            "The 'sens_target' parameter is only used with strategy='sens_target'; "
            f"got sens_target={sens_target!r} with strategy='max_f1'."
        )
    f1 = summary[f"f1_{sfx}"].to_numpy(dtype=np.float64)
    valid = ~np.isnan(f1)
    if not valid.any():
        raise ValueError(f"The 'summary' column 'f1_{sfx}' is all NaN; cannot select a threshold.")
    cand = np.flatnonzero(valid & (f1 == np.nanmax(f1)))
    return int(cand[np.argmin(thr[cand])])


def _check_sens_target(sens_target: Any) -> float:
    if sens_target is None:
        raise ValueError("The 'sens_target' parameter is required with strategy='sens_target'; got None.")
    try:
        target = float(sens_target)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"The 'sens_target' parameter must be a float in [0, 1]; got {sens_target!r}.") from exc
    if not (math.isfinite(target) and 0.0 <= target <= 1.0):
        raise ValueError(f"The 'sens_target' parameter must be a float in [0, 1]; got {sens_target!r}.")
    return target


def _pick_sens_target(summary: pd.DataFrame, thr: np.ndarray, sfx: str, what: str, target: float) -> int:
    """Among rows with ``sens_<sfx> >= target``, the largest ``ppv_<sfx>`` (ties: the highest threshold)."""
    sens = summary[f"sens_{sfx}"].to_numpy(dtype=np.float64)
    ok = sens >= target - SENS_TOL  # NaN compares False
    if not ok.any():
        if np.isnan(sens).all():
            raise ThresholdUnreachableError(
                f"sens_target={target:g} cannot be reached: 'sens_{sfx}' is all NaN. "
                "Lower `sens_target` or use strategy='max_f1'."
            )
        i_best = int(np.nanargmax(sens))
        raise ThresholdUnreachableError(
            f"sens_target={target:g} is unreachable: the best {what} sensitivity is "
            f"{sens[i_best]:.4f} at threshold={thr[i_best]:g}. "
            "Lower `sens_target` or use strategy='max_f1'."
        )
    ppv = np.nan_to_num(summary[f"ppv_{sfx}"].to_numpy(dtype=np.float64), nan=-np.inf)
    cand = np.flatnonzero(ok & (ppv == ppv[ok].max()))
    return int(cand[np.argmax(thr[cand])])


def _check_summary(summary: pd.DataFrame, strategy: str, pooling: str) -> tuple[str, str]:
    """(column suffix, word for the messages) of ``pooling``, after checking ``summary`` has what ``strategy`` reads."""
    if strategy not in STRATEGIES:
        raise ValueError(
            f"The 'strategy' parameter of select_threshold must be one of "
            f"{list(STRATEGIES)}; got {strategy!r}."
        )
    if pooling not in POOLINGS:
        raise ValueError(f"The 'pooling' parameter of select_threshold must be one of {list(POOLINGS)}; got {pooling!r}.")
    if not isinstance(summary, pd.DataFrame) or len(summary) == 0:
        raise ValueError("The 'summary' parameter must be a non-empty pandas DataFrame.")
    sfx = "mean" if pooling == "folds" else "pooled"
    what = "mean" if pooling == "folds" else "pooled"
    needed = ["threshold", f"f1_{sfx}"] if strategy == "max_f1" else ["threshold", f"sens_{sfx}", f"ppv_{sfx}"]
    missing = [c for c in needed if c not in summary.columns]
    if missing:
        raise ValueError(
            f"The 'summary' DataFrame is missing column(s) {missing} required by "
            f"strategy={strategy!r}; got columns {list(summary.columns)}."
        )

    return sfx, what
