"""Embedding distance: class-conditional Gaussians with one shared, shrunk covariance (pure numpy).

As in Lee et al. (2018, "A simple unified framework for detecting out-of-distribution samples and
adversarial attacks"): each class gets the mean of its training embeddings, all classes share one
covariance fitted on the class-centred embeddings, and a sample's distance is its Mahalanobis
distance to the nearest class mean. With fewer training slices (~400) than dimensions (512) the
sample covariance is singular; Ledoit-Wolf shrinkage (:class:`sklearn.covariance.LedoitWolf`)
makes it invertible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Gaussians", "fit_gaussians", "mahalanobis"]


@dataclass(frozen=True)
class Gaussians:
    """Class means and the shared precision matrix.

    Attributes:
        classes: int64 (k,), the labels with training rows.
        means: float64 (k, d).
        precision: float64 (d, d), the inverse of the shrunk shared covariance.
        shrinkage: the Ledoit-Wolf shrinkage coefficient in [0, 1].
    """

    classes: np.ndarray
    means: np.ndarray
    precision: np.ndarray
    shrinkage: float


def fit_gaussians(emb: np.ndarray, labels: np.ndarray) -> Gaussians:
    """Fit class means and the Ledoit-Wolf covariance of class-centred embeddings (n, d), labels (n,)."""
    from sklearn.covariance import LedoitWolf

    x = np.asarray(emb, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    if x.ndim != 2 or len(x) < 2 or len(y) != len(x):
        raise ValueError(f"need >= 2 embeddings (n, d) with one label each, got {x.shape} and {y.shape}")
    classes = np.unique(y)
    means = np.stack([x[y == c].mean(axis=0) for c in classes])
    centred = x - means[np.searchsorted(classes, y)]
    lw = LedoitWolf(assume_centered=True).fit(centred)
    return Gaussians(classes=classes, means=means, precision=np.asarray(lw.precision_, dtype=np.float64),
                     shrinkage=float(lw.shrinkage_))


def mahalanobis(emb: np.ndarray, g: Gaussians) -> np.ndarray:
    """Mahalanobis distance (m,) float64 of each embedding (m, d) to its nearest class mean."""
    x = np.asarray(emb, dtype=np.float64)
    best = np.full(len(x), np.inf)
    for mu in g.means:
        z = x - mu
        best = np.minimum(best, ((z @ g.precision) * z).sum(axis=1))
    return np.sqrt(np.maximum(best, 0.0))
