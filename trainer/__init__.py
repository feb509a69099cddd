"""The trainer: cross-validation, the final model, prediction and reports from a neurocache store.

The pipeline, module by module: :mod:`~trainer.config` (one validated ``TrainConfig``) ->
:mod:`~trainer.data` (the store's slices on the device, ``SliceSource``) -> :mod:`~trainer.split`
(test set, folds, holdouts) -> :mod:`~trainer.transforms` / :mod:`~trainer.affine` (batched window,
resize, augmentation) -> :mod:`~trainer.model` and :mod:`~trainer.loops` (ResNet18, two-stage
training) -> :mod:`~trainer.cv` / :mod:`~trainer.final` (the ``cv`` and ``final`` commands, each
writing its run folder) -> :mod:`trainer.evaluation` (every reported number) ->
:mod:`trainer.runs` (the run folder: its file names, typed JSON results, reading back, the runs
table, MLflow) -> :mod:`trainer.report` (figures and report.html); :mod:`~trainer.predict` scores
new files with a final run. :mod:`~trainer.cli` only parses the command line and calls them.

Python API::

    run = trainer.load_run("outputs/run_20260101_120000_cv")   # a cv or a final run folder
    run.config, run.split, run.oof, run.test, run.metrics       # dicts and DataFrames (None when absent)
    run.train_config                                            # the config as a TrainConfig
"""
from __future__ import annotations

from typing import Any

__all__ = ["load_run"]


def __getattr__(name: str) -> Any:
    # ``trainer.load_run`` without importing pandas on ``import trainer``
    if name in ("load_run", "Run", "RunError"):
        from trainer.runs import folder

        return getattr(folder, name)
    raise AttributeError(f"module 'trainer' has no attribute {name!r}")
