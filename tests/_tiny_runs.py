"""The tiny trainer config, defined once, and one tiny cv run and its final run, made once per test
session for the evaluation/report/predict tests.

Not a test module (no ``test_`` prefix): test modules import :data:`TINY_BASE` (and extend it with
the keys they test), :data:`TINY`, :data:`TINY_VAL_FOLD`, :data:`TINY_PREP`; ``test_report_html.py``
and ``test_predict.py`` call :func:`tiny_runs` from their own fixtures; the runs are cached in this
module, so the second caller reuses the first caller's folders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

#: The test stores' preprocessing (``conftest.SMALL_PREP``): 64 px, shards of 16 slices.
TINY_PREP: dict[str, Any] = {"size": 64, "shard_size": 16}
#: ``--set`` items of :data:`TINY_PREP` (``preprocess.size=64``, ...), for ``load_config(sets=[...])``.
TINY_PREP_SETS: list[str] = [f"preprocess.{k}={v}" for k, v in TINY_PREP.items()]

#: The tiny trainer config: 2 folds, 32 px input, one epoch per stage, on the 64 px test stores.
TINY_BASE: dict[str, Any] = {
    "preprocess": TINY_PREP,
    "k_folds": 2, "test_size": 0.3, "out_size": 32, "batch_size": 8, "eval_batch_size": 32,
    "epochs_head": 1, "epochs_ft": 1, "holdout_frac": 0.4, "prep_plot_n": 1,
}

#: :func:`tiny_runs`' config.
TINY: dict[str, Any] = {
    **TINY_BASE, "threads": 2, "n_boot": 200, "gallery_n": 3,
    "pool": "max",  # predict must rebuild the run's pooling (test_predict.py checks the rebuilt model)
}

#: On the 8-patient ``synth_store``: too small for inner holdouts, so the folds early-stop on their validation
#: fold (tests/test_trainer_e2e.py covers inner_holdout).
TINY_VAL_FOLD: dict[str, Any] = {**TINY_BASE, "threads": 1, "device": "cpu", "cv_early_stopping": "val_fold"}

_CACHE: dict[str, dict[str, Path]] = {}


def tiny_runs(store: Path, root: Path) -> dict[str, Path]:
    """``{"cv": cv run folder, "final": final run folder, "store": store, "config": yaml}``."""
    key = str(store)
    if key in _CACHE:
        return _CACHE[key]
    from trainer.cli import main

    root.mkdir(parents=True, exist_ok=True)
    cfg = root / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    out = root / "out"
    assert main(["cv", "--store", str(store), "--config", str(cfg), "--out", str(out), "--quiet"]) == 0
    cv = sorted(out.glob("run_*_cv*"))[-1]
    assert main(["final", "--cv-run", str(cv), "--out", str(out), "--quiet"]) == 0
    final = sorted(out.glob("run_*_final*"))[-1]
    _CACHE[key] = {"cv": cv, "final": final, "store": Path(store), "config": cfg}
    return _CACHE[key]
