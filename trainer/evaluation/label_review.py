"""Which labels to look at again: a ranking of the slices by how suspect their label is, from the
out-of-fold probabilities of a cross-validation (cleanlab's label-quality scores).

A slice labelled 0 that every held-out model calls 1 with probability 0.97 is either a model
failure or a wrong label; a radiologist can tell which in seconds, and a wrong label caught here
moves every metric of the next run. The probabilities must be **out-of-fold** (each slice scored
by a model that did not train on it) and calibrated: a training-set probability has already
learned the wrong label.

* :func:`label_review` -- the table (one row per slice, most suspect first) for ``label_review.csv``.
* :func:`summary_line` -- the one line the CV output prints about it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores

from trainer.evaluation.inputs import check_labels_scores

__all__ = ["QUALITY_METHOD", "REVIEW_COLUMNS", "label_review", "summary_line"]

#: Column order of :func:`label_review`.
REVIEW_COLUMNS: tuple[str, ...] = ("ID", "group", "label", "prob", "quality", "rank", "suggested_label")
#: cleanlab's scoring method. With two classes ``normalized_margin`` is ``(p_y - (1 - p_y) + 1) / 2
#: = p_y``, the very ``self_confidence`` score (the probability the model gives the given label),
#: so both rank alike (tests/test_label_review.py checks it); ``self_confidence`` is cleanlab's
#: default and reads directly as a probability. ``adjust_pred_probs`` stays off: subtracting each
#: class's mean self-confidence found half as many flipped labels in the top 5% on an imbalanced
#: (10% positive), calibrated simulation (0.27 against 0.58 of the flips, 30 seeds).
QUALITY_METHOD: str = "self_confidence"


def _inputs(ids: Any, groups: Any, labels: Any, probs: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(ID str (n,), group str (n,), label int64 (n,), prob float64 (n,)), checked."""
    id_arr = np.asarray(ids).astype(str)
    grp = np.asarray(groups).astype(str)
    p_raw = np.asarray(probs, dtype=np.float64)
    if id_arr.ndim != 1 or grp.shape != id_arr.shape or p_raw.shape != id_arr.shape:
        raise ValueError(f"label_review needs one ID, group, label and prob per slice; got shapes ids {id_arr.shape}, "
                         f"groups {grp.shape}, probs {p_raw.shape}.")
    bad = ~np.isfinite(p_raw)
    if bad.any():
        raise ValueError(f"label_review: {int(bad.sum())} slice(s) have no finite out-of-fold probability, e.g. IDs "
                         f"{id_arr[bad][:5].tolist()}; every slice of the review needs its OOF prob (a slice that was in "
                         f"no validation fold has none: leave it out).")
    dup = pd.Series(id_arr).duplicated()
    if dup.any():
        raise ValueError(f"label_review: IDs must be unique (one row per slice); repeated: {sorted(set(id_arr[dup.to_numpy()]))[:5]}.")
    y, p = check_labels_scores(labels, p_raw, y_name="labels")
    if np.unique(y).size < 2:
        raise ValueError(f"label_review needs both classes 0 and 1 among the labels (cleanlab estimates how often each class "
                         f"is mislabelled as the other); all {y.size} labels are {int(y[0])}.")
    return id_arr, grp, y, p


def label_review(ids: Any, groups: Any, labels: Any, probs: Any) -> pd.DataFrame:
    """One row per slice, most suspect label first.

    Args:
        ids: (n,) slice IDs, unique.
        groups: (n,) the patient of each slice (carried along, so a reviewer sees whose slice it is).
        labels: (n,) the given labels, 0/1.
        probs: (n,) calibrated out-of-fold probability of class 1, in [0, 1].

    Returns:
        Columns :data:`REVIEW_COLUMNS`: ``quality`` in [0, 1] is cleanlab's label-quality score
        (:data:`QUALITY_METHOD`: the probability of the given label; low = suspect); ``rank`` is
        1..n by ``quality`` ascending, ties in ID order (deterministic); ``suggested_label`` is the
        more probable class where ``cleanlab.filter.find_label_issues`` flags the row (its
        confident-learning estimate of the noise rates decides how many are flagged), else the
        given label. Sorted by ``rank``.

    Raises:
        ValueError: shapes differ, an ID repeats, a prob is NaN/inf or outside [0, 1], a label is
            not 0/1, or only one class is present.
    """
    id_arr, grp, y, p = _inputs(ids, groups, labels, probs)
    pred_probs = np.column_stack([1.0 - p, p])
    quality = get_label_quality_scores(y, pred_probs, method=QUALITY_METHOD)
    issues = np.asarray(find_label_issues(y, pred_probs, n_jobs=1), dtype=bool)
    suggested = np.where(issues, pred_probs.argmax(axis=1), y)
    order = np.lexsort((id_arr, quality))  # last key first: quality, then ID
    rank = np.empty(y.size, dtype=np.int64)
    rank[order] = np.arange(1, y.size + 1)
    df = pd.DataFrame({"ID": id_arr, "group": grp, "label": y, "prob": p, "quality": quality, "rank": rank,
                       "suggested_label": suggested.astype(np.int64)})
    return df.iloc[order].reset_index(drop=True)[list(REVIEW_COLUMNS)]


def summary_line(df: pd.DataFrame, top_frac: float = 0.05, *, file: str = "label_review.csv", show: int = 3) -> str:
    """The CV output's line about a :func:`label_review` table.

    ``"label review: 14 of 480 labels look suspect (cleanlab); the 24 most suspect are in
    label_review.csv, top: ID_x (label 0, prob 0.97), ..."``: suspect = ``suggested_label !=
    label``; the most suspect are the top ``ceil(top_frac * n)`` ranks (at least 1); ``show`` of
    them are named.
    """
    missing = [c for c in REVIEW_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"summary_line needs a label_review() table; missing column(s) {missing}.")
    if not 0.0 < float(top_frac) <= 1.0:
        raise ValueError(f"summary_line: top_frac must be in (0, 1], got {top_frac!r}.")
    n = len(df)
    n_suspect = int((df["suggested_label"] != df["label"]).sum())
    k = max(1, math.ceil(float(top_frac) * n - 1e-9)) if n else 0
    top = df.sort_values("rank").head(min(k, show))
    named = ", ".join(f"{i} (label {int(lab)}, prob {float(pr):.2f})"
                      for i, lab, pr in zip(top["ID"].tolist(), top["label"].tolist(), top["prob"].tolist()))
    return (f"label review: {n_suspect} of {n} labels look suspect (cleanlab); the {k} most suspect are in {file}"
            + (f", top: {named}" if named else ""))
