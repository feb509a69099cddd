"""``trainer cv``: the command and its run folder, end to end -- checks, split, (grid), K-fold
cross-validation, threshold tables and selection; every file of the cv run folder is written from here, once.

:func:`run_cv` runs the cheap local checks first (tracking settings, the store: path, schema,
completeness, preprocessing; the device), then the slow or networked ones (the ImageNet weights,
the Dask cluster), and only then makes the run folder. The folds themselves are
:mod:`trainer.folds`. Everything is chosen on the training pool only; test rows are flagged in
``split.csv`` and never touched here.

Files (names in :mod:`trainer.runs.files`), in the order written: ``run_args.json``, ``store.json``
(with ``labels_hash``: the labels the run used, which ``trainer final`` checks), ``split.csv``,
``preprocessing_examples_label{0,1}.png``, ``grid_results.csv`` (``--run-grid``),
``effective_config.json`` (with a grid: the chosen candidate), ``cv_oof_predictions.csv``,
``cv_histories.csv``, the mean ROC/PR and history figures, then the operating point through
:mod:`trainer.selection` (whose writers ``trainer threshold`` calls too): ``cv_thresholds_by_fold.csv``,
``cv_thresholds_summary.csv``, ``threshold_selection.json`` (and its copy in ``threshold_history/``,
a row of ``threshold_history.csv``), ``cv_oof_patient_predictions.csv``, ``cv_calibration.png``,
``cv_metrics.json`` (with the command's wall time); ``label_review.csv``, ``report.html``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from neurocache.config import ConfigError, load_yaml
from neurocache.relabel import labels_hash
from trainer.config import TrainConfig
from trainer.data import SliceSource, group_keys, load_dataset, next_slice_ids, open_store_for, setup_device
from trainer.evaluation.curves import mean_pr, mean_roc
from trainer.evaluation.fold_health import stuck_folds
from trainer.folds import CVFolds, FoldRunnerFn, collect_folds, fold_ids, run_folds, split_table
from trainer.progress import EpochBar
from trainer.report.history import plot_histories
from trainer.report.plots import plot_mean_pr, plot_mean_roc
from trainer.runs import files as F
from trainer.runs.results import CVResult
from trainer.runs.tracking import check_tracking, track
from trainer.runs.folder import read_json
from trainer.runs.write import environment, new_run_dir, write_config, write_json
from trainer.selection import (
    choose,
    result_fields,
    say_results,
    threshold_tables,
    train_aucs,
    write_cv_metrics,
    write_operating_point,
)

if TYPE_CHECKING:
    import torch

    from neurocache.store import Store


def run_cv(
    store: str, cfg: TrainConfig, *, out: str | Path, grid: list[dict[str, Any]] | None = None,
    scheduler: str | None = None, fold_resources: str = "GPU=1", quiet: bool = False,
    run_args: dict[str, Any] | None = None, started: float | None = None,
) -> Path:
    """``python -m trainer cv``: check, cross-validate (each candidate of ``grid``), write the run folder.

    Args:
        store: the store, a folder or an fsspec URL (``--store``).
        cfg: the resolved config (:func:`trainer.config.load_config`).
        out: the folder for run folders; the run is ``out/run_YYYYMMDD_HHMMSS_cv``.
        grid: ``--run-grid`` candidates (:func:`load_grid`); the best mean CV AUPRC is kept.
        scheduler: a Dask scheduler address or scheduler-file: one task per fold there.
        fold_resources: worker resources per fold task (``--fold-resources``; with ``scheduler`` only).
        quiet: no progress bars.
        run_args: what ``run_args.json`` records (the command line).
        started: ``time.perf_counter()`` when the command started (default: now), for the wall time.

    Returns:
        The run folder.

    Raises:
        neurocache.errors.UserError: a bad config, store, device, weights, cluster or split (the
            CLI prints its message); nothing is written before the checks pass.
    """
    t0 = time.perf_counter() if started is None else started
    check_tracking(cfg)
    opened = open_store_for(store, cfg)  # a missing or wrong store: said before any download
    device = setup_device(cfg)
    resources = _parse_resources(fold_resources) if scheduler else {}
    from trainer.model import check_weights

    for weights in {cfg.weights, *(str(c["weights"]) for c in grid or [] if "weights" in c)}:
        check_weights(weights)  # offline without the ImageNet file: fail now, not after the split
    client = None
    if scheduler:
        from trainer.distributed import connect

        client = connect(scheduler)
    try:
        if client is not None:
            from trainer.distributed import check_workers

            check_workers(client, resources)
        return _cross_validate(store, opened, cfg, device, out=out, grid=grid, cluster=(client, resources, scheduler),
                               quiet=quiet, run_args=run_args or {}, started=t0)
    finally:
        if client is not None:
            client.close()


def _parse_resources(spec: str) -> dict[str, float]:
    from trainer.distributed import parse_resources

    return parse_resources(spec)


def _cross_validate(
    store: str, opened: Store, cfg: TrainConfig, device: torch.device, *, out: str | Path,
    grid: list[dict[str, Any]] | None, cluster: tuple[Any, dict[str, float], str | None], quiet: bool,
    run_args: dict[str, Any], started: float,
) -> Path:
    """The run itself, once every check has passed: the run folder, file by file (see the module docstring)."""
    from trainer.distributed import FoldRunner, store_address
    from trainer.precision import resolve_precision

    client, resources, scheduler = cluster
    cfg = cfg.with_overrides({"precision": resolve_precision(cfg.amp, device)})  # fold and final models train alike
    run = new_run_dir(out, "cv")
    write_json(run / F.RUN_ARGS, run_args)
    data = load_dataset(str(store), cfg, device, store=opened)
    write_json(run / F.STORE, {"path": store_address(store), "fingerprint": data.store.fingerprint,
                               "n_ok": len(data.table), "labels_hash": labels_hash(data.table),  # what final checks
                               "environment": environment(device)})
    split = split_table(data, cfg)
    split.to_csv(run / F.SPLIT, index=False)
    _plot_examples(run, data, split, cfg)
    runner = None if client is None else FoldRunner(client, store_address(store), split, resources=resources)
    where = f"{device}" if runner is None else f"the Dask cluster {scheduler} (resources {resources or 'none'} per fold)"
    print(f"cv: {len(data.table)} slices ({int(data.labels.sum())} positive), {len(set(data.groups))} groups by "
          f"{cfg.group_by}; train pool {int((~split['test']).sum())}, test {int(split['test'].sum())}; {cfg.k_folds} "
          f"folds on {where} in {cfg.precision} (amp: {cfg.amp}); run {run}", file=sys.stderr)
    bar = lambda desc: EpochBar(desc, cfg.total_epochs, quiet)
    if grid:
        table, cfg, res = run_grid(data, split, cfg, grid, progress=bar, runner=runner)
        table.to_csv(run / F.GRID_RESULTS, index=False)
    else:
        res = run_folds(data, split, cfg, progress=bar, runner=runner)
    write_config(run, cfg)  # with a grid, the chosen candidate: what final will use
    patients = dict(zip(data.table["ID"].astype(str), group_keys(data.table, "patient")))
    m = write_cv_outputs(run, split, res, cfg, patients=patients, next_ids=next_slice_ids(data.table), started=started)
    say_results(m, read_json(run / F.THRESHOLD_SELECTION))
    from trainer.report.html import write_run_report

    write_run_report(run, m.wall_seconds)
    track(run)
    print(f"run folder: {run}")
    return run


def _plot_examples(run: Path, data: SliceSource, split: pd.DataFrame, cfg: TrainConfig) -> None:
    """``preprocessing_examples_label{0,1}.png``: training-pool slices of each class as the network sees them."""
    from trainer.report.examples import plot_examples
    from trainer.transforms import make_transform

    pool = np.flatnonzero(~split["test"].to_numpy())
    tf = make_transform(cfg)
    for label in (0, 1):
        plot_examples(data, pool, label, cfg.prep_plot_n, tf, run / F.preprocessing_examples(label), cfg.seed)


def summarise(result: CVFolds, cfg: TrainConfig) -> dict[str, Any]:
    """Threshold tables over the OOF predictions (:func:`trainer.selection.threshold_tables`) and the
    per-fold metric summary.

    ``oof_ap_mean`` (mean over folds of the validation folds' AUPRC, each scored once) is what
    a grid ranks candidates by; ``best_mean`` is the mean best early-stopping AUPRC.
    """
    by_fold, summary = threshold_tables(result.oof, cfg, train_aucs(result.folds))
    best = np.array([f.best_val_auprc for f in result.folds], dtype=float)
    fold_ap = by_fold.groupby("fold")["ap"].first().to_numpy(dtype=float)
    return {"by_fold": by_fold, "summary": summary, "best_mean": float(np.mean(best)),
            "best_std": float(np.std(best, ddof=1)) if len(best) > 1 else float("nan"),
            "oof_ap_mean": float(np.nanmean(fold_ap)),
            "oof_ap_std": float(np.nanstd(fold_ap, ddof=1)) if len(fold_ap) > 1 else float("nan")}


def load_grid(path: str | Path) -> list[dict[str, Any]]:
    """Candidates of ``configs/grid.yaml``: ``candidates: [ {key: value, ...}, ... ]``.

    Raises:
        ConfigError: a missing file, invalid YAML, or no list of candidate mappings (the message names the file).
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"grid file {p} does not exist")
    cands = load_yaml(p).get("candidates")
    if not isinstance(cands, list) or not cands or not all(isinstance(c, dict) for c in cands):
        raise ConfigError(f"{path}: expected `candidates:` with a list of mappings of config overrides")
    return cands


def run_grid(
    data: SliceSource, split: pd.DataFrame, cfg: TrainConfig, grid: list[dict[str, Any]], *, progress=None,
    runner: FoldRunnerFn | None = None,
) -> tuple[pd.DataFrame, TrainConfig, CVFolds]:
    """Cross-validate every candidate; return the grid table, the best config and its CV result.

    With ``runner`` every candidate x fold is one job, all submitted at once.
    """
    cands = []
    for i, over in enumerate(grid):
        if "preprocess" in over or any(k in over for k in ("seed", "test_size", "k_folds", "group_by")):
            raise ConfigError(f"grid candidate {i} changes the split or preprocessing ({over}); only training keys may vary")
        cands.append(cfg.with_overrides(over))
    if runner is not None:
        ids = fold_ids(split)
        parts = runner([(c, k) for c in cands for k in ids])
        results = [collect_folds(parts[i * len(ids) : (i + 1) * len(ids)]) for i in range(len(cands))]
    else:
        results = [run_folds(data, split, c, progress=progress) for c in cands]
    rows, best = [], None
    for i, (over, c, res) in enumerate(zip(grid, cands, results)):
        s = summarise(res, c)
        # ranked by the validation folds' AUPRC, each fold scored once by a model that never saw it
        rows.append({"candidate": i, **{k: str(v) for k, v in over.items()}, "cv_auprc_mean": s["oof_ap_mean"],
                     "cv_auprc_std": s["oof_ap_std"], "stopping_auprc_mean": s["best_mean"]})
        if best is None or s["oof_ap_mean"] > best[0]:
            best = (s["oof_ap_mean"], c, res)
    return pd.DataFrame(rows), best[1], best[2]


def write_cv_outputs(
    run: Path, split: pd.DataFrame, res: CVFolds, cfg: TrainConfig, *, patients: dict[str, str] | None = None,
    next_ids: dict[str, str] | None = None, started: float | None = None,
) -> CVResult:
    """Write the CV tables, plots, threshold selection and ``cv_metrics.json``; return the metrics.

    ``started``: the command's ``time.perf_counter()`` at its start; ``cv_metrics.json["wall_seconds"]``
    is the time from then to this write (absent without it).

    The operating point (threshold tables, selection, ``cv_metrics.json["oof"]``: the pooled OOF
    evaluation at the selected threshold) is :func:`trainer.selection.choose`, as ``trainer threshold``
    makes it; ``patients`` maps ID -> patient key for the patient bootstrap and aggregation (default:
    the split's group column); ``next_ids`` maps ID -> the next slice's ID (``patient_aggregation: pair``).
    """
    s = summarise(res, cfg)
    res.oof.to_csv(run / F.CV_OOF_PREDICTIONS, index=False)
    res.histories.to_csv(run / F.CV_HISTORIES, index=False)
    roc, pr = mean_roc(res.oof), mean_pr(res.oof)
    plot_mean_roc(roc, run / F.CV_MEAN_ROC)
    plot_mean_pr(pr, run / F.CV_MEAN_PR)
    plot_histories(res.histories, run / F.CV_HISTORY_PLOT)
    op = choose(res.oof, split, cfg, train_auc=train_aucs(res.folds), patients=patients, next_ids=next_ids,
                tables=(s["by_fold"], s["summary"]))
    write_operating_point(run, op, res.oof, cfg, command="cv")
    stuck = stuck_folds([f.to_dict() for f in res.folds])
    metrics = CVResult(
        k_folds=int(cfg.k_folds), early_stopping=cfg.cv_early_stopping, calibration=cfg.calibration,
        per_fold=res.folds, best_val_auprc_mean=s["best_mean"], best_val_auprc_std=s["best_std"],
        oof_auc_mean=roc.mean, oof_auc_std=roc.std, oof_ap_mean=pr.mean, oof_ap_std=pr.std,
        n_train_pool=int((~split["test"]).sum()), n_test=int(split["test"].sum()), stuck_folds=stuck,
        **result_fields(op, stuck), wall_seconds=None if started is None else round(time.perf_counter() - started, 2),
    )
    write_cv_metrics(run, metrics)
    line = write_label_review(run, split, res.oof)
    if line:
        print(line, file=sys.stderr)
    return metrics


def write_label_review(run: Path, split: pd.DataFrame, oof: pd.DataFrame) -> str | None:
    """``label_review.csv``: the OOF slices ranked by how suspect their label is
    (:func:`trainer.evaluation.label_review.label_review` of the calibrated OOF probabilities; group:
    the split's group column). Returns the CV output's line about it; None (nothing written) when the
    OOF predictions hold one class only.
    """
    from trainer.evaluation.label_review import label_review, summary_line

    if oof["label"].nunique() < 2:
        return None
    groups = dict(zip(split["ID"].astype(str), split["group"].astype(str)))
    ids = oof["ID"].astype(str)
    review = label_review(ids, [groups.get(i, i) for i in ids], oof["label"], oof["prob"])
    review.to_csv(run / F.LABEL_REVIEW, index=False)
    return summary_line(review, file=F.LABEL_REVIEW)
