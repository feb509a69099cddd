"""The one check of a ``(labels, probabilities)`` pair that every evaluation function starts with."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

__all__ = ["canonical_groups", "check_frame", "check_labels_scores"]


def check_frame(df: Any, name: str, columns: tuple[str, ...] | list[str]) -> pd.DataFrame:
    """``df`` itself when it is a non-empty DataFrame with ``columns``; else a TypeError/ValueError naming ``name``."""
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"The '{name}' parameter must be a pandas DataFrame; got {type(df).__name__}.")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"The '{name}' DataFrame is missing column(s) {missing}; "
                         f"required columns are {list(columns)}, got {list(df.columns)}.")
    if len(df) == 0:
        raise ValueError(f"The '{name}' DataFrame is empty.")
    return df


def check_labels_scores(
    y: Any,
    prob: Any,
    *,
    y_name: str = "y_true",
    probabilities: bool = True,
    allow_empty: bool = False,
    both_classes: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Validate 0/1 labels and their scores; return (int64 (n,) labels, float64 (n,) scores).

    Args:
        y: labels, 1-D, values 0/1 (or bool).
        prob: one score per label, 1-D, finite.
        y_name: the labels' parameter name in the messages.
        probabilities: the scores must lie in [0, 1] (False: any finite score, e.g. a logit).
        allow_empty: accept zero rows (else an error).
        both_classes: when given, both classes must be present; the text says what for
            (e.g. ``"to draw a curve"``).

    Raises:
        ValueError: naming the parameter, the shape or the offending values.
    """
    ya = np.asarray(y)
    p = np.asarray(prob, dtype=np.float64)
    if ya.ndim != 1:
        raise ValueError(f"The '{y_name}' parameter must be a 1-D array; got an array with shape {ya.shape}.")
    if p.ndim != 1:
        raise ValueError(f"The 'prob' parameter must be a 1-D array; got an array with shape {p.shape}.")
    if ya.shape[0] != p.shape[0]:
        raise ValueError(f"The '{y_name}' and 'prob' parameters must have the same length; got {ya.shape[0]} and {p.shape[0]}.")
    if ya.shape[0] == 0 and not allow_empty:
        raise ValueError(f"The '{y_name}' parameter must contain at least one sample; got 0.")
    try:
        yf = ya.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"The '{y_name}' parameter must contain only the values 0 and 1; got dtype {ya.dtype}.") from exc
    bad = ~np.isin(yf, (0.0, 1.0))
    if bad.any():
        found = np.unique(ya[bad])[:5].tolist()
        raise ValueError(f"The '{y_name}' parameter must contain only the values {{0, 1}}; got other values such as {found}.")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"The 'prob' parameter must contain only finite values; got {int((~np.isfinite(p)).sum())} NaN/inf value(s).")
    if probabilities and p.size and (p.min() < 0.0 or p.max() > 1.0):
        raise ValueError(
            "The 'prob' parameter must contain probabilities in [0, 1]; "
            f"got values in [{p.min():.6g}, {p.max():.6g}] (pass sigmoid(logits), not logits)."
        )
    y_int = yf.astype(np.int64)
    if both_classes is not None and np.unique(y_int).size < 2:
        raise ValueError(f"The '{y_name}' parameter must contain both classes 0 and 1 {both_classes}; "
                         f"got only {np.unique(y_int).tolist()}.")
    return y_int, p


def canonical_groups(groups: Any) -> np.ndarray:
    """Group labels -> int64 codes in the order each group first appears among the rows (the store's rows are
    ordered by ID; the out-of-fold rows by fold, then ID: neither order depends on the hash key).

    The store's patient/study/series keys are keyed hashes with a random key per store, so their
    sorted order -- which StratifiedGroupKFold's shuffle starts from -- differs between two builds
    of the same data. Splitting, bootstrapping and bounding on these codes instead makes the test set,
    folds, holdouts, the patient-bootstrap intervals (:mod:`trainer.evaluation.intervals`) and the
    sensitivity bound (:mod:`trainer.evaluation.sens_bound`) a function of the data and the seeds alone:
    the same on every build of the same folder.
    """
    return pd.factorize(np.asarray(groups))[0].astype(np.int64)
