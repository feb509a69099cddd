"""A lower confidence bound for sensitivity that resamples patients, and a threshold chosen by it.

Picking the highest threshold whose *point estimate* of sensitivity reaches 0.90 gives a model
that reaches 0.90 about half the time. :func:`select_with_confidence` instead picks the highest
threshold whose ``level`` lower confidence bound reaches the target, so the promise holds with
(about) that confidence.

The bound is a bootstrap over **patients** (groups): each resample draws G of the G patients with
replacement and keeps all their slices, as many times as the patient was drawn; the pooled
sensitivity of a resample is ``sum_g w_g tp_g(t) / sum_g w_g pos_g`` over the patients' positive
slices (``w_g`` the number of draws of patient g, ``tp_g(t)`` its positive slices with
``prob >= t``, ``pos_g`` its positive slices). Slices of one patient are correlated, so
resampling slices would pretend there is more independent evidence than there is and give a
bound that is too high. The bound is a quantile of the resamples' sensitivities at every
threshold, from the same resamples: the ``1 - level`` quantile (``method="percentile"``) or, by
default, the quantile at Efron's BCa level (``method="bca"``). On simulated data with a known
sensitivity of 0.85 (60 patients, ~30 with positive slices) the nominal 95% percentile bound
covered the truth in 88-90% of 1000 datasets with a strong patient effect, BCa in 92-93%; with a
milder one 92.5% and 94% (tests/test_sens_bound.py's docstring). Both stay a little optimistic
with this few positive patients; resampling slices instead covered only 83-86%.

Cost: one (patients x thresholds) table of positive counts (a bincount and a cumulative sum), then
one (resamples x patients) @ (patients x thresholds) product and a sort of the (resamples x
thresholds) values: 5,000 rows x 2,000 thresholds x 1,000 resamples take about a quarter second.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from scipy.stats import norm

from trainer.evaluation.inputs import canonical_groups, check_labels_scores
from trainer.evaluation.thresholds import ThresholdUnreachableError

__all__ = [
    "METHODS",
    "PositiveCounts",
    "SensBoundUnreachableError",
    "bca_levels",
    "draw_counts",
    "positive_counts",
    "resampled_sensitivity",
    "select_with_confidence",
    "sens_lower_bounds",
]

#: Allowed values of ``sens_lower_bounds(method=...)``.
METHODS: tuple[str, ...] = ("bca", "percentile")
#: Tolerance of ``bound >= sens_target`` (float round-off of the quantile's interpolation).
SENS_TOL: float = 1e-12


class SensBoundUnreachableError(ThresholdUnreachableError):
    """No candidate threshold's lower confidence bound on sensitivity reaches the target (a
    :class:`~trainer.evaluation.thresholds.ThresholdUnreachableError`: a user error, also a ``ValueError``)."""


def _check_thresholds(thresholds: Any, name: str = "thresholds") -> np.ndarray:
    t = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
    if t.ndim != 1 or t.size == 0 or not np.all(np.isfinite(t)):
        raise ValueError(f"The '{name}' parameter must be a non-empty 1-D array of finite floats; got shape {t.shape}"
                         f"{'' if t.size == 0 or np.all(np.isfinite(t)) else ' with NaN/inf values'}.")
    return t


def _check_level(level: float) -> float:
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"The confidence level must be in (0, 1), e.g. 0.95; got {level!r}.")
    return float(level)


class PositiveCounts(NamedTuple):
    """What the bootstrap needs of the data: the positive slices, counted per patient and threshold.

    Attributes:
        n_groups: G, the number of patients (the resampling units), with or without positive slices.
        members: (P,) int, the patients with a positive slice, as indices into
            :func:`~trainer.evaluation.inputs.canonical_groups` codes (order of first appearance).
        tp: (P, T) float64, patient ``members[i]``'s positive slices with ``prob >= thresholds[j]``.
        pos: (P,) float64, its positive slices (> 0).
    """

    n_groups: int
    members: np.ndarray
    tp: np.ndarray
    pos: np.ndarray


def positive_counts(y: Any, prob: Any, groups: Any, thresholds: Any) -> PositiveCounts:
    """Per patient with positive slices and per threshold, the positive slices called positive.

    Args:
        y: (n,) labels 0/1. prob: (n,) scores (positive when ``prob >= t``). groups: (n,) patient keys.
        thresholds: (T,) thresholds, any order.

    Only patients with a positive slice get a row (P x T cells, not G x T: most patients of a
    brain-CT set have none). One bincount and one cumulative sum, no loop over thresholds.

    Raises:
        ValueError: bad labels/scores/thresholds, groups of another length, or no positive slice.
    """
    y01, p = check_labels_scores(y, prob, y_name="y", probabilities=False)
    g = np.asarray(groups)
    if g.shape != p.shape:
        raise ValueError(f"The 'groups' parameter must have one patient key per row; got shape {g.shape} for {p.shape} rows.")
    t = _check_thresholds(thresholds)
    if not y01.any():
        raise ValueError("A sensitivity bound needs positive slices (label 1); 'y' has none.")
    codes = canonical_groups(g.astype(str))  # in order of first appearance: not the keyed hashes' sorted order
    members, pos_g = np.unique(codes[y01 == 1], return_inverse=True)
    n_p = members.size
    order = np.argsort(t, kind="stable")
    # k_i = how many sorted thresholds are <= p_i: slice i is a true positive at ts[0 .. k_i - 1]
    k = np.searchsorted(t[order], p[y01 == 1], side="right")
    hist = np.bincount(pos_g * (t.size + 1) + k, minlength=n_p * (t.size + 1)).reshape(n_p, t.size + 1)
    tail = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1]  # tail[g, j] = sum_{k >= j} hist[g, k]
    tp = np.empty((n_p, t.size), dtype=np.float64)
    tp[:, order] = tail[:, 1:]
    pos = np.bincount(pos_g, minlength=n_p).astype(np.float64)
    return PositiveCounts(int(codes.max()) + 1, members, tp, pos)


def draw_counts(n_groups: int, n_boot: int, seed: int = 0, start: int = 0, stop: int | None = None) -> np.ndarray:
    """(stop - start, n_groups) int64: how many times each patient is drawn in resamples start..stop-1.

    Resample b draws ``n_groups`` patients uniformly with replacement from its own generator
    (``SeedSequence(seed).spawn``), so a resample's draws do not depend on how resamples are chunked.
    """
    if int(n_groups) < 1 or int(n_boot) < 1:
        raise ValueError(f"draw_counts needs n_groups >= 1 and n_boot >= 1; got {n_groups}, {n_boot}.")
    stop = int(n_boot) if stop is None else int(stop)
    seqs = np.random.SeedSequence(int(seed)).spawn(int(n_boot))[start:stop]
    out = np.empty((len(seqs), int(n_groups)), dtype=np.int64)
    for i, s in enumerate(seqs):
        out[i] = np.bincount(np.random.default_rng(s).integers(0, n_groups, size=n_groups), minlength=n_groups)
    return out


def resampled_sensitivity(tp: np.ndarray, pos: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(B, T) pooled sensitivity of B resamples given as multiplicities ``weights`` (B, P) of the
    patients with positives (the rows of ``tp`` (P, T) and ``pos`` (P,), :class:`PositiveCounts`).

    ``sum_g w_bg tp_gj / sum_g w_bg pos_g``; NaN for a resample without a positive slice.
    """
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    num = w @ tp
    den = w @ pos
    out = np.full(num.shape, np.nan)
    np.divide(num, den[:, None], out=out, where=den[:, None] > 0)
    return out


def sens_lower_bounds(
    y: Any, prob: Any, groups: Any, thresholds: Any, *, level: float = 0.95, n_boot: int = 1000, seed: int = 0,
    method: str = "bca", max_cells: int = 8_000_000,
) -> np.ndarray:
    """(T,) ``level`` lower confidence bound of the pooled sensitivity at each threshold, patient bootstrap.

    Args:
        y, prob, groups: (n,) labels 0/1, scores, patient keys (see :func:`positive_counts`).
        thresholds: (T,) thresholds, any order; the bounds come back in the same order.
        level: one-sided confidence level.
        n_boot: resamples (fixed ``seed`` -> identical bounds on a rerun).
        method: ``"percentile"``: the ``1 - level`` quantile of the resamples' sensitivities;
            ``"bca"`` (default): the quantile at Efron's bias-corrected and accelerated level
            (:func:`bca_levels`), which corrects the percentile bound's optimism for a skewed,
            bounded statistic from few patients (tests/test_sens_bound.py measures both).
        max_cells: resamples are processed in chunks of about this many (resample, patient or threshold) cells.

    Bounds are made non-increasing in the threshold by a running minimum from the lowest
    threshold up (never raises a bound, so never lowers coverage; a no-op for ``percentile``).
    Resamples without a positive slice have no sensitivity and are left out; NaN everywhere when
    every resample is left out.
    """
    level = _check_level(level)
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}; got {method!r}.")
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be >= 1; got {n_boot!r}.")
    t = _check_thresholds(thresholds)
    n_groups, members, tp, pos = positive_counts(y, prob, groups, t)
    n_t = tp.shape[1]
    chunk = max(1, int(max_cells) // max(n_groups, n_t))
    sens = np.empty((int(n_boot), n_t))
    for start in range(0, int(n_boot), chunk):
        stop = min(int(n_boot), start + chunk)
        draws = draw_counts(n_groups, int(n_boot), seed, start, stop)[:, members]
        sens[start:stop] = resampled_sensitivity(tp, pos, draws)
    sens = sens[np.isfinite(sens[:, 0])]  # a resample's NaN is all-or-nothing (no positive slice)
    if not sens.shape[0]:
        return np.full(n_t, np.nan)
    q = bca_levels(sens, tp, pos, level, n_groups) if method == "bca" else np.full(n_t, 1.0 - level)
    bounds = _column_quantiles(np.sort(sens, axis=0), q)
    order = np.argsort(t, kind="stable")
    bounds[order] = np.minimum.accumulate(bounds[order])
    return bounds


def bca_levels(sens: np.ndarray, tp: np.ndarray, pos: np.ndarray, level: float, n_groups: int) -> np.ndarray:
    """(T,) the quantile levels of the BCa lower bound (Efron 1987; Efron & Tibshirani 1993, ch. 14).

    ``Phi(z0 + (z0 + z) / (1 - a (z0 + z)))`` with ``z = Phi^-1(1 - level)``; the bias correction
    ``z0 = Phi^-1(share of resamples below the estimate, ties half)`` and the acceleration ``a`` from
    the jackknife that leaves out one patient at a time (``a = sum d^3 / (6 (sum d^2)^1.5)``,
    ``d`` = mean - leave-one-out values; patients without positives leave the estimate unchanged).
    ``z0 = a = 0`` gives the percentile bound's ``1 - level``.

    Args:
        sens: (B, T) resampled sensitivities (finite). tp, pos: (P, T) and (P,) of :func:`positive_counts`.
        level: one-sided confidence level. n_groups: G, all patients (with or without positives).
    """
    total_tp, total_pos = tp.sum(axis=0), pos.sum()
    est = total_tp / total_pos
    tol = 1e-12
    below = (sens < est - tol).sum(axis=0) + 0.5 * (np.abs(sens - est) <= tol).sum(axis=0)
    share = np.clip(below / sens.shape[0], 0.5 / sens.shape[0], 1.0 - 0.5 / sens.shape[0])
    z0 = norm.ppf(share)
    has = pos < total_pos  # leaving out the only positive patient leaves nothing to estimate
    jk = (total_tp - tp[has]) / (total_pos - pos[has])[:, None]  # (G_has, T); the other patients give est
    mean = (jk.sum(axis=0) + (n_groups - has.sum()) * est) / n_groups
    d, d_rest = mean - jk, mean - est
    s2 = (d**2).sum(axis=0) + (n_groups - has.sum()) * d_rest**2
    s3 = (d**3).sum(axis=0) + (n_groups - has.sum()) * d_rest**3
    acc = np.divide(s3, 6.0 * s2**1.5, out=np.zeros_like(s3), where=s2 > 0)
    z = z0 + norm.ppf(1.0 - level)
    denom = 1.0 - acc * z
    levels = norm.cdf(z0 + np.divide(z, denom, out=np.full_like(z, -np.inf), where=denom > 0))
    return np.asarray(np.clip(levels, 0.0, 1.0))


def _column_quantiles(sorted_cols: np.ndarray, q: np.ndarray) -> np.ndarray:
    """(T,) ``np.quantile(col_j, q_j)`` (linear interpolation) of each column of an axis-0-sorted (B, T) array."""
    b = sorted_cols.shape[0]
    pos = q * (b - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, b - 1)
    frac = pos - lo
    cols = np.arange(sorted_cols.shape[1])
    return np.asarray(sorted_cols[lo, cols] * (1.0 - frac) + sorted_cols[hi, cols] * frac)


def select_with_confidence(
    y: Any, prob: Any, groups: Any, candidates: Any, sens_target: float, level: float = 0.95, n_boot: int = 1000,
    seed: int = 0, method: str = "bca",
) -> dict[str, Any]:
    """The highest candidate threshold whose ``level`` lower bound on sensitivity is >= ``sens_target``.

    Returns:
        ``{"threshold", "sens" (pooled point estimate there: positives with prob >= threshold / positives),
        "sens_lower_bound", "sens_target", "level", "n_boot", "seed", "n_groups" (patients),
        "n_pos_groups" (patients with a positive slice), "method" (:data:`METHODS`), "unit": "patient"}``.

    Raises:
        SensBoundUnreachableError: no candidate's bound reaches the target; the message names the
            target, the level and the best bound reached.
    """
    target = float(sens_target)
    if not 0.0 < target <= 1.0:
        raise ValueError(f"sens_target must be in (0, 1], e.g. 0.9; got {sens_target!r}.")
    cand = _check_thresholds(candidates, "candidates")
    bounds = sens_lower_bounds(y, prob, groups, cand, level=level, n_boot=n_boot, seed=seed, method=method)
    n_groups, _, tp, pos = positive_counts(y, prob, groups, cand)
    point = tp.sum(axis=0) / pos.sum()
    ok = np.isfinite(bounds) & (bounds >= target - SENS_TOL)
    if not ok.any():
        best = int(np.nanargmax(bounds)) if np.isfinite(bounds).any() else int(np.argmin(cand))
        raise SensBoundUnreachableError(
            f"no candidate threshold has a {level:g} lower confidence bound on sensitivity >= sens_target {target:g}: "
            f"the best bound reached is {bounds[best]:.4f} (threshold {cand[best]:.6g}, point estimate {point[best]:.4f}; "
            f"patient bootstrap ({method}), {int(n_boot)} resamples of {n_groups} patients, {pos.size} with positives). "
            f"Lower sens_target or the confidence level (config key sens_confidence), add lower candidate thresholds, "
            f"or add positive patients (the bound tightens as they grow)."
        )
    j = int(np.flatnonzero(ok)[np.argmax(cand[ok])])
    return {"threshold": float(cand[j]), "sens": float(point[j]), "sens_lower_bound": float(bounds[j]),
            "sens_target": target, "level": float(level), "n_boot": int(n_boot), "seed": int(seed),
            "n_groups": n_groups, "n_pos_groups": int(pos.size),
            "method": method, "unit": "patient"}
