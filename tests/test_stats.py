"""Wilson, DeLong, the patient bootstrap and patient aggregation (trainer.evaluation.intervals, trainer.evaluation.patient)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest
from sklearn.metrics import average_precision_score, roc_auc_score

from trainer.config import TrainConfig
from trainer.evaluation import evaluate_predictions
from trainer.evaluation.patient import aggregate_patients
from trainer.evaluation.intervals import delong, group_bootstrap, interval_report, weighted_auc_ap, wilson_interval, z_value

# --------------------------------------------------------------------------------------------
# Wilson
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "k,n,lo,hi",
    [  # Newcombe RG, Stat Med 1998;17:857-872, table I, method 3 (Wilson score, no continuity correction)
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0000, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_matches_newcombe_1998(k, n, lo, hi):
    got = wilson_interval(k, n)
    assert (round(got[0], 4), round(got[1], 4)) == (lo, hi)


def test_wilson_matches_scipy_on_a_grid():
    for n in (1, 2, 5, 17, 100, 1000):
        for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
            ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
            got = wilson_interval(k, n)
            assert got[0] == pytest.approx(ref.low, abs=1e-12) and got[1] == pytest.approx(ref.high, abs=1e-12), (k, n)
    ref = binomtest(7, 40).proportion_ci(confidence_level=0.9, method="wilson")
    assert wilson_interval(7, 40, level=0.9) == pytest.approx((ref.low, ref.high), abs=1e-12)


def test_wilson_edges():
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0
    assert z_value(0.95) == pytest.approx(1.959964, abs=1e-6)
    with pytest.raises(ValueError):
        wilson_interval(6, 5)
    with pytest.raises(ValueError):
        z_value(1.0)


# --------------------------------------------------------------------------------------------
# DeLong
# --------------------------------------------------------------------------------------------
# pROC's aSAH data (Turck et al., Intensive Care Med 2010;36:107), 113 patients:
# y = outcome == "Poor", marker s100b. pROC's documented example, roc(aSAH$outcome, aSAH$s100b),
# prints "Area under the curve: 0.7314" and "95% CI: 0.6301-0.8326 (DeLong)".
ASAH_Y = [
    0, 0, 0, 0, 1, 1, 0, 1, 0, 0, 1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 1, 0, 1, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 1, 0, 0, 1, 1, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 1, 0,
    0, 0, 1, 0, 1, 0, 0, 1, 1, 1, 0, 1, 1, 0, 1, 1, 1, 1, 0, 0, 0, 1, 1, 0, 1, 0, 0, 0,
    0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 0, 0,
    0,
]  # fmt: skip
ASAH_S100B = [
    0.13, 0.14, 0.1, 0.04, 0.13, 0.1, 0.47, 0.16, 0.18, 0.1, 0.12, 0.1, 0.44, 0.71,
    0.04, 0.08, 0.49, 0.04, 0.07, 0.33, 0.09, 0.09, 0.07, 0.11, 0.07, 0.17, 0.07, 0.11,
    0.13, 0.19, 0.05, 0.16, 0.41, 0.14, 0.34, 0.35, 0.48, 0.09, 0.96, 0.25, 0.5, 0.46,
    0.16, 0.07, 0.43, 0.45, 0.11, 0.08, 0.09, 0.86, 0.52, 0.08, 0.06, 0.13, 2.07, 0.1,
    0.14, 0.15, 0.07, 0.06, 0.77, 0.05, 0.09, 0.3, 0.03, 0.09, 0.04, 0.23, 0.7, 0.09,
    0.27, 0.71, 0.08, 0.26, 0.08, 0.16, 0.09, 0.13, 0.1, 0.08, 0.11, 0.33, 0.11, 0.28,
    0.07, 0.1, 0.32, 0.22, 0.07, 0.05, 0.24, 0.38, 0.1, 0.15, 0.08, 0.14, 0.1, 0.07,
    0.04, 0.19, 0.56, 0.14, 0.58, 0.32, 0.82, 0.74, 0.15, 0.47, 0.17, 0.44, 0.15, 0.5,
    0.48,
]  # fmt: skip


def test_delong_reproduces_proc_on_asah():
    y, s = np.array(ASAH_Y), np.array(ASAH_S100B)
    assert (len(y), int(y.sum())) == (113, 41)
    d = delong(y, s)
    assert round(d["auc"], 4) == 0.7314
    assert (round(d["lo"], 4), round(d["hi"], 4)) == (0.6301, 0.8326)
    assert d["auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def _delong_by_definition(y: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    """DeLong et al. 1988 written out: psi over all m x n pairs, structural components, loops."""
    x = [v for v, t in zip(s, y) if t == 1]
    z = [v for v, t in zip(s, y) if t == 0]
    m, n = len(x), len(z)

    def psi(a: float, b: float) -> float:
        return 1.0 if a > b else 0.5 if a == b else 0.0

    v10 = [sum(psi(xi, zj) for zj in z) / n for xi in x]
    v01 = [sum(psi(xi, zj) for xi in x) / m for zj in z]
    auc = sum(v10) / m
    s10 = sum((v - auc) ** 2 for v in v10) / (m - 1)
    s01 = sum((v - auc) ** 2 for v in v01) / (n - 1)
    return auc, s10 / m + s01 / n


def test_delong_variance_equals_the_definition_with_and_without_ties():
    rng = np.random.default_rng(3)
    for trial in range(4):
        n = 60 + 20 * trial
        y = (rng.random(n) < 0.35).astype(int)
        s = rng.random(n) + 0.4 * y
        if trial % 2:
            s = np.round(s * 4) / 4  # a handful of distinct values: many ties
        auc, var = _delong_by_definition(y, s)
        d = delong(y, s)
        assert d["auc"] == pytest.approx(auc, abs=1e-12)
        assert d["var"] == pytest.approx(var, rel=1e-10)
        assert d["se"] == pytest.approx(math.sqrt(var), rel=1e-10)
        z = z_value(0.95)
        assert d["lo"] == pytest.approx(max(0, auc - z * math.sqrt(var)), abs=1e-12)


def test_delong_degenerate_inputs():
    one_class = delong([1, 1, 1], [0.2, 0.5, 0.9])
    assert all(math.isnan(one_class[k]) for k in ("auc", "var", "lo", "hi"))
    single_pos = delong([1, 0, 0, 0], [0.9, 0.1, 0.2, 0.3])
    assert single_pos["auc"] == 1.0 and math.isnan(single_pos["var"])
    perfect = delong([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert perfect["auc"] == 1.0 and perfect["hi"] == 1.0  # clipped to [0, 1]


# --------------------------------------------------------------------------------------------
# bootstrap
# --------------------------------------------------------------------------------------------
def test_weighted_auc_ap_equal_sklearn_with_sample_weight():
    rng = np.random.default_rng(0)
    y = (rng.random(150) < 0.3).astype(int)
    p = np.round(rng.random(150) * 0.6 + 0.3 * y, 2)  # ties
    w = rng.integers(0, 4, size=(25, 150))
    auc, ap = weighted_auc_ap(y, p, w)
    for i in range(len(w)):
        assert auc[i] == pytest.approx(roc_auc_score(y, p, sample_weight=w[i]), abs=1e-12)
        assert ap[i] == pytest.approx(average_precision_score(y, p, sample_weight=w[i]), abs=1e-12)
    a1, p1 = weighted_auc_ap(y, p, np.ones((1, 150)))
    assert a1[0] == pytest.approx(roc_auc_score(y, p)) and p1[0] == pytest.approx(average_precision_score(y, p))


def _clustered(n_patients: int = 30, per: int = 10, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Slices of a patient share label and (almost) score: strong within-patient correlation."""
    rng = np.random.default_rng(seed)
    lab = (np.arange(n_patients) % 3 == 0).astype(int)
    score = rng.normal(size=n_patients) + 1.2 * lab
    y = np.repeat(lab, per)
    p = 1 / (1 + np.exp(-(np.repeat(score, per) + rng.normal(scale=0.05, size=n_patients * per))))
    groups = np.repeat([f"pt{i:03d}" for i in range(n_patients)], per)
    return y, p, groups


def test_patient_bootstrap_is_wider_than_slice_bootstrap_on_clustered_data():
    """Ten near-identical slices per patient carry the evidence of one patient: resampling slices
    pretends there are 300 independent cases and gives intervals about sqrt(10) too narrow."""
    y, p, g = _clustered()
    thr = float(np.median(p))
    by_patient = group_bootstrap(y, p, thr, g, n_boot=500, seed=0)
    by_slice = group_bootstrap(y, p, thr, None, n_boot=500, seed=0)
    assert by_patient["unit"] == "group" and by_patient["n_units"] == 30
    assert by_slice["unit"] == "row" and by_slice["n_units"] == 300
    for k in ("auc", "ap", "sens", "spec"):
        wp = by_patient["ci"][k][1] - by_patient["ci"][k][0]
        ws = by_slice["ci"][k][1] - by_slice["ci"][k][0]
        assert wp > 2.0 * ws, (k, wp, ws)
    # DeLong treats the 300 slices as independent: as narrow as the slice bootstrap
    d = delong(y, p)
    assert d["hi"] - d["lo"] < 0.6 * (by_patient["ci"]["auc"][1] - by_patient["ci"]["auc"][0])


def test_one_slice_per_patient_makes_the_two_bootstraps_identical():
    rng = np.random.default_rng(2)
    y = (rng.random(80) < 0.4).astype(int)
    p = rng.random(80) * 0.7 + 0.3 * y
    g = np.array([f"{i:04d}" for i in range(80)])  # sorted keys = row order
    a = group_bootstrap(y, p, 0.5, g, n_boot=300, seed=9)
    b = group_bootstrap(y, p, 0.5, None, n_boot=300, seed=9)
    assert a["ci"] == b["ci"]


def test_group_bootstrap_equals_an_explicit_resampling_loop():
    """Independent computation: draw patients, concatenate their slices, score with sklearn."""
    y, p, g = _clustered(n_patients=12, per=4, seed=5)
    n_boot, seed, thr = 150, 4, 0.5
    got = group_bootstrap(y, p, thr, g, n_boot=n_boot, seed=seed)
    uniq, codes = np.unique(g, return_inverse=True)
    rows_of = [np.flatnonzero(codes == i) for i in range(len(uniq))]
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(uniq), size=(n_boot, len(uniq)))
    aucs, aps, sens, skipped = [], [], [], 0
    for d in draws:
        idx = np.concatenate([rows_of[i] for i in d])
        yy, pp = y[idx], p[idx]
        if len(np.unique(yy)) < 2:
            skipped += 1
            continue
        aucs.append(roc_auc_score(yy, pp))
        aps.append(average_precision_score(yy, pp))
        sens.append(((pp >= thr) & (yy == 1)).sum() / (yy == 1).sum())
    assert got["n_skipped"] == skipped and got["n_used"] == n_boot - skipped
    for k, v in (("auc", aucs), ("ap", aps), ("sens", sens)):
        assert got["ci"][k] == pytest.approx(list(np.quantile(v, [0.025, 0.975])), abs=1e-12), k


def test_bootstrap_is_reproducible_and_skips_one_class_resamples():
    y = np.array([1] * 2 + [0] * 18)
    p = np.linspace(0.05, 0.95, 20)
    g = np.array([f"g{i // 2}" for i in range(20)])  # the two positives are one patient
    a = group_bootstrap(y, p, 0.5, g, n_boot=400, seed=1)
    b = group_bootstrap(y, p, 0.5, g, n_boot=400, seed=1)
    c = group_bootstrap(y, p, 0.5, g, n_boot=400, seed=2)
    assert a == b and a["ci"] != c["ci"]
    assert a["n_skipped"] > 0 and a["n_used"] + a["n_skipped"] == 400
    none = group_bootstrap(y, p, 0.5, g, n_boot=0)
    assert none["ci"]["auc"] == [None, None] and none["n_used"] == 0
    with pytest.raises(ValueError):
        group_bootstrap(y, p, 0.5, g[:-1])


def test_interval_report_layout():
    y, p, g = _clustered(n_patients=20, per=3)
    r = interval_report(y, p, 0.5, g, n_boot=100, seed=0)
    for k in ("sens", "spec", "ppv", "npv"):
        lo, hi = r[k]["wilson"]
        assert 0 <= lo <= r[k]["estimate"] <= hi <= 1
        assert r[k]["bootstrap"][0] <= r[k]["bootstrap"][1]
    assert r["auc"]["delong"][0] <= r["auc"]["estimate"] <= r["auc"]["delong"][1]
    assert r["bootstrap"]["unit"] == "patient" and r["bootstrap"]["n_units"] == 20
    assert interval_report(y, p, 0.5, None, n_boot=10)["bootstrap"]["unit"] == "slice"


# --------------------------------------------------------------------------------------------
# patient aggregation
# --------------------------------------------------------------------------------------------
def _slices() -> pd.DataFrame:
    return pd.DataFrame({
        "patient": ["b", "a", "a", "a", "b", "c"],
        "label": [0, 0, 1, 0, 0, 0],
        "prob": [0.2, 0.1, 0.7, 0.4, 0.6, 0.3],
    })


def test_patient_aggregation_max_and_any_label():
    pt = aggregate_patients(_slices(), how="max", threshold=0.5)
    assert list(pt["patient"]) == ["b", "a", "c"]  # in the order they first appear (not the keys' sorted order)
    assert list(pt["label"]) == [0, 1, 0]  # positive if any slice is
    assert list(pt["prob"]) == [0.6, 0.7, 0.3]
    assert list(pt["n_slices"]) == [2, 3, 1] and list(pt["n_pos_slices"]) == [0, 1, 0]
    assert list(pt["pred"]) == [1, 1, 0]


def test_patient_aggregation_mean_and_errors():
    pt = aggregate_patients(_slices(), how="mean")
    assert pt["prob"].tolist() == pytest.approx([0.4, 0.4, 0.3])
    assert "pred" not in pt
    with pytest.raises(ValueError, match="patient_aggregation"):
        aggregate_patients(_slices(), how="median")
    with pytest.raises(ValueError, match="columns"):
        aggregate_patients(_slices().drop(columns="prob"))


def test_evaluate_predictions_patient_level():
    y, p, g = _clustered(n_patients=24, per=5)
    ids = [f"ID{i}" for i in range(len(y))]
    ev = evaluate_predictions(ids, y, p, g, 0.5, TrainConfig(n_boot=50, patient_aggregation="max"))
    pt = ev["patient"]
    assert pt["n_patients"] == 24 and pt["aggregation"] == "max" and "any" in pt["label_rule"]
    ref = aggregate_patients(pd.DataFrame({"patient": g, "label": y, "prob": p}), how="max")
    assert pt["metrics"]["auc"] == pytest.approx(roc_auc_score(ref["label"], ref["prob"]))
    assert pt["intervals"]["bootstrap"]["n_units"] == 24
    assert ev["intervals"]["bootstrap"]["n_units"] == 24 and ev["intervals"]["bootstrap"]["n_boot"] == 50
    assert ev["calibration"]["n"] == len(y)
