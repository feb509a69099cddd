"""trainer.saliency.peak.peak_of: the maximum, and the centre of the half-maximum region round it
(hand-computed weights, a sub-pixel Gaussian, the 4-connected region only, the peak mask)."""

from __future__ import annotations

import numpy as np
import pytest

from neurocache.config import ConfigError
from trainer.config import TrainConfig
from trainer.saliency.peak import peak_of


def test_centroid_is_the_weighted_centre_of_the_connected_half_maximum_region():
    s = np.array([[0.0, 0.6, 0.0, 0.9],
                  [0.2, 1.0, 0.8, 0.0],
                  [0.0, 0.0, 0.55, 0.0]])
    # >= 0.5 and 4-connected to the maximum: (0,1) 0.6, (1,1) 1.0, (1,2) 0.8, (2,2) 0.55; (0,3) touches only diagonally
    w = {(0, 1): 0.1, (1, 1): 0.5, (1, 2): 0.3, (2, 2): 0.05}
    total = sum(w.values())
    want = (sum(r * v for (r, _), v in w.items()) / total, sum(c * v for (_, c), v in w.items()) / total)
    assert peak_of(s) == pytest.approx(want, abs=1e-12)
    assert peak_of(s, locate="max") == (1.0, 1.0)


def test_centroid_finds_a_blob_between_pixels_and_ignores_a_separate_one():
    rr, cc = np.mgrid[:48, :48].astype(np.float64)
    blob = np.exp(-((rr - 15.3) ** 2 + (cc - 20.6) ** 2) / (2 * 3.0**2))
    other = 0.7 * np.exp(-((rr - 38.0) ** 2 + (cc - 38.0) ** 2) / (2 * 2.0**2))
    r, c = peak_of(blob + other)
    assert abs(r - 15.3) < 0.1 and abs(c - 20.6) < 0.1
    assert peak_of(blob + other, locate="max") == (15.0, 21.0)  # the maximum sits on a whole pixel
    assert peak_of(blob) == pytest.approx((r, c), abs=1e-9)      # the second blob is not in the region


def test_plateau_and_mask():
    s = np.zeros((5, 6))
    s[2, 2] = s[2, 3] = 1.0
    assert peak_of(s) == (2.0, 2.5)
    s[0, 0] = 2.0  # a higher maximum where the mask says no
    where = np.ones_like(s, dtype=bool)
    where[0, 0] = False
    assert peak_of(s, where) == (2.0, 2.5)
    assert peak_of(s, where, locate="max") == (2.0, 2.0)
    assert peak_of(s) == (0.0, 0.0)
    assert peak_of(np.zeros((4, 4))) == (0.0, 0.0)  # a flat map: its first pixel


def test_bad_locate():
    with pytest.raises(ValueError, match="locate='mean'"):
        peak_of(np.zeros((2, 2)), locate="mean")
    with pytest.raises(ConfigError, match="saliency_locate='mean'.*centroid, max"):
        TrainConfig(saliency_locate="mean")
