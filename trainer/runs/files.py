"""A run folder's layout, defined once: its name (``run_YYYYMMDD_HHMMSS_<cv|final>``) and the names
of the files in it. Every writer (:mod:`trainer.cv`, :mod:`trainer.final`, the report) and every
reader (:func:`trainer.load_run`, ``trainer runs``, ``trainer predict``) uses these constants; what
each file holds is in docs/runs.md.
"""

from __future__ import annotations

import re

# -- both kinds ---------------------------------------------------------------------------------
RUN_ARGS = "run_args.json"                  #: the command line (a final run: its cv run and store)
EFFECTIVE_CONFIG = "effective_config.json"  #: the resolved config (:meth:`trainer.config.TrainConfig.to_dict`)
STORE = "store.json"                        #: the store's path, fingerprint and the environment
REPORT = "report.html"                      #: the audit page (:mod:`trainer.report.html`)

# -- a cv run -----------------------------------------------------------------------------------
SPLIT = "split.csv"
GRID_RESULTS = "grid_results.csv"
CV_OOF_PREDICTIONS = "cv_oof_predictions.csv"
CV_OOF_PATIENT_PREDICTIONS = "cv_oof_patient_predictions.csv"
CV_HISTORIES = "cv_histories.csv"
CV_HISTORY_PLOT = "cv_history.png"
CV_THRESHOLDS_BY_FOLD = "cv_thresholds_by_fold.csv"
CV_THRESHOLDS_SUMMARY = "cv_thresholds_summary.csv"
CV_MEAN_ROC = "cv_mean_roc.png"
CV_MEAN_PR = "cv_mean_pr.png"
CV_CALIBRATION_PLOT = "cv_calibration.png"
THRESHOLD_SELECTION = "threshold_selection.json"  #: the latest selection: what `trainer final` uses
THRESHOLD_HISTORY = "threshold_history.csv"        #: every selection of the run (`trainer cv`, `trainer threshold`)
THRESHOLD_HISTORY_DIR = "threshold_history"        #: a copy of each selection (:func:`threshold_history_selection`)
CV_METRICS = "cv_metrics.json"
LABEL_REVIEW = "label_review.csv"                  #: the OOF labels ranked by how suspect they are (cleanlab)

# -- a final run --------------------------------------------------------------------------------
FINAL_MODEL = "final_model.pt"
FINAL_HISTORY = "final_history.csv"
TEST_PREDICTIONS = "test_predictions.csv"
TEST_PATIENT_PREDICTIONS = "test_patient_predictions.csv"
TEST_METRICS = "test_metrics.json"
TEST_ROC = "test_roc_curve.png"
TEST_PR = "test_pr_curve.png"
TEST_CONFUSION = "test_confusion.png"
TEST_CALIBRATION_PLOT = "test_calibration.png"
MODEL_CARD = "model_card.json"
SHIFT_REFERENCE = "shift_reference.json"    #: the training data's feature ranges and thresholds (:mod:`trainer.shift`)
SHIFT_EMBEDDING = "shift_embedding.npz"     #: the embedding's class means and per-class precision matrices (no images)
SHIFT_SCORES = "shift_scores.csv"           #: the shift check of the training, holdout and test rows
SHIFT_PLOT = "test_shift.png"               #: the test rows against the reference (report.html)


def preprocessing_examples(label: int) -> str:
    """``preprocessing_examples_label{0,1}.png`` of a cv run: what the network sees, per class."""
    return f"preprocessing_examples_label{label}.png"


def threshold_history_selection(n: int) -> str:
    """``threshold_history/threshold_selection_<n>.json``: a cv run's n-th threshold selection (1-based), relative to the run."""
    return f"{THRESHOLD_HISTORY_DIR}/threshold_selection_{int(n)}.json"


#: Files without which a run of that kind is not complete (the default of ``load_run(require=...)``).
REQUIRED: dict[str, tuple[str, ...]] = {
    "cv": (RUN_ARGS, EFFECTIVE_CONFIG, STORE, SPLIT, CV_OOF_PREDICTIONS, THRESHOLD_SELECTION, CV_METRICS),
    "final": (RUN_ARGS, EFFECTIVE_CONFIG, STORE, TEST_PREDICTIONS, TEST_METRICS, MODEL_CARD),
}

#: A run folder's name: ``run_<YYYYMMDD_HHMMSS>_<kind>``, with ``_2``, ``_3``... when that name was taken.
RUN_NAME = re.compile(r"^run_(\d{8}_\d{6})_(cv|final)(?:_\d+)?$")
#: Folders of an outputs folder that are not runs: MLflow's local store (:mod:`trainer.runs.tracking`).
MLRUNS = "mlruns"
#: The time stamp's format in :data:`RUN_NAME`.
STAMP_FORMAT = "%Y%m%d_%H%M%S"


def run_dir_name(stamp: str, kind: str) -> str:
    """``run_<stamp>_<kind>`` (:data:`RUN_NAME` without the suffix)."""
    return f"run_{stamp}_{kind}"
