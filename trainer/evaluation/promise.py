"""Promise vs delivery: what cross-validation said at the chosen threshold, beside what the test gave.

The CV side is the pooled out-of-fold evaluation of ``cv_metrics.json["oof"]`` (calibrated OOF
scores of fold models that never saw their rows, at the threshold chosen on them); the test side is
the final model's ``test_metrics.json`` evaluation at the same threshold. Each row carries both
estimates and both intervals and a ``verdict`` (:func:`verdict`; every metric of the table is one
where higher is better):

* ``worse`` -- the test's interval lies entirely below CV's: the promise did not hold;
* ``better`` -- the test's interval lies entirely above CV's;
* ``held`` -- the two intervals overlap;
* ``degenerate`` -- CV's interval has zero width (e.g. 1.000-1.000: every bootstrap resample gave
  the same value, nothing varied), so there is no promised spread to compare with; the test's own
  interval is the only statement. A degenerate CV interval is never judged worse or better, even
  where the test interval touches or misses its single value;
* ``n/a`` -- no test value, or no CV interval.

A test value without an interval counts as the zero-width interval at its value. ``outside`` (the
test value outside the CV interval) is kept for older readers of ``test_metrics.json``; it is not
the verdict: a test value outside a degenerate interval, or above the CV interval, is no failure.

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

__all__ = ["PROMISE_METRICS", "RANKING_METRICS", "VERDICTS", "bound_text", "fold_stats_of", "format_promise",
           "promise_vs_delivery", "row_verdict", "verdict", "verdict_summary", "verdict_text"]

#: Rows of the table, in order: threshold metrics first, then the ranking metrics.
PROMISE_METRICS: tuple[str, ...] = ("sens", "spec", "ppv", "npv", "auc", "ap")
#: The rows whose fold mean is reported beside the pooled value (threshold-free ranking metrics).
RANKING_METRICS: tuple[str, ...] = ("auc", "ap")
_FALLBACK = {"auc": "delong"}  # interval used when the patient bootstrap has none; else Wilson
#: A row's ``verdict``, one of these (see the module docstring).
VERDICTS: tuple[str, ...] = ("held", "better", "worse", "degenerate", "n/a")
#: A CV interval narrower than this is degenerate (zero width up to float round-off).
DEGENERATE_WIDTH: float = 1e-9


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


def verdict(cv_lo: float | None, cv_hi: float | None, test: float | None, test_lo: float | None = None,
            test_hi: float | None = None) -> str:
    """One row's verdict (:data:`VERDICTS`) for a metric where higher is better.

    ``degenerate`` when CV's interval has zero width; else ``worse`` / ``better`` when the test's
    interval (``[test, test]`` without one) lies entirely below / above CV's, ``held`` when they overlap.
    """
    if test is None or cv_lo is None or cv_hi is None:
        return "n/a"
    if cv_hi - cv_lo <= DEGENERATE_WIDTH:
        return "degenerate"
    lo, hi = (test_lo, test_hi) if test_lo is not None and test_hi is not None else (test, test)
    if hi < cv_lo:
        return "worse"
    if lo > cv_hi:
        return "better"
    return "held"


def promise_vs_delivery(cv_oof: dict[str, Any], test_metrics: dict[str, Any], test_intervals: dict[str, Any] | None,
                        threshold: float,
                        fold_stats: dict[str, tuple[float | None, float | None]] | None = None,
                        sens_bound: dict[str, Any] | None = None) -> dict[str, Any]:
    """The promise-vs-delivery table.

    Args:
        cv_oof: ``cv_metrics.json["oof"]`` (keys ``metrics`` and ``intervals``).
        test_metrics: the test's :func:`trainer.evaluation.metrics.binary_metrics` at ``threshold``.
        test_intervals: the test's :func:`trainer.evaluation.intervals.interval_report`.
        threshold: the CV-chosen threshold both sides are evaluated at.
        fold_stats: ``{"auc": (mean, sd), "ap": (mean, sd)}`` over the folds' own validation scores
            (``cv_metrics.json``'s ``oof_auc_mean`` ...); ``None`` leaves those columns empty.
        sens_bound: ``threshold_selection.json["sens_bound"]`` of a threshold chosen by a lower
            confidence bound on sensitivity (``sens_confidence``); set on the sensitivity row as
            ``cv_lower_bound``, ``cv_bound_level`` and ``sens_target``.

    Returns:
        ``{"threshold", "rows": [{"metric", "cv", "cv_lo", "cv_hi", "cv_interval", "cv_fold_mean",
        "cv_fold_sd", "test", "test_lo", "test_hi", "test_interval", "diff", "diff_fold_mean", "outside",
        "verdict"}], "n_outside", "outside": [metric names], "n_worse", "worse", "n_better", "better",
        "n_degenerate", "degenerate": [metric names]}``. ``cv_fold_mean`` / ``cv_fold_sd`` /
        ``diff_fold_mean`` are ``None`` on the threshold rows and where ``fold_stats`` has no value.
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
                     "diff_fold_mean": None if fmean is None or test is None else test - fmean, "outside": outside,
                     "verdict": verdict(lo, hi, test, tlo, thi)})
    if sens_bound:
        rows[0].update({"cv_lower_bound": _finite(sens_bound.get("sens_lower_bound")),
                        "cv_bound_level": _finite(sens_bound.get("level")),
                        "sens_target": _finite(sens_bound.get("sens_target"))})
    bad = [r["metric"] for r in rows if r["outside"]]
    by = {v: [r["metric"] for r in rows if r["verdict"] == v] for v in ("worse", "better", "degenerate")}
    return {"threshold": float(threshold), "rows": rows, "n_outside": len(bad), "outside": bad,
            **{k: x for v, names in by.items() for k, x in ((f"n_{v}", len(names)), (v, names))},
            "what": "CV: pooled out-of-fold predictions of the fold models (calibrated); test: the final model on "
                    "the held-out test, scored once; both at the CV-chosen threshold. Intervals: patient bootstrap "
                    "(Wilson / DeLong where the bootstrap has none). Ranking rows: also the mean ± sd over folds "
                    "of each fold model's own score (one model's ranking, as on the test)."}


def fold_stats_of(cv_metrics: CVResult) -> dict[str, tuple[float | None, float | None]]:
    """``{"auc": (mean, sd), "ap": (mean, sd)}`` of a CV run's fold validation scores (``cv_metrics.json``)."""
    return {"auc": (cv_metrics.oof_auc_mean, cv_metrics.oof_auc_std),
            "ap": (cv_metrics.oof_ap_mean, cv_metrics.oof_ap_std)}


NAMES = {"sens": "sensitivity", "spec": "specificity", "ppv": "PPV", "npv": "NPV", "auc": "ROC-AUC", "ap": "AUPRC"}


def row_verdict(row: dict[str, Any]) -> str:
    """A stored row's ``verdict`` (tables written before verdicts existed: computed from its intervals)."""
    v = row.get("verdict")
    return str(v) if v else verdict(row.get("cv_lo"), row.get("cv_hi"), row.get("test"), row.get("test_lo"),
                                     row.get("test_hi"))


def verdict_text(row: dict[str, Any]) -> str:
    """The words for a row's verdict: "worse than promised", "CV interval degenerate (1.000-1.000): nothing
    to compare", ... ("" for ``n/a``)."""
    v = row_verdict(row)
    if v == "degenerate":
        return f"CV interval degenerate ({row['cv_lo']:.3f}-{row['cv_hi']:.3f}): nothing to compare"
    return {"worse": "worse than promised", "better": "better than promised", "held": "held"}.get(v, "")


def bound_text(row: dict[str, Any]) -> str:
    """The sensitivity row's promise when the threshold was chosen by a lower confidence bound: "95% lower
    bound 0.860 >= target 0.850" ("" otherwise)."""
    b, level = row.get("cv_lower_bound"), row.get("cv_bound_level")
    if b is None or level is None:
        return ""
    target = row.get("sens_target")
    return f"{100 * level:g}% lower bound {b:.3f}" + ("" if target is None else f" >= target {target:.3f}")


def verdict_summary(table: dict[str, Any]) -> str:
    """"0 of 6 worse than promised; 4 better than promised (sensitivity, NPV, ROC-AUC, AUPRC); 0 degenerate"."""
    rows = table["rows"]
    by = {v: [NAMES[r["metric"]] for r in rows if row_verdict(r) == v] for v in ("worse", "better", "degenerate")}

    def part(names: list[str], words: str) -> str:
        return f"{len(names)} {words}" + (f" ({', '.join(names)})" if names else "")

    return "; ".join([part(by["worse"], f"of {len(rows)} worse than promised"), part(by["better"], "better than promised"),
                      part(by["degenerate"], "degenerate")])


def format_promise(table: dict[str, Any]) -> str:
    """The table as fixed-width text for the terminal; a worse row is marked ``<- WORSE than promised``."""

    def num(x: float | None) -> str:
        return "  —  " if x is None else f"{x:.3f}"

    def iv(lo: float | None, hi: float | None) -> str:
        return "" if lo is None or hi is None else f"[{lo:.3f}, {hi:.3f}]"

    def fold(r: dict[str, Any]) -> str:
        mean, sd = r.get("cv_fold_mean"), r.get("cv_fold_sd")
        return "" if mean is None else f"{mean:.3f}" + ("" if sd is None else f" ± {sd:.3f}")

    def flag(r: dict[str, Any]) -> str:
        words = "<- WORSE than promised" if row_verdict(r) == "worse" else verdict_text(r)
        bound = bound_text(r)
        return words + (f"  (CV promise: {bound})" if bound else "")

    lines = [f"Promise (CV) vs delivery (test) at threshold {table['threshold']:.4g}:",
             f"  {'metric':<12} {'CV':>6} {'CV interval':<16} {'CV fold mean':<14} {'test':>6} {'test interval':<16}"]
    for r in table["rows"]:
        f = flag(r)
        lines.append(f"  {NAMES[r['metric']]:<12} {num(r['cv']):>6} {iv(r['cv_lo'], r['cv_hi']):<16} {fold(r):<14} "
                     f"{num(r['test']):>6} {iv(r['test_lo'], r['test_hi']):<16}" + (f"  {f}" if f else ""))
    lines.append(f"  {verdict_summary(table)}")
    lines.append("  held: the test and CV intervals overlap; worse / better: the test interval lies entirely below / "
                 "above CV's; degenerate: CV's interval has zero width")
    if any(r.get("cv_fold_mean") is not None for r in table["rows"]):
        lines.append("  CV is the pooled OOF scores of all fold models; CV fold mean (± sd) is each fold model's own "
                     "ranking, like the test's one model")
    return "\n".join(lines)
