"""Two builds of one folder give the same intervals and the same sensitivity bound: the store's patient
keys are keyed hashes with a random key per build, so their sorted order differs between builds; the
patient bootstrap, the patient table and the bound use the order patients first appear in (the rows')."""

from __future__ import annotations

import hashlib

import numpy as np

from trainer.config import TrainConfig
from trainer.evaluation.evaluate import evaluate_predictions
from trainer.evaluation.inputs import canonical_groups
from trainer.evaluation.intervals import group_bootstrap
from trainer.evaluation.sens_bound import sens_lower_bounds


def _rows(seed: int = 7) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """IDs (sorted, as the store's rows are), labels, probabilities and patient names: 40 patients, 1-5 slices each."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 6, size=40)
    patients = np.repeat([f"patient_{i:03d}" for i in range(40)], sizes)
    sick = np.repeat(rng.random(40) < 0.4, sizes)
    y = (sick & (rng.random(patients.size) < 0.7)).astype(int)
    prob = np.clip(0.25 + 0.45 * y + rng.normal(0, 0.2, patients.size), 0.001, 0.999)
    ids = np.array([f"ID_{i:05d}" for i in range(patients.size)])
    return ids, y, prob, patients


def _keyed(names: np.ndarray, key: bytes) -> np.ndarray:
    """The store's kind of patient key: a keyed BLAKE2b hash of the name (``neurocache`` hashes with a per-store key)."""
    return np.array([hashlib.blake2b(n.encode(), key=key, digest_size=16).hexdigest() for n in names])


def test_the_two_builds_sort_their_patients_differently():
    _, _, _, patients = _rows()
    a, b = _keyed(patients, b"build one"), _keyed(patients, b"build two")
    order_a = [dict(zip(a, patients))[k] for k in sorted(set(a))]
    order_b = [dict(zip(b, patients))[k] for k in sorted(set(b))]
    assert order_a != order_b  # the premise: sorted keys put the patients in another order per build
    np.testing.assert_array_equal(canonical_groups(a), canonical_groups(b))
    np.testing.assert_array_equal(canonical_groups(a), canonical_groups(patients))


def test_bootstrap_intervals_and_sensitivity_bound_do_not_depend_on_the_key():
    _, y, prob, patients = _rows()
    a, b = _keyed(patients, b"build one"), _keyed(patients, b"build two")
    ci = [group_bootstrap(y, prob, 0.5, g, n_boot=300, seed=11)["ci"] for g in (a, b, patients)]
    assert ci[0] == ci[1] == ci[2]
    t = np.linspace(0.2, 0.8, 13)
    bounds = [sens_lower_bounds(y, prob, g, t, n_boot=300, seed=5) for g in (a, b)]
    np.testing.assert_array_equal(bounds[0], bounds[1])


def test_slice_and_patient_intervals_of_an_evaluation_do_not_depend_on_the_key():
    ids, y, prob, patients = _rows()
    cfg = TrainConfig(n_boot=200, ci_seed=3)
    out = [evaluate_predictions(ids, y, prob, _keyed(patients, k), 0.5, cfg) for k in (b"build one", b"build two")]
    assert out[0]["intervals"] == out[1]["intervals"]
    assert out[0]["patient"]["intervals"] == out[1]["patient"]["intervals"]
    assert out[0]["patient"]["metrics"] == out[1]["patient"]["metrics"]
    first = out[0]["_patients"]["patient"].tolist()
    assert first == list(dict.fromkeys(_keyed(patients, b"build one")))  # the patient table: order of first appearance
