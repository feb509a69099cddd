"""``trainer threshold``: choose a finished cv run's operating point again, from its saved out-of-fold
predictions, in seconds -- no model is trained or scored.

Reads the cv run's ``cv_oof_predictions.csv``, ``split.csv``, ``cv_metrics.json`` and
``effective_config.json`` with the command's overrides (``--threshold-strategy``, ``--sens-target``,
``--sens-confidence``, ``--set key=value`` of the selection and evaluation keys only:
:data:`CHANGEABLE`; a training key would make the config disagree with the folds that were trained),
and makes the operating point with :func:`trainer.selection.choose`, the code ``trainer cv`` runs: the
same policy on the same run gives the same ``threshold_selection.json``.

Rewrites, through the writers ``trainer cv`` uses (:mod:`trainer.selection`,
:func:`trainer.runs.write.write_config`): ``cv_thresholds_by_fold.csv``, ``cv_thresholds_summary.csv``,
``threshold_selection.json`` (the earlier selections stay as
``threshold_history/threshold_selection_<n>.json``, listed in ``threshold_history.csv``),
``cv_oof_patient_predictions.csv``, ``cv_calibration.png``, ``cv_metrics.json`` (threshold, warnings
and the OOF evaluation; the fold results and the wall time of the cv stay), ``effective_config.json``
(the changed keys) and ``report.html``. ``trainer final`` then uses the new threshold. Final runs made
earlier keep theirs (their ``model_card.json``). Nothing is written when the selection fails.

The patient keys (the bootstrap unit) are the split's group column when the split grouped by
patient, as ``trainer cv`` had them from the store; with ``group_by`` study/series/none, or
``patient_aggregation: pair`` (the series links), the store's feature table is read for them
(``--store``, default the run's ``store.json`` path; its fingerprint must be the run's).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from neurocache.config import ConfigError
from trainer.config import TrainConfig, parse_set
from trainer.evaluation import EVAL_KEYS
from trainer.runs import files as F
from trainer.runs.folder import Run, RunError, load_run, run_kind
from trainer.runs.results import CVResult
from trainer.runs.write import write_config
from trainer.selection import (
    choose,
    read_history,
    result_fields,
    say_results,
    train_aucs,
    write_cv_metrics,
    write_operating_point,
)

__all__ = ["CHANGEABLE", "SELECTION_KEYS", "threshold_command"]

#: The config keys that choose the threshold.
SELECTION_KEYS: tuple[str, ...] = ("threshold_strategy", "sens_target", "sens_confidence", "threshold_pooling",
                                   "threshold_candidates", "threshold_step")
#: The keys ``trainer threshold`` may change: the selection's and the OOF evaluation's.
CHANGEABLE: tuple[str, ...] = SELECTION_KEYS + tuple(EVAL_KEYS)
_NEEDS = (F.EFFECTIVE_CONFIG, F.STORE, F.SPLIT, F.CV_OOF_PREDICTIONS, F.THRESHOLD_SELECTION, F.CV_METRICS)


def overrides(flags: Mapping[str, Any] | None = None, sets: list[str] | None = None) -> dict[str, Any]:
    """The command's config overrides: the flags that are not None, then ``--set`` items.

    Raises:
        ConfigError: a key outside :data:`CHANGEABLE` (the message names it and the keys allowed).
    """
    over = {k: v for k, v in (flags or {}).items() if v is not None}
    over.update(parse_set(sets))
    bad = sorted(k for k in over if k not in CHANGEABLE)
    if bad:
        raise ConfigError(f"trainer threshold changes only how the threshold is chosen and the OOF evaluation; "
                          f"{', '.join(bad)} would change how the fold models were made: run `trainer cv` with it. "
                          f"Keys it takes: {', '.join(CHANGEABLE)}")
    return over


def _patient_links(run: Run, cfg: TrainConfig, store: str | None) -> tuple[dict[str, str] | None, dict[str, str] | None]:
    """(ID -> patient key, ID -> next slice's ID) as ``trainer cv`` had them; (None, None) where the split has them."""
    if cfg.group_by == "patient" and cfg.patient_aggregation != "pair":
        return None, None  # the split's group column is the patient key (trainer.data.group_keys)
    from neurocache.store import open_store
    from trainer.data import group_keys, next_slice_ids

    path = store or run.store.get("path")
    if not path:
        raise RunError(f"{run.path}: {F.STORE} names no store; pass --store (the store the cv run used)")
    opened = open_store(path, expect=cfg.prep)
    if opened.fingerprint != run.store.get("fingerprint"):
        raise RunError(f"store {path} has fingerprint {opened.fingerprint[:12]}… but the cv run used "
                       f"{str(run.store.get('fingerprint'))[:12]}…: pass the cv run's store with --store")
    table = opened.ok_rows()
    return dict(zip(table["ID"].astype(str), group_keys(table, "patient"))), next_slice_ids(table)


def threshold_command(
    cv_run: str | Path, *, flags: Mapping[str, Any] | None = None, sets: list[str] | None = None,
    store: str | None = None, report: bool = True,
) -> dict[str, Any]:
    """``python -m trainer threshold --cv-run RUN ...``: re-select and rewrite (see the module docstring).

    Args:
        cv_run: the cv run folder.
        flags: ``{"threshold_strategy", "sens_target", "sens_confidence"}`` from the command line (None: keep).
        sets: ``--set key=value`` items (keys of :data:`CHANGEABLE`).
        store: the store for the patient keys where the split lacks them (default: the run's).
        report: rewrite ``report.html``.

    Returns:
        The new ``threshold_selection.json``.

    Raises:
        RunError: not a complete cv run. ConfigError: a key it may not change, or a bad value.
        ThresholdUnreachableError: the target (or its lower bound) cannot be reached; nothing is written.
    """
    t0 = time.perf_counter()
    if Path(cv_run).is_dir() and run_kind(cv_run) != "cv":
        raise RunError(f"{cv_run} is a final run, not a cv run: pass the cv run it was made from")
    run = load_run(cv_run, require=_NEEDS)
    cfg = run.train_config.with_overrides(overrides(flags, sets))
    oof = pd.read_csv(run.path / F.CV_OOF_PREDICTIONS, dtype={"ID": str})
    split = run.split if run.split is not None else pd.DataFrame()
    metrics = CVResult.from_dict(run.cv_metrics or {})
    patients, next_ids = _patient_links(run, cfg, store)
    op = choose(oof, split, cfg, train_auc=train_aucs(metrics.per_fold), patients=patients, next_ids=next_ids)
    write_operating_point(run.path, op, oof, cfg, command="threshold")
    m = dataclasses.replace(metrics, **result_fields(op, metrics.stuck_folds))
    write_cv_metrics(run.path, m)
    write_config(run.path, cfg)
    say_results(m, op.selection)
    n = len(read_history(run.path))
    print(f"threshold: selection {n} of {run.path} in {time.perf_counter() - t0:.1f} s: {F.THRESHOLD_SELECTION} "
          f"(`trainer final` uses it); every selection in {F.THRESHOLD_HISTORY} and {F.THRESHOLD_HISTORY_DIR}/")
    if report:
        from trainer.report.html import write_run_report

        write_run_report(run.path, m.wall_seconds)
    return op.selection
