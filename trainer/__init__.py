"""The trainer: cross-validation, the final model, prediction and reports from a neurocache store.

Python API::

    run = trainer.load_run("outputs/run_20260101_120000_cv")   # a cv or a final run folder
    run.config, run.split, run.oof, run.test, run.metrics       # dicts and DataFrames (None when absent)
"""
from __future__ import annotations

from typing import Any

__all__ = ["load_run"]


def __getattr__(name: str) -> Any:
    # ``trainer.load_run`` without importing pandas on ``import trainer``
    if name in ("load_run", "Run", "RunError"):
        from trainer import run_folder

        return getattr(run_folder, name)
    raise AttributeError(f"module 'trainer' has no attribute {name!r}")
