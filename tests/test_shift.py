"""trainer.shift's math: feature ranges, the Mahalanobis distance (against scipy), the holdout
threshold rule (~1 % of held-out slices flagged), one reason per out-of-range column, the summary."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import mahalanobis as scipy_mahalanobis
from sklearn.covariance import LedoitWolf

from trainer.shift.columns import COLUMNS, column_values
from trainer.shift.mahalanobis import Gaussians, fit_gaussians, mahalanobis
from trainer.shift.ranges import exceedance, fit_ranges
from trainer.shift.reference import ALPHA, MIN_MARGIN, fit_reference, holdout_threshold, load_reference
from trainer.shift.verdict import EMBEDDING_REASON, judge, summarise

NAMES = [c.name for c in COLUMNS]


def _feature_rows(n: int, seed: int) -> list[dict[str, float]]:
    """Feature rows like the phantoms': spacing 0.40-0.50 mm, kVp 120, 512 px, 5 mm, HU and tissue statistics."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        sp = rng.uniform(0.40, 0.50)
        rows.append({"spacing_row_mm": sp, "spacing_col_mm": sp, "thickness_mm": 5.0, "kvp": 120.0, "rows": 512,
                     "cols": 512, "hu_p1": rng.normal(-1010, 4), "hu_p50": rng.normal(-700, 100),
                     "hu_p99": rng.normal(1030, 60), "frac_air": rng.normal(0.53, 0.05),
                     "frac_brain": rng.normal(0.33, 0.05), "frac_bone": rng.normal(0.04, 0.005),
                     "box_r0": 60, "box_r1": 60 + rng.normal(360, 20), "box_c0": 90, "box_c1": 90 + rng.normal(320, 20),
                     "scale": rng.normal(0.36, 0.03)})
    return rows


def test_column_values_derive_the_skull_box_and_keep_missing_values():
    v = column_values([{"box_r0": 10, "box_r1": 110, "box_c0": 5, "box_c1": 45, "kvp": None, "rows": "512"}])
    assert v.shape == (1, len(COLUMNS))
    assert v[0, NAMES.index("box_h")] == 100 and v[0, NAMES.index("box_w")] == 40
    assert v[0, NAMES.index("rows")] == 512 and np.isnan(v[0, NAMES.index("kvp")])


def test_exceedance_is_zero_inside_and_in_spreads_outside():
    train = np.array([[0.40, 120.0], [0.50, 120.0], [0.45, 120.0]])
    r = fit_ranges(train, tol=np.array([0.01, 1.0]))
    assert r.lo.tolist() == [0.40, 120.0] and r.hi.tolist() == [0.50, 120.0]
    std = np.std(train[:, 0])
    assert r.scale[0] == pytest.approx(std) and r.scale[1] == 1.0  # a constant column: its tol
    d = exceedance(np.array([[0.45, 120.0], [0.60, 80.0], [np.nan, 121.5]]), r)
    assert d[0].tolist() == [0.0, 0.0]
    assert d[1, 0] == pytest.approx(0.10 / std) and d[1, 1] == pytest.approx(40.0)
    assert d[2, 0] == np.inf and d[2, 1] == pytest.approx(1.5)  # never missing in training: infinitely far


def test_mahalanobis_matches_scipy_with_each_class_ledoit_wolf_covariance():
    rng = np.random.default_rng(0)
    d = 20
    y = rng.integers(0, 2, 300)
    mix = rng.normal(size=(d, d))
    x = rng.normal(size=(300, d)) @ mix * 0.3 * np.where(y == 1, 3.0, 1.0)[:, None] + y[:, None] * 2.0  # class 1 spreads 3x wider
    g = fit_gaussians(x, y)
    means = np.stack([x[y == c].mean(0) for c in (0, 1)])
    vi = [np.linalg.inv(LedoitWolf(assume_centered=True).fit(x[y == c] - means[c]).covariance_) for c in (0, 1)]
    new = rng.normal(size=(15, d)) * 2
    want = [min(scipy_mahalanobis(p, means[0], vi[0]), scipy_mahalanobis(p, means[1], vi[1])) for p in new]
    np.testing.assert_allclose(mahalanobis(new, g), want, rtol=1e-6)
    np.testing.assert_allclose(g.means, means)
    assert g.precision.shape == (2, d, d) and g.shrinkage.shape == (2,)


def test_a_wide_class_does_not_push_its_own_unseen_members_out():
    """The reason for one covariance per class: a tight class 0 and a 4x wider class 1. Fresh class-1 samples
    are about as far from their own Gaussian as fresh class-0 samples; under one shared (mostly class-0)
    covariance they would sit far out."""
    rng = np.random.default_rng(3)
    d, n = 8, 4000
    y = (rng.random(n) < 0.3).astype(int)
    x = rng.normal(size=(n, d)) * np.where(y == 1, 4.0, 1.0)[:, None] + y[:, None] * 5.0
    g = fit_gaussians(x, y)
    fresh1 = rng.normal(size=(2000, d)) * 4.0 + 5.0
    fresh0 = rng.normal(size=(2000, d))
    assert np.median(mahalanobis(fresh1, g)) == pytest.approx(np.median(mahalanobis(fresh0, g)), rel=0.1)
    shared = Gaussians(classes=g.classes, means=g.means, shrinkage=np.float64(0.0),
                       precision=np.linalg.inv(np.cov((x - g.means[y]).T)))  # an old reference's one shared matrix
    assert np.median(mahalanobis(fresh1, shared)) > 2 * np.median(mahalanobis(fresh0, shared))


def test_a_class_with_few_rows_borrows_the_pooled_covariance():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(105, 6))
    y = np.r_[np.zeros(100, int), np.ones(5, int)]
    g = fit_gaussians(x, y)
    means = np.stack([x[y == c].mean(0) for c in (0, 1)])
    pooled = np.linalg.inv(LedoitWolf(assume_centered=True).fit(x - means[y]).covariance_)
    np.testing.assert_allclose(g.precision[1], pooled, rtol=1e-8)


def test_thresholds_flag_about_one_percent_of_a_gaussian_holdout():
    rng = np.random.default_rng(1)
    d, n_fit, n_ho = 16, 2000, 4000
    y_fit = rng.integers(0, 2, n_fit)
    emb_fit = rng.normal(size=(n_fit, d)) + y_fit[:, None]
    emb_ho = rng.normal(size=(n_ho, d)) + rng.integers(0, 2, n_ho)[:, None]
    feats = column_values(_feature_rows(n_fit + n_ho, 2))
    ref = fit_reference(feats[:n_fit], emb_fit, y_fit, feats[n_fit:], emb_ho)
    # the rule: features at the holdout's upper 1 - alpha/2 quantile (numpy's, linear), at least MIN_MARGIN;
    # the embedding at the quantile that brings the union to alpha (rows the features flag set aside)
    f_ho = exceedance(feats[n_fit:], ref.ranges).max(axis=1)
    assert ref.feature_threshold == pytest.approx(max(MIN_MARGIN, np.quantile(f_ho, 1 - ALPHA / 2))) == MIN_MARGIN
    by_f = f_ho > MIN_MARGIN
    assert 0 < by_f.mean() < ALPHA / 2  # a few Gaussian tails beyond the margin
    e_ho = mahalanobis(emb_ho, ref.gaussians)
    want_e = np.quantile(np.where(by_f, e_ho.min(), e_ho), 1 - (ALPHA - by_f.mean()))
    assert ref.embedding_threshold == pytest.approx(want_e)
    assert np.mean(by_f | (e_ho > want_e)) == pytest.approx(ALPHA, abs=0.0005)
    assert ref.info["holdout_flag_rate"] == pytest.approx(ALPHA, abs=0.0005)
    assert ref.info["n_fit"] == n_fit and ref.info["n_holdout"] == n_ho
    # fresh slices of the same distribution: about 1 % flagged too
    fresh = rng.normal(size=(4000, d)) + rng.integers(0, 2, 4000)[:, None]
    v = judge(ref, column_values(_feature_rows(4000, 3)), fresh)
    assert 0.003 < v.shifted.mean() < 0.02
    # the squared distances of a fitted Gaussian are about chi-square with d degrees of freedom
    assert np.median(mahalanobis(emb_ho, ref.gaussians) ** 2) == pytest.approx(d - 2 / 3, rel=0.15)


def test_holdout_threshold_rule():
    s = np.arange(100, dtype=float)
    assert holdout_threshold(s, 0.01) == pytest.approx(np.quantile(s, 0.99))
    assert holdout_threshold(np.zeros(50), 0.01, floor=1.0) == 1.0  # all inside the range: the floor
    assert holdout_threshold(np.array([]), 0.01, floor=2.0) == 2.0
    assert np.isfinite(holdout_threshold(np.array([0.0, 1.0, np.inf]), 0.01))


@pytest.fixture(scope="module")
def ref():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 400)
    emb = rng.normal(size=(400, 8)) + y[:, None]
    feats = column_values(_feature_rows(500, 5))
    return fit_reference(feats[:400], emb, y, feats[400:], rng.normal(size=(100, 8)) + rng.integers(0, 2, 100)[:, None])


OUT_OF_RANGE = {  # column -> (value, the reason's text)
    "spacing_row_mm": (0.9, "pixel spacing (rows) 0.9 mm vs "), "spacing_col_mm": (0.2, "pixel spacing (columns) 0.2 mm vs "),
    "thickness_mm": (1.0, "slice thickness 1 mm vs 5 mm in training"), "kvp": (80.0, "kVp 80 kV vs 120 kV in training"),
    "rows": (256, "image rows 256 px vs 512 px in training"), "cols": (1024, "image columns 1024 px vs 512 px in training"),
    "hu_p1": (-500.0, "HU 1st percentile -500 HU vs "), "hu_p50": (500.0, "HU median 500 HU vs "),
    "hu_p99": (3000.0, "HU 99th percentile 3000 HU vs "), "frac_air": (0.95, "air fraction 0.95 vs "),
    "frac_brain": (0.9, "brain-window fraction 0.9 vs "), "frac_bone": (0.3, "bone fraction 0.3 vs "),
    "box_r1": (60 + 1000, "skull box height 1000 px vs "), "box_c1": (90 + 40, "skull box width 40 px vs "),
    "scale": (1.5, "resize scale 1.5 vs "),
}


@pytest.mark.parametrize("column", list(OUT_OF_RANGE))
def test_each_out_of_range_column_is_a_reason(ref, column):
    row = _feature_rows(1, 6)[0]
    value, text = OUT_OF_RANGE[column]
    v = judge(ref, column_values([row, {**row, column: value}]), np.array([[0.5] * 8, [0.5] * 8]))
    assert not v.shifted[0] and v.reasons[0] == "" and v.score[0] < 1
    assert v.shifted[1] and v.score[1] > 1
    assert v.reasons[1].startswith(text) and v.reasons[1].endswith("in training")
    assert v.col_flags[1].sum() == 1  # that column alone


def test_a_missing_header_value_is_a_reason(ref):
    row = {**_feature_rows(1, 6)[0], "kvp": None}
    v = judge(ref, column_values([row]), np.zeros((1, 8)) + 0.5)
    assert v.shifted[0] and v.reasons[0] == "kVp missing vs 120 kV in training"


def test_an_embedding_far_from_training_is_a_reason(ref):
    rows = column_values(_feature_rows(2, 7))
    v = judge(ref, rows, np.array([[0.5] * 8, [40.0] * 8]))
    assert not v.shifted[0]
    assert v.shifted[1] and v.reasons[1].startswith(EMBEDDING_REASON + " (distance ")
    assert v.embedding_distance[1] > ref.embedding_threshold and not v.col_flags[1].any()
    assert v.score[1] == pytest.approx(v.embedding_distance[1] / ref.embedding_threshold)


def test_summary_names_the_columns_with_values_and_training_range(ref):
    base = _feature_rows(10, 8)
    rows = [{**r, "kvp": 80.0} for r in base[:4]] + [{**r, "spacing_row_mm": 0.9} for r in base[4:6]] + base[6:]
    v = judge(ref, column_values(rows), np.zeros((10, 8)) + 0.5)
    s = summarise(ref, v, n_files=12)
    assert s["n_files"] == 12 and s["n_checked"] == 10 and s["n_shifted"] == 6 and s["rate"] == pytest.approx(0.6)
    assert [c["check"] for c in s["checks"]] == ["kvp", "spacing_row_mm"]
    assert s["checks"][0]["values"] == [80.0, 80.0] and s["checks"][0]["training"] == [120.0, 120.0]
    assert s["message"].startswith("6 of 10 slices outside the training distribution: kVp 80 kV vs 120 kV in training (4 slices); "
                                   "pixel spacing (rows) 0.9 mm vs 0.4")
    assert summarise(None, None, 3)["reference"] is False


def test_reference_round_trips_through_json_and_npz(ref, tmp_path):
    ref.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shift_embedding.npz", "shift_reference.json"]
    back = load_reference(tmp_path)
    assert back is not None and back.feature_threshold == ref.feature_threshold
    assert back.embedding_threshold == pytest.approx(ref.embedding_threshold)
    np.testing.assert_array_equal(back.gaussians.precision, ref.gaussians.precision)
    np.testing.assert_array_equal(back.ranges.lo, ref.ranges.lo)
    x = np.random.default_rng(9).normal(size=(5, 8))
    np.testing.assert_array_equal(back.embedding_distance(x, 5), ref.embedding_distance(x, 5))
    assert load_reference(tmp_path / "nothing") is None
