"""Everything measured about a set of predictions, computed once here and read by the CLI, the
run folder's JSON files and the report.

Modules, in pipeline order:

* :mod:`~trainer.evaluation.metrics` -- confusion counts and rates at a threshold, threshold tables.
* :mod:`~trainer.evaluation.curves` -- per-fold ROC/PR curves on a common grid and their mean AUCs.
* :mod:`~trainer.evaluation.thresholds` -- CV threshold tables and the threshold selection.
* :mod:`~trainer.evaluation.intervals` -- Wilson, DeLong and patient-bootstrap intervals.
* :mod:`~trainer.evaluation.reliability` -- reliability table, calibration slope/intercept.
* :mod:`~trainer.evaluation.calibrators` -- the post-hoc probability maps (platt, temperature, isotonic).
* :mod:`~trainer.evaluation.patient` -- slice -> patient aggregation.
* :mod:`~trainer.evaluation.fold_health` -- folds whose model did not learn.
* :mod:`~trainer.evaluation.promise` -- CV's promise beside the test's delivery.
* :mod:`~trainer.evaluation.evaluate` -- all of the above for the OOF or the test predictions.
"""

from trainer.evaluation.evaluate import (
    EVAL_KEYS,
    eval_settings,
    evaluate_predictions,
    oof_evaluation,
    public,
)

__all__ = ["EVAL_KEYS", "eval_settings", "evaluate_predictions", "oof_evaluation", "public"]
