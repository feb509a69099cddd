"""Shared fixtures: a small synthetic dataset and its store, built once per test session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from _tiny_runs import TINY_PREP

from neurocache.build import build_store
from neurocache.config import PrepConfig
from neurocache.synth import generate_dataset

# Small enough for 2 CPU cores: 8 patients x 6 slices at 128 px, cached at 64 px.
SMALL_PREP = PrepConfig(**TINY_PREP)
HASH_KEY = bytes(range(16))


def _dataset(root: Path, patients: int, slices: int, seed: int) -> Path:
    generate_dataset(root, patients=patients, slices_per_patient=slices, size=128, positive_frac=0.4, seed=seed)
    return root


def _store(data: Path, store: Path) -> Path:
    build_store(data, store, cfg=SMALL_PREP, workers=1, progress=False, hash_key=HASH_KEY)
    return store


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    return _dataset(tmp_path_factory.mktemp("synth"), 8, 6, seed=7)


@pytest.fixture(scope="session")
def synth_store(synth_data, tmp_path_factory) -> Path:
    return _store(synth_data, tmp_path_factory.mktemp("stores") / "small.zarr")


@pytest.fixture(scope="session")
def trainer_data(tmp_path_factory) -> Path:
    """The trainer tests' dataset: 16 patients x 4 slices at 128 px (as synth_data).

    More patients than ``synth_data`` so that every CV fold can carve its inner, patient-grouped
    early-stopping/calibration holdout (``cv_early_stopping: inner_holdout``) with both classes.
    """
    return _dataset(tmp_path_factory.mktemp("trainer_synth"), 16, 4, seed=11)


@pytest.fixture(scope="session")
def trainer_store(trainer_data, tmp_path_factory) -> Path:
    """``trainer_data`` cached at 64 px."""
    return _store(trainer_data, tmp_path_factory.mktemp("trainer_stores") / "trainer.zarr")


@pytest.fixture
def data_copy(synth_data, tmp_path) -> Path:
    """A writable copy of the synthetic dataset."""
    dst = tmp_path / "data"
    shutil.copytree(synth_data, dst)
    return dst
