"""Confidence intervals for a binary classifier: Wilson, DeLong and a bootstrap over patients.

* :func:`wilson_interval` -- score interval of a proportion (sensitivity, specificity, PPV, NPV),
  Wilson (1927); see Newcombe, Stat Med 1998;17:857 (method 3).
* :func:`delong` -- ROC-AUC and its variance by DeLong, DeLong & Clarke-Pearson (Biometrics
  1988;44:837) with the midrank algorithm of Sun & Xu (IEEE SPL 2014;21:1389); the interval is
  ``auc ± z·se`` clipped to [0, 1], as R's pROC ``ci.auc(method = "delong")``.
* :func:`group_bootstrap` -- percentile intervals for ROC-AUC, AUPRC and the threshold metrics
  from resampling **groups** (patients) with replacement: slices of one patient are correlated,
  so resampling slices would pretend there is more independent evidence than there is. Passing
  ``groups=None`` resamples single rows (the slice bootstrap, for comparison).
* :func:`interval_report` -- all of the above for one set of predictions, as a JSON-able dict.

Wilson and DeLong treat every row as independent; with several slices per patient they are too
narrow, which is why the patient bootstrap is reported beside them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.stats import binomtest, norm, rankdata

from trainer.evaluation.inputs import canonical_groups, check_labels_scores
from trainer.evaluation.metrics import binary_metrics

__all__ = [
    "BOOT_METRICS",
    "delong",
    "group_bootstrap",
    "interval_report",
    "weighted_auc_ap",
    "wilson_interval",
    "z_value",
]

#: Metrics that :func:`group_bootstrap` returns intervals for.
BOOT_METRICS: tuple[str, ...] = ("auc", "ap", "sens", "spec", "ppv", "npv")


def z_value(level: float = 0.95) -> float:
    """Two-sided standard-normal quantile for a confidence ``level`` (1.959964 for 0.95)."""
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"confidence level must be in (0, 1), got {level!r}")
    return float(norm.ppf(0.5 + float(level) / 2.0))


def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of the proportion ``k / n``: ``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")``.

    (NaN, NaN) when ``n == 0``. Example (Newcombe 1998, table I): 81/263 -> (0.2553, 0.3662);
    0/20 -> (0, 0.1611).
    """
    k, n = int(k), int(n)
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"wilson_interval needs 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return float("nan"), float("nan")
    z_value(level)  # the level's message
    ci = binomtest(k, n).proportion_ci(confidence_level=float(level), method="wilson")
    return max(0.0, float(ci.low)), min(1.0, float(ci.high))


def delong(y: Any, prob: Any, level: float = 0.95) -> dict[str, float]:
    """ROC-AUC with DeLong's variance and a ``level`` interval.

    Structural components (Sun & Xu's midrank form): with ``m`` positives X and ``n`` negatives
    Y, ``V10_i = (Tz_i - Tx_i) / n`` and ``V01_j = 1 - (Tz_j - Ty_j) / m`` where T are midranks
    within X, within Y and in the pooled sample; ``var = s²(V10)/m + s²(V01)/n`` (sample
    variances, ddof=1). Ties count one half, as in ``roc_auc_score``.

    Returns:
        ``auc, var, se, lo, hi`` (interval clipped to [0, 1]); ``var``/``se``/``lo``/``hi`` are
        NaN with fewer than two rows in a class, everything NaN with a single class.
    """
    y01, p = check_labels_scores(y, prob, y_name="y", probabilities=False, allow_empty=True)
    yb = y01.astype(bool)
    x, yy = p[yb], p[~yb]
    m, n = x.size, yy.size
    nan = float("nan")
    if m == 0 or n == 0:
        return {"auc": nan, "var": nan, "se": nan, "lo": nan, "hi": nan, "n_pos": m, "n_neg": n}
    tx, ty = rankdata(x), rankdata(yy)
    tz = rankdata(np.concatenate([x, yy]))
    auc = float((tz[:m].sum() - m * (m + 1) / 2.0) / (m * n))
    if m < 2 or n < 2:
        return {"auc": auc, "var": nan, "se": nan, "lo": nan, "hi": nan, "n_pos": m, "n_neg": n}
    v10 = (tz[:m] - tx) / n
    v01 = 1.0 - (tz[m:] - ty) / m
    var = float(np.var(v10, ddof=1) / m + np.var(v01, ddof=1) / n)
    se = math.sqrt(max(var, 0.0))
    z = z_value(level)
    return {"auc": auc, "var": var, "se": se, "lo": max(0.0, auc - z * se), "hi": min(1.0, auc + z * se),
            "n_pos": m, "n_neg": n}


# --------------------------------------------------------------------------------------------
# weighted ranking metrics (the bootstrap's workhorse)
# --------------------------------------------------------------------------------------------
def weighted_auc_ap(y: np.ndarray, prob: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC-AUC and average precision for many weight vectors at once.

    ``weights`` is (B, n): integer weights equal replicating rows, so a bootstrap resample is a
    row of multiplicities. The values equal ``roc_auc_score`` / ``average_precision_score`` with
    ``sample_weight`` (ties: one ROC step per distinct score, trapezoid; AP = Σ ΔR·P). Rows whose
    weighted data lack a class give NaN.
    """
    y = np.asarray(y).astype(bool)
    p = np.asarray(prob, dtype=np.float64)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    order = np.argsort(-p, kind="mergesort")
    ps, ys, ws = p[order], y[order], w[:, order]
    ends = np.r_[np.flatnonzero(np.diff(ps) != 0), ps.size - 1]  # last row of each distinct score
    ctp = np.cumsum(ws * ys, axis=1)[:, ends]
    cfp = np.cumsum(ws * ~ys, axis=1)[:, ends]
    pos, neg = ctp[:, -1:], cfp[:, -1:]
    ok = (pos[:, 0] > 0) & (neg[:, 0] > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = np.hstack([np.zeros_like(pos), ctp / pos])
        fpr = np.hstack([np.zeros_like(neg), cfp / neg])
        auc = np.sum(np.diff(fpr, axis=1) * (tpr[:, 1:] + tpr[:, :-1]) / 2.0, axis=1)
        tot = ctp + cfp
        precision = np.divide(ctp, tot, out=np.ones_like(ctp), where=tot > 0)
        ap = np.sum(np.diff(tpr, axis=1) * precision, axis=1)
    auc[~ok] = np.nan
    ap[pos[:, 0] <= 0] = np.nan
    ap[~ok] = np.nan
    return auc, ap


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def group_bootstrap(
    y: Any,
    prob: Any,
    threshold: float,
    groups: Any = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    max_cells: int = 4_000_000,
) -> dict[str, Any]:
    """Percentile bootstrap intervals that resample whole groups (patients) with replacement.

    Each resample draws G groups out of the G groups, uniformly with replacement, and keeps every
    row of each drawn group (as many times as it was drawn). Resamples with a single class are
    skipped (counted in ``n_skipped``); a ratio whose denominator is zero in a resample (e.g. PPV
    with nothing predicted positive) leaves that resample out of that metric only.

    Args:
        y, prob: labels 0/1 and probabilities, one per row.
        threshold: decision threshold for sens/spec/ppv/npv (positive when ``prob >= threshold``).
        groups: one key per row (the patient); None = every row its own group (slice bootstrap).
        n_boot: resamples drawn (fixed ``seed`` -> identical intervals on a rerun).
        level: confidence level of the percentile interval.
        max_cells: resamples are processed in chunks of about this many (resample, row) cells.

    Returns:
        ``{"unit", "n_units", "n_boot", "n_used", "n_skipped", "seed", "level", "method",
        "ci": {metric: [lo, hi]}}`` for :data:`BOOT_METRICS` (``[None, None]`` when no
        resample could be used).
    """
    y01, p = check_labels_scores(y, prob, y_name="y", probabilities=False, allow_empty=True)
    yb = y01.astype(bool)
    n_boot = int(n_boot)
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    codes, n_units, unit = _unit_codes(groups, p)
    out: dict[str, Any] = {"unit": unit, "n_units": int(n_units), "n_boot": n_boot, "n_used": 0, "n_skipped": 0,
                           "seed": int(seed), "level": float(level), "method": "percentile",
                           "ci": {k: [None, None] for k in BOOT_METRICS}}
    if n_boot == 0 or p.size == 0:
        return out
    pred = p >= float(threshold)
    rng = np.random.default_rng(int(seed))
    chunk = max(1, int(max_cells // max(1, p.size)))
    vals: dict[str, list[np.ndarray]] = {k: [] for k in BOOT_METRICS}
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        draws = rng.integers(0, n_units, size=(b, n_units))
        flat = (draws + np.arange(b)[:, None] * n_units).ravel()
        counts = np.bincount(flat, minlength=b * n_units).reshape(b, n_units).astype(np.float64)
        batch, keep = _resample_metrics(yb, p, pred, counts[:, codes])
        for k, v in batch.items():
            vals[k].append(v[keep])
        out["n_used"] += int(keep.sum())
        done += b
    out["n_skipped"] = n_boot - out["n_used"]
    out["ci"] = {k: _percentile_ci(np.concatenate(vals[k]), level) for k in BOOT_METRICS}
    return out


def _percentile_ci(v: np.ndarray, level: float) -> list[float | None]:
    """The ``level`` percentile interval of the finite values of ``v``; [None, None] when there are none."""
    v = v[np.isfinite(v)]
    if not v.size:
        return [None, None]
    alpha = (1.0 - float(level)) / 2.0
    lo, hi = np.quantile(v, [alpha, 1.0 - alpha])
    return [float(lo), float(hi)]


def _unit_codes(groups: Any, p: np.ndarray) -> tuple[np.ndarray, int, str]:
    """(int (n,) resampling unit per row, number of units, ``"row"`` | ``"group"``)."""
    if groups is None:
        return np.arange(p.size), p.size, "row"
    g = np.asarray(groups)
    if g.shape != p.shape:
        raise ValueError(f"groups must have one entry per row, got {g.shape} for {p.shape}")
    codes = canonical_groups(g.astype(str))  # in order of first appearance: not the keyed hashes' sorted order
    return codes, int(codes.max()) + 1 if codes.size else 0, "group"


def _resample_metrics(
    yb: np.ndarray, p: np.ndarray, pred: np.ndarray, w: np.ndarray
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """:data:`BOOT_METRICS` of B resamples given as row multiplicities ``w`` (B, n); and which resamples hold both classes."""
    auc, ap = weighted_auc_ap(yb, p, w)
    tp = w @ (yb & pred).astype(np.float64)
    fp = w @ (~yb & pred).astype(np.float64)
    tn = w @ (~yb & ~pred).astype(np.float64)
    fn = w @ (yb & ~pred).astype(np.float64)
    keep = ((tp + fn) > 0) & ((tn + fp) > 0)
    return {"auc": auc, "ap": ap, "sens": _ratio(tp, tp + fn), "spec": _ratio(tn, tn + fp),
            "ppv": _ratio(tp, tp + fp), "npv": _ratio(tn, tn + fn)}, keep


# --------------------------------------------------------------------------------------------
# one call for a prediction set
# --------------------------------------------------------------------------------------------
_WILSON = {"sens": ("tp", ("tp", "fn")), "spec": ("tn", ("tn", "fp")), "ppv": ("tp", ("tp", "fp")),
           "npv": ("tn", ("tn", "fn"))}


def _pair(lo: float, hi: float) -> list[float | None]:
    return [None if not np.isfinite(lo) else float(lo), None if not np.isfinite(hi) else float(hi)]


def interval_report(
    y: Any,
    prob: Any,
    threshold: float,
    groups: Any = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    unit_name: str = "patient",
) -> dict[str, Any]:
    """Intervals for one set of predictions.

    Returns:
        ``{"level", "sens"|"spec"|"ppv"|"npv": {"estimate", "k", "n", "wilson": [lo, hi],
        "bootstrap": [lo, hi]}, "auc": {"estimate", "se", "delong": [lo, hi], "bootstrap": [...]},
        "ap": {"estimate", "bootstrap": [...]}, "bootstrap": {unit, n_units, n_boot, n_used, ...}}``.
        ``bootstrap.unit`` is ``unit_name`` when ``groups`` is given, else ``"slice"``.
    """
    m = binary_metrics(y, prob, threshold)
    boot = group_bootstrap(y, prob, threshold, groups, n_boot=n_boot, seed=seed, level=level)
    boot["unit"] = unit_name if groups is not None else "slice"
    out: dict[str, Any] = {"level": float(level)}
    for name, (num, den) in _WILSON.items():
        k, n = int(m[num]), int(sum(m[d] for d in den))
        out[name] = {"estimate": float(m[name]) if n else None, "k": k, "n": n,
                     "wilson": _pair(*wilson_interval(k, n, level)), "bootstrap": boot["ci"][name]}
    d = delong(y, prob, level)
    out["auc"] = {"estimate": None if not np.isfinite(d["auc"]) else d["auc"],
                  "se": None if not np.isfinite(d["se"]) else d["se"],
                  "delong": _pair(d["lo"], d["hi"]), "bootstrap": boot["ci"]["auc"]}
    out["ap"] = {"estimate": None if not np.isfinite(m["ap"]) else float(m["ap"]), "bootstrap": boot["ci"]["ap"]}
    out["bootstrap"] = {k: v for k, v in boot.items() if k != "ci"}
    return out
