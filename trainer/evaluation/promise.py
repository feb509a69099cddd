"""Promise vs delivery: what cross-validation said at the chosen threshold, beside what the test gave.

The CV side is the pooled out-of-fold evaluation of ``cv_metrics.json["oof"]`` (calibrated OOF
scores of fold models that never saw their rows, at the threshold chosen on them); the test side is
the final model's ``test_metrics.json`` evaluation at the same threshold. Each row carries both
estimates and both intervals, and ``outside`` flags a test value outside the CV interval: the
promise did not hold (or the test is too small to say -- its own interval tells which).

The ranking rows (ROC-AUC, AUPRC) also carry the mean and sd over folds of each fold model's own
validation score. The pooled value ranks the scores of five models together, so any difference in
their calibrated scales costs it; the test ranks the scores of one model, as each fold did. Where
the two CV values differ, the fold mean is the like-for-like promise for the test's ranking.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from trainer.runs.results import CVResult

__all__ = ["PROMISE_METRICS", "RANKING_METRICS", "fold_stats_of", "format_promise", "promise_vs_delivery"]

#: Rows of the table, in order: threshold metrics first, then the ranking metrics.
PROMISE_METRICS: tuple[str, ...] = ("sens", "spec", "ppv", "npv", "auc", "ap")
#: The rows whose fold mean is reported beside the pooled value (threshold-free ranking metrics).
RANKING_METRICS: tuple[str, ...] = ("auc", "ap")
_FALLBACK = {"auc": "delong"}  # interval used when the patient bootstrap has none; else Wilson


def _interval(iv: dict[str, Any] | None, metric: str) -> tuple[float | None, float | None, str]:
    """(lo, hi, method) of one metric's interval: the patient bootstrap, else Wilson / DeLong."""
    if not iv or metric not in iv:
        return None, None, "none"
    entry = iv[metric]
    for method in ("bootstrap", _FALLBACK.get(metric, "wilson")):
        pair = entry.get(method)
        if pair and pair[0] is not None and pair[1] is not None:
            return float(pair[0]), float(pair[1]), method
    return None, None, "none"


def _finite(v: Any) -> float | None:
    return None if v is None or not np.isfinite(float(v)) else float(v)


def _value(metrics: dict[str, Any], metric: str) -> float | None:
    return _finite(metrics.get(metric))


def promise_vs_delivery(cv_oof: dict[str, Any], test_metrics: dict[str, Any], test_intervals: dict[str, Any] | None,
                        threshold: float,
                        fold_stats: dict[str, tuple[float | None, float | None]] | None = None) -> dict[str, Any]:
    """The promise-vs-delivery table.

    Args:
        cv_oof: ``cv_metrics.json["oof"]`` (keys ``metrics`` and ``intervals``).
        test_metrics: the test's :func:`trainer.evaluation.metrics.binary_metrics` at ``threshold``.
        test_intervals: the test's :func:`trainer.evaluation.intervals.interval_report`.
        threshold: the CV-chosen threshold both sides are evaluated at.
        fold_stats: ``{"auc": (mean, sd), "ap": (mean, sd)}`` over the folds' own validation scores
            (``cv_metrics.json``'s ``oof_auc_mean`` ...); ``None`` leaves those columns empty.

    Returns:
        ``{"threshold", "rows": [{"metric", "cv", "cv_lo", "cv_hi", "cv_interval", "cv_fold_mean",
        "cv_fold_sd", "test", "test_lo", "test_hi", "test_interval", "diff", "diff_fold_mean", "outside"}],
        "n_outside", "outside": [metric names]}``. ``cv_fold_mean`` / ``cv_fold_sd`` / ``diff_fold_mean``
        are ``None`` on the threshold rows and where ``fold_stats`` has no value.
    """
    rows = []
    for m in PROMISE_METRICS:
        cv = _value(cv_oof.get("metrics", {}), m)
        lo, hi, how = _interval(cv_oof.get("intervals"), m)
        test = _value(test_metrics, m)
        tlo, thi, thow = _interval(test_intervals, m)
        fmean, fsd = (fold_stats or {}).get(m, (None, None)) if m in RANKING_METRICS else (None, None)
        fmean = _finite(fmean)
        outside = bool(test is not None and lo is not None and hi is not None and not lo <= test <= hi)
        rows.append({"metric": m, "cv": cv, "cv_lo": lo, "cv_hi": hi, "cv_interval": how,
                     "cv_fold_mean": fmean, "cv_fold_sd": _finite(fsd) if fmean is not None else None,
                     "test": test, "test_lo": tlo, "test_hi": thi, "test_interval": thow,
                     "diff": None if cv is None or test is None else test - cv,
                     "diff_fold_mean": None if fmean is None or test is None else test - fmean, "outside": outside})
    bad = [r["metric"] for r in rows if r["outside"]]
    return {"threshold": float(threshold), "rows": rows, "n_outside": len(bad), "outside": bad,
            "what": "CV: pooled out-of-fold predictions of the fold models (calibrated); test: the final model on "
                    "the held-out test, scored once; both at the CV-chosen threshold. Intervals: patient bootstrap "
                    "(Wilson / DeLong where the bootstrap has none). Ranking rows: also the mean ± sd over folds "
                    "of each fold model's own score (one model's ranking, as on the test)."}


def fold_stats_of(cv_metrics: CVResult) -> dict[str, tuple[float | None, float | None]]:
    """``{"auc": (mean, sd), "ap": (mean, sd)}`` of a CV run's fold validation scores (``cv_metrics.json``)."""
    return {"auc": (cv_metrics.oof_auc_mean, cv_metrics.oof_auc_std),
            "ap": (cv_metrics.oof_ap_mean, cv_metrics.oof_ap_std)}


NAMES = {"sens": "sensitivity", "spec": "specificity", "ppv": "PPV", "npv": "NPV", "auc": "ROC-AUC", "ap": "AUPRC"}


def format_promise(table: dict[str, Any]) -> str:
    """The table as fixed-width text for the terminal."""

    def num(x: float | None) -> str:
        return "  —  " if x is None else f"{x:.3f}"

    def iv(lo: float | None, hi: float | None) -> str:
        return "" if lo is None or hi is None else f"[{lo:.3f}, {hi:.3f}]"

    def fold(r: dict[str, Any]) -> str:
        mean, sd = r.get("cv_fold_mean"), r.get("cv_fold_sd")
        return "" if mean is None else f"{mean:.3f}" + ("" if sd is None else f" ± {sd:.3f}")

    lines = [f"Promise (CV) vs delivery (test) at threshold {table['threshold']:.4g}:",
             f"  {'metric':<12} {'CV':>6} {'CV interval':<16} {'CV fold mean':<14} {'test':>6} {'test interval':<16}"]
    for r in table["rows"]:
        flag = "  <- outside the CV interval" if r["outside"] else ""
        lines.append(f"  {NAMES[r['metric']]:<12} {num(r['cv']):>6} {iv(r['cv_lo'], r['cv_hi']):<16} {fold(r):<14} "
                     f"{num(r['test']):>6} {iv(r['test_lo'], r['test_hi']):<16}{flag}")
    lines.append(f"  {table['n_outside']} of {len(table['rows'])} test values outside the CV interval"
                 + (f" ({', '.join(NAMES[m] for m in table['outside'])})" if table["outside"] else ""))
    if any(r.get("cv_fold_mean") is not None for r in table["rows"]):
        lines.append("  CV is the pooled OOF scores of all fold models; CV fold mean (± sd) is each fold model's own "
                     "ranking, like the test's one model")
    return "\n".join(lines)
