"""Typed results of a run, written as its JSON files and read back by the CLI, the report and ``final``.

* :class:`FoldResult` -- one fold model (``cv_metrics.json["per_fold"][k]``).
* :class:`CVResult` -- ``cv_metrics.json``.
* :class:`TestResult` -- ``test_metrics.json``.

``to_dict()`` gives the JSON object, key for key and in order, as the run folders have always held
it; ``from_dict()`` reads one back (keys a run does not have stay None, so a misspelt or renamed
key is an ``AttributeError``, not a silent "—"). The nested evaluation blocks (intervals,
calibration, patient level; :func:`trainer.evaluation.evaluate_predictions`) stay plain JSON.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CVResult", "FoldResult", "TestResult"]


def _known(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in d.items() if k in names}


@dataclass(frozen=True)
class FoldResult:
    """One fold model of the cross-validation (:func:`trainer.cv.run_fold`).

    Attributes:
        fold: the fold scored (0-based).
        early_stopping: ``inner_holdout`` | ``val_fold``: the rows it early-stopped and was calibrated on.
        best_val_auprc: best early-stopping AUPRC (on those rows).
        holdout_auc: ROC-AUC on those rows.
        val_auc, val_ap: ROC-AUC / AUPRC of the validation fold, scored once (calibrated scores).
        train_auc: ROC-AUC on its fit rows.
        n_train, n_holdout, n_val: rows it was fitted on, stopped on (0 for ``val_fold``), scored.
        calibration: the fitted calibrator (:meth:`trainer.evaluation.calibrators.Calibrator.to_dict`).
        seconds: wall time of the fold [s]; device: where it ran.
    """

    fold: int
    early_stopping: str | None = None
    best_val_auprc: float | None = None
    holdout_auc: float | None = None
    val_auc: float | None = None
    val_ap: float | None = None
    train_auc: float | None = None
    n_train: int | None = None
    n_holdout: int | None = None
    n_val: int | None = None
    calibration: dict[str, Any] | None = None
    seconds: float | None = None
    device: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON record (fields that were never set are left out)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FoldResult:
        return cls(**_known(cls, d))


@dataclass(frozen=True)
class CVResult:
    """``cv_metrics.json``: the fold models, their mean curves and the OOF evaluation at the threshold.

    Attributes:
        k_folds, early_stopping, calibration: the CV's settings.
        per_fold: one :class:`FoldResult` per fold.
        best_val_auprc_mean, best_val_auprc_std: of the folds' best early-stopping AUPRC.
        oof_auc_mean, oof_auc_std, oof_ap_mean, oof_ap_std: mean and sample std over folds of the
            validation folds' ROC-AUC / AUPRC (:mod:`trainer.evaluation.curves`).
        n_train_pool, n_test: rows of the training pool and of the (untouched) test set.
        threshold, threshold_strategy, threshold_pooling: the selected threshold and how.
        stuck_folds: ``{"fold", "why", ...}`` of folds that did not learn.
        warnings: every warning of the CV.
        oof: pooled OOF evaluation (``what``, ``metrics``, ``evaluation``, ``intervals``,
            ``calibration``, ``operating_points``, ``patient``; :func:`trainer.evaluation.oof_evaluation`).
        wall_seconds: the command's wall time [s] (None until the CLI sets it).
    """

    k_folds: int
    early_stopping: str
    calibration: str
    per_fold: list[FoldResult]
    best_val_auprc_mean: float
    best_val_auprc_std: float
    oof_auc_mean: float | None
    oof_auc_std: float | None
    oof_ap_mean: float | None
    oof_ap_std: float | None
    n_train_pool: int
    n_test: int
    threshold: float
    threshold_strategy: str
    threshold_pooling: str
    stuck_folds: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    oof: dict[str, Any] | None = None
    wall_seconds: float | None = None

    @property
    def oof_metrics(self) -> dict[str, Any]:
        """Pooled OOF threshold metrics (``sens``, ``spec``, ``ppv``, ``npv``, ...); {} without an evaluation."""
        return (self.oof or {}).get("metrics") or {}

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["per_fold"] = [f.to_dict() for f in self.per_fold]
        if self.oof is None:
            del d["oof"]
        if self.wall_seconds is None:
            del d["wall_seconds"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CVResult:
        """Read ``cv_metrics.json`` (missing keys stay None)."""
        names = [f.name for f in dataclasses.fields(cls)]
        kw: dict[str, Any] = {k: d.get(k) for k in names}
        kw["per_fold"] = [FoldResult.from_dict(f) for f in d.get("per_fold") or []]
        kw["stuck_folds"] = list(d.get("stuck_folds") or [])
        kw["warnings"] = list(d.get("warnings") or [])
        return cls(**kw)


#: Keys of :func:`trainer.evaluation.metrics.binary_metrics`, flat at the top of ``test_metrics.json``.
_TEST_TAIL = ("confusion", "holdout_best_auprc", "holdout_auc", "calibration", "n_train", "n_holdout", "n_test",
              "warnings", "evaluation", "intervals", "operating_points", "patient", "promised", "wall_seconds")


@dataclass(frozen=True)
class TestResult:
    """``test_metrics.json``: the final model's one scoring of the held-out test.

    Attributes:
        metrics: :func:`trainer.evaluation.metrics.binary_metrics` of the test slices at the cv
            run's threshold (``tp``, ``fp``, ``tn``, ``fn``, ``sens``, ``spec``, ``ppv``, ``npv``,
            ``f1``, ``acc``, ``auc``, ``ap``, ``n``, ``n_pos``, ``prevalence``, ``threshold``);
            flat at the top of the JSON.
        confusion: ``tp, fp, tn, fn``.
        holdout_best_auprc, holdout_auc: on the final model's early-stopping/calibration holdout.
        calibration: the test's calibration summary (:func:`trainer.evaluation.reliability.calibration_summary`;
            the fitted calibrator when the test set is empty).
        n_train, n_holdout, n_test: rows.
        warnings: every warning of the final run.
        evaluation: the evaluation settings; intervals, operating_points, patient: as in
            :func:`trainer.evaluation.evaluate_predictions` (None for an empty test set).
        promised: CV's promise beside the test's delivery (:func:`trainer.evaluation.promise.promise_vs_delivery`).
        wall_seconds: the command's wall time [s].
    """

    __test__ = False  # not a pytest test class

    metrics: dict[str, Any]
    confusion: dict[str, int]
    holdout_best_auprc: float
    holdout_auc: float
    calibration: dict[str, Any]
    n_train: int
    n_holdout: int
    n_test: int
    warnings: list[str] = field(default_factory=list)
    evaluation: dict[str, Any] | None = None
    intervals: dict[str, Any] | None = None
    operating_points: list[dict[str, Any]] | None = None
    patient: dict[str, Any] | None = None
    promised: dict[str, Any] | None = None
    wall_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.metrics)
        for k in _TEST_TAIL:
            v = getattr(self, k)
            if v is not None or k in ("holdout_best_auprc", "holdout_auc"):
                d[k] = v
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TestResult:
        """Read ``test_metrics.json`` (missing keys stay None)."""
        kw: dict[str, Any] = {k: d.get(k) for k in _TEST_TAIL}
        kw["warnings"] = list(d.get("warnings") or [])
        kw["metrics"] = {k: v for k, v in d.items() if k not in _TEST_TAIL}
        return cls(**kw)
