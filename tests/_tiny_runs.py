"""One tiny cv run and its final run, made once per test session for the evaluation/report/predict tests.

Not a test module (no ``test_`` prefix): ``test_report_html.py`` and ``test_predict.py`` call
:func:`tiny_runs` from their own fixtures; the runs are cached in this module, so the second
caller reuses the first caller's folders.
"""

from __future__ import annotations

from pathlib import Path

import yaml

TINY = {
    "preprocess": {"size": 64, "shard_size": 16},
    "k_folds": 2, "test_size": 0.3, "out_size": 32, "batch_size": 8, "eval_batch_size": 32,
    "epochs_head": 1, "epochs_ft": 1, "holdout_frac": 0.4, "prep_plot_n": 1, "threads": 2,
    "n_boot": 200, "gallery_n": 3,
    "pool": "max",  # predict must rebuild the run's pooling (test_predict.py checks the rebuilt model)
}

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
