"""Embedding distance: one Gaussian per class, each with its own shrunk covariance (pure numpy).

Each class gets the mean of its training embeddings and the covariance of its own centred
embeddings, shrunk with Ledoit-Wolf (:class:`sklearn.covariance.LedoitWolf`: with fewer slices of a
class than dimensions, ~100-300 against 512, the sample covariance is singular); a sample's distance
is its Mahalanobis distance to the nearest class mean under that class's covariance.

Why not one shared covariance (Lee et al. 2018, "A simple unified framework for detecting
out-of-distribution samples and adversarial attacks")? It was this module's first version. The lesion
class of a brain-CT set is far more varied than the normal class (lesion size, kind, contrast), and
a shared covariance, dominated by the tight normal class, put unseen but plainly in-distribution lesion
slices far out: on seven phantom final models (docs/results.md, "Distribution shift") it flagged 0-17
of 120 test slices (pooled 3.5 %, two sets over 5 %, every flagged slice a lesion slice) where the holdout rule
aims at 1 %; per-class covariances flagged 0-5 (pooled 1.1 %). A class with fewer than
:data:`MIN_CLASS_ROWS` training rows uses the covariance of all class-centred rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MIN_CLASS_ROWS", "Gaussians", "fit_gaussians", "mahalanobis"]

#: Below this many training rows a class borrows the pooled (class-centred) covariance.
MIN_CLASS_ROWS = 10


@dataclass(frozen=True)
class Gaussians:
    """Class means and precision matrices.

    Attributes:
        classes: int64 (k,), the labels with training rows.
        means: float64 (k, d).
        precision: float64 (k, d, d), the inverse of each class's shrunk covariance; (d, d) for one
            shared matrix (a reference saved by the first version of this module).
        shrinkage: float64 (k,) the Ledoit-Wolf shrinkage coefficients in [0, 1] (a scalar for a shared matrix).
    """

    classes: np.ndarray
    means: np.ndarray
    precision: np.ndarray
    shrinkage: np.ndarray


def _ledoit_wolf(centred: np.ndarray) -> tuple[np.ndarray, float]:
    """(precision (d, d), shrinkage) of already centred rows (n, d)."""
    from sklearn.covariance import LedoitWolf

    lw = LedoitWolf(assume_centered=True).fit(centred)
    return np.asarray(lw.precision_, dtype=np.float64), float(lw.shrinkage_)


def fit_gaussians(emb: np.ndarray, labels: np.ndarray) -> Gaussians:
    """Fit each class's mean and Ledoit-Wolf covariance on embeddings (n, d) with labels (n,)."""
    x = np.asarray(emb, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    if x.ndim != 2 or len(x) < 2 or len(y) != len(x):
        raise ValueError(f"need >= 2 embeddings (n, d) with one label each, got {x.shape} and {y.shape}")
    classes = np.unique(y)
    means = np.stack([x[y == c].mean(axis=0) for c in classes])
    centred = x - means[np.searchsorted(classes, y)]
    pooled = None
    precision, shrinkage = [], []
    for c in classes:
        own = centred[y == c]
        if len(own) < MIN_CLASS_ROWS:
            pooled = pooled or _ledoit_wolf(centred)
            p, s = pooled
        else:
            p, s = _ledoit_wolf(own)
        precision.append(p)
        shrinkage.append(s)
    return Gaussians(classes=classes, means=means, precision=np.stack(precision), shrinkage=np.asarray(shrinkage))


def mahalanobis(emb: np.ndarray, g: Gaussians) -> np.ndarray:
    """Mahalanobis distance (m,) float64 of each embedding (m, d) to its nearest class mean, each class
    under its own precision matrix (or the shared one of an old reference)."""
    x = np.asarray(emb, dtype=np.float64)
    prec = g.precision if g.precision.ndim == 3 else np.broadcast_to(g.precision, (len(g.means), *g.precision.shape))
    best = np.full(len(x), np.inf)
    for mu, p in zip(g.means, prec):
        z = x - mu
        best = np.minimum(best, ((z @ p) * z).sum(axis=1))
    return np.sqrt(np.maximum(best, 0.0))
