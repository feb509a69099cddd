"""``python -m trainer {cv,final,predict,report,runs}``: cross-validation and the final model, from a neurocache
store; scoring new DICOM files with a final run; the runs' report.html; every run side by side."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainer.config import TrainConfig

EPILOG = """examples:
  python -m trainer cv --store store.zarr --config configs/default.yaml
  python -m trainer cv --store store.zarr --config configs/default.yaml --set lr_ft=1e-4 --set epochs_ft=6
  python -m trainer cv --store store.zarr --config configs/default.yaml --run-grid
  python -m trainer final --cv-run outputs/run_20260101_120000_cv
  python -m trainer predict --run outputs/run_20260101_130000_final new_scans/ one.dcm --out predictions.csv
  python -m trainer report outputs/run_20260101_130000_final
  python -m trainer runs --out outputs --sort cv_auprc --csv runs.csv --plot runs.png
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cv = sub.add_parser("cv", help="split, cross-validate, build threshold tables and pick the threshold",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    cv.add_argument("--store", required=True, help="neurocache store (built by `neurocache build`): a folder or an fsspec URL "
                    "(s3://bucket/store.zarr, gs://..., file://...); credentials come from the environment, never from flags")
    cv.add_argument("--config", type=Path, default=Path("configs/default.yaml"), help="YAML config")
    cv.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key (repeatable; nested keys with dots, e.g. aug.degrees=5)")
    cv.add_argument("--config-json", default=None, help="JSON file or inline JSON object of config overrides (applied after --config)")
    cv.add_argument("--run-grid", action="store_true", help="cross-validate every candidate of --grid and continue with the best mean CV AUPRC")
    cv.add_argument("--grid", type=Path, default=Path("configs/grid.yaml"), help="grid file for --run-grid")
    cv.add_argument("--out", type=Path, default=Path("outputs"), help="folder for run folders")
    seed = cv.add_argument_group("the seed's flags (each sets the config key of the same name)")
    seed.add_argument("--seed", type=int, default=None)
    seed.add_argument("--test-size", type=float, default=None)
    seed.add_argument("--k-folds", type=int, default=None)
    seed.add_argument("--batch-size", type=int, default=None)
    seed.add_argument("--out-size", type=int, default=None)
    seed.add_argument("--holdout-frac", type=float, default=None)
    seed.add_argument("--prep-plot-n", type=int, default=None)
    seed.add_argument("--threshold-strategy", choices=("max_f1", "sens_target"), default=None)
    seed.add_argument("--sens-target", type=float, default=None)
    cv.add_argument("--quiet", action="store_true", help="no progress bars")
    cl = cv.add_argument_group("cluster (dask.distributed)")
    cl.add_argument("--scheduler", default=None, metavar="ADDRESS",
                    help="run each fold (each grid candidate x fold) as a task on an existing Dask cluster: tcp://HOST:PORT "
                         "or a scheduler-file JSON; the workers open --store themselves (a path or URL they can see)")
    cl.add_argument("--fold-resources", default="GPU=1", metavar="NAME=N[,...]",
                    help="worker resources each fold task needs (workers started with --resources \"GPU=1\" run one fold "
                         "at a time); 'none' for no constraint. Ignored without --scheduler")

    fi = sub.add_parser("final", help="train on the training pool, score the held-out test once",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    fi.add_argument("--cv-run", type=Path, required=True, help="a cv run folder (its config, split and threshold are used)")
    fi.add_argument("--store", default=None, help="store to read, a folder or an fsspec URL (default: the cv run's store)")
    fi.add_argument("--out", type=Path, default=Path("outputs"), help="folder for run folders")
    fi.add_argument("--quiet", action="store_true", help="no progress bars")

    pr = sub.add_parser("predict", help="score new DICOM files with a final run's model, preprocessing and threshold")
    pr.add_argument("--run", type=Path, required=True, help="a final run folder (model_card.json, final_model.pt)")
    pr.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="DICOM files and/or folders (searched recursively)")
    pr.add_argument("--out", type=Path, required=True, help="CSV to write: ID, path, prob, pred, status, reason, detail")
    pr.add_argument("--device", default=None, help="auto | cpu | cuda[:N] (default: the run config's device)")
    pr.add_argument("--batch-size", type=int, default=None, help="images per forward pass (default: the config's eval_batch_size)")
    pr.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the config's threads)")
    pr.add_argument("--quiet", action="store_true", help="no progress bar")

    rp = sub.add_parser("report", help="(re)write report.html of a cv or final run")
    rp.add_argument("run", type=Path, help="a cv or final run folder")
    rp.add_argument("--store", default=None, help="store to read the manifest and images from (default: the run's)")
    rp.add_argument("--out", type=Path, default=None, help="HTML file to write (default: RUN/report.html)")
    from trainer.run_table import add_parser as add_runs_parser

    add_runs_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from neurocache.config import ConfigError
    from neurocache.store import StoreError
    from trainer.distributed import ClusterError
    from trainer.evaluation.thresholds import ThresholdUnreachableError
    from trainer.final import RunError
    from trainer.model import WeightsUnavailableError

    try:
        if args.command == "predict":
            return _predict(args)
        if args.command == "report":
            return _report(args)
        if args.command == "runs":
            from trainer.run_table import command

            return command(args)
        return _cv(args) if args.command == "cv" else _final(args)
    except (ConfigError, StoreError, RunError, WeightsUnavailableError, ThresholdUnreachableError, ClusterError,
            FileNotFoundError, ValueError) as e:
        print(f"trainer {args.command}: error: {e}", file=sys.stderr)
        return 2


class _EpochBar:
    """A tqdm bar per fold, one tick per epoch, with the latest validation AUPRC."""

    def __init__(self, desc: str, total: int, quiet: bool) -> None:
        from tqdm.auto import tqdm

        self.bar = None if quiet else tqdm(total=total, desc=desc, unit="epoch", dynamic_ncols=True, file=sys.stderr)

    def update(self, rec: dict[str, Any]) -> None:
        if self.bar:
            self.bar.set_postfix(stage=rec["stage"], loss=f"{rec['train_loss']:.3f}", val_auprc=f"{rec['val_auprc']:.3f}",
                                 img_s=f"{rec['images_per_s']:.0f}")
            self.bar.update(1)

    def close(self) -> None:
        if self.bar:
            self.bar.close()


def _setup(cfg: TrainConfig):
    import torch

    from trainer.data import pick_device

    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    return pick_device(cfg.device)


def _check_store_arg(store: str | None) -> None:
    """Refuse an unusable --store (e.g. a URL with credentials in it) before any run folder is written."""
    if store:
        from neurocache.remote import StoreLocation

        StoreLocation(store)


def _cv(args: argparse.Namespace) -> int:
    from trainer.config import load_config
    from trainer.cv import load_grid
    from trainer.tracking import check_tracking

    t0 = time.perf_counter()
    flags = {k: getattr(args, k) for k in ("seed", "test_size", "k_folds", "batch_size", "out_size",
                                           "holdout_frac", "prep_plot_n", "threshold_strategy", "sens_target")}
    cfg = load_config(args.config, config_json=args.config_json, flags=flags, sets=args.set)
    check_tracking(cfg)
    grid = load_grid(args.grid) if args.run_grid else None
    from trainer.model import check_weights

    for weights in {cfg.weights, *(str(c["weights"]) for c in grid or [] if "weights" in c)}:
        check_weights(weights)  # offline without the ImageNet file: fail now, not after the split
    _check_store_arg(args.store)
    client, resources = None, {}
    if args.scheduler:
        from trainer.distributed import check_workers, connect, parse_resources

        resources = parse_resources(args.fold_resources)
        client = connect(args.scheduler)
    try:
        if client is not None:
            check_workers(client, resources)
        return _cv_run(args, cfg, grid, client, resources, t0)
    finally:
        if client is not None:
            client.close()


def _cv_run(args: argparse.Namespace, cfg: TrainConfig, grid, client, resources: dict[str, float], t0: float) -> int:
    import numpy as np

    from trainer.cv import run_folds, run_grid, split_table, write_cv_outputs
    from trainer.data import load_dataset
    from trainer.distributed import FoldRunner, store_address
    from trainer.loops import make_transform
    from trainer.report.examples import plot_examples
    from trainer.runs import environment, new_run_dir, write_json
    from trainer.precision import resolve_precision
    from trainer.tracking import track

    device = _setup(cfg)
    cfg = cfg.with_overrides({"precision": resolve_precision(cfg.amp, device)})  # fold and final models train alike
    run = new_run_dir(args.out, "cv")
    write_json(run / "run_args.json", {"argv": sys.argv, **{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}})
    write_json(run / "effective_config.json", cfg)
    data = load_dataset(str(args.store), cfg, device)
    write_json(run / "store.json", {"path": store_address(args.store), "fingerprint": data.store.fingerprint,
                                    "n_ok": len(data.table), "environment": environment(device)})
    split = split_table(data, cfg)
    split.to_csv(run / "split.csv", index=False)
    runner = None
    if client is not None:
        runner = FoldRunner(client, store_address(args.store), split, resources=resources)
    pool = np.flatnonzero(~split["test"].to_numpy())
    tf = make_transform(cfg)
    for label in (0, 1):
        plot_examples(data, pool, label, cfg.prep_plot_n, tf, run / f"preprocessing_examples_label{label}.png", cfg.seed)
    epochs = cfg.total_epochs
    bar = lambda desc: _EpochBar(desc, epochs, args.quiet)
    where = f"{device}" if runner is None else f"the Dask cluster {args.scheduler} (resources {resources or 'none'} per fold)"
    print(f"cv: {len(data.table)} slices ({int(data.labels.sum())} positive), {len(set(data.groups))} groups by "
          f"{cfg.group_by}; train pool {len(pool)}, test {int(split['test'].sum())}; {cfg.k_folds} folds on {where} "
          f"in {cfg.precision} (amp: {cfg.amp}); run {run}",
          file=sys.stderr)
    if grid:
        table, cfg, res = run_grid(data, split, cfg, grid, progress=bar, runner=runner)
        table.to_csv(run / "grid_results.csv", index=False)
        write_json(run / "effective_config.json", cfg)  # the chosen candidate is what final will use
    else:
        res = run_folds(data, split, cfg, progress=bar, runner=runner)
    from trainer.data import group_keys, next_slice_ids

    patients = dict(zip(data.table["ID"].astype(str), group_keys(data.table, "patient")))
    m = write_cv_outputs(run, split, res, cfg, patients=patients, next_ids=next_slice_ids(data.table))
    m = dataclasses.replace(m, wall_seconds=round(time.perf_counter() - t0, 2))
    write_json(run / "cv_metrics.json", m)
    o = m.oof_metrics
    print(f"CV ({m.k_folds} folds, early stopping on {m.early_stopping}, calibration {m.calibration}): "
          f"OOF ROC-AUC {m.oof_auc_mean:.3f}±{m.oof_auc_std:.3f}  AUPRC {m.oof_ap_mean:.3f}±{m.oof_ap_std:.3f} "
          f"(mean±sd over folds); threshold ({m.threshold_strategy}, {m.threshold_pooling}) {m.threshold:.4g}: "
          f"sens {o['sens']:.3f}  spec {o['spec']:.3f}  PPV {o['ppv']:.3f}  NPV {o['npv']:.3f} (pooled OOF)")
    for w in m.warnings:
        print(f"WARNING: {w}", file=sys.stderr)
    _write_report(run, m.wall_seconds)
    track(run)
    print(f"run folder: {run}")
    return 0


def _final(args: argparse.Namespace) -> int:
    from trainer.data import load_dataset
    from trainer.distributed import store_address
    from trainer.final import read_cv_run, run_final
    from trainer.runs import environment, new_run_dir, write_json
    from trainer.tracking import check_tracking, track

    t0 = time.perf_counter()
    _check_store_arg(args.store)
    cv = read_cv_run(args.cv_run)
    cfg = cv.config
    from trainer.model import check_weights

    check_weights(cfg.weights)
    check_tracking(cfg)
    device = _setup(cfg)
    from trainer.precision import recorded_precision

    cfg = cfg.with_overrides({"precision": recorded_precision(cfg.precision, cfg.amp, device)})  # as the fold models
    cv = dataclasses.replace(cv, config=cfg)
    store = args.store or cv.store["path"]
    data = load_dataset(str(store), cfg, device)
    if data.store.fingerprint != cv.store["fingerprint"]:
        from trainer.final import RunError

        raise RunError(f"store {store} has fingerprint {data.store.fingerprint[:12]}… but the cv run used {cv.store['fingerprint'][:12]}…")
    run = new_run_dir(args.out, "final")
    write_json(run / "run_args.json", {"argv": sys.argv, "cv_run": str(args.cv_run), "store": str(store)})
    write_json(run / "effective_config.json", cfg)
    write_json(run / "store.json", {**cv.store, "path": store_address(store), "environment": environment(device)})
    bar = _EpochBar("final", cfg.total_epochs, args.quiet)
    m = run_final(data, cv, run, on_epoch=bar.update)
    bar.close()
    t = m.metrics
    print(f"TEST (n={m.n_test}, threshold {t['threshold']:.2f}): ROC-AUC {t['auc']:.3f}  AUPRC {t['ap']:.3f}  "
          f"sens {t['sens']:.3f}  spec {t['spec']:.3f}  PPV {t['ppv']:.3f}  NPV {t['npv']:.3f}  F1 {t['f1']:.3f}  "
          f"(tp {t['tp']} fp {t['fp']} tn {t['tn']} fn {t['fn']}); {time.perf_counter() - t0:.0f} s")
    if m.promised is not None:
        from trainer.evaluation.promise import format_promise

        print(format_promise(m.promised))
    for w in m.warnings:
        print(f"WARNING: {w}", file=sys.stderr)
    m = dataclasses.replace(m, wall_seconds=round(time.perf_counter() - t0, 2))
    write_json(run / "test_metrics.json", m)
    _write_report(run, m.wall_seconds)
    track(run)
    print(f"run folder: {run}")
    return 0


def _write_report(run: Path, wall_seconds: float | None) -> None:
    """report.html of a run; a failure is reported but does not fail the run (its results are written)."""
    from trainer.report.html import write_report

    try:
        path, missing = write_report(run, wall_seconds=wall_seconds)
    except Exception as e:  # noqa: BLE001
        print(f"warning: report.html could not be written ({type(e).__name__}: {e}); "
              f"retry with `python -m trainer report {run}`", file=sys.stderr)
        return
    if missing:
        print(f"report.html: sections without data: {', '.join(missing)}", file=sys.stderr)
    print(f"report: {path}")


def _predict(args: argparse.Namespace) -> int:
    import torch

    from neurocache.names import shown_name
    from trainer.predict import load_final_run, predict_files, write_predictions

    t0 = time.perf_counter()
    run = load_final_run(args.run)  # fail fast, before reading any input
    threads = args.threads if args.threads is not None else run.config.threads
    if threads:
        torch.set_num_threads(int(threads))
    frame = predict_files(args.run, args.inputs, device=args.device, batch_size=args.batch_size, progress=not args.quiet)
    write_predictions(frame, args.out)
    ok = frame["status"] == "ok"
    reasons = frame.loc[~ok, "reason"].value_counts().to_dict()
    print(f"predict: {len(frame)} files, {int(ok.sum())} scored ({int(frame['pred'].fillna(0).sum())} positive at threshold "
          f"{run.threshold:.2f}), {int((~ok).sum())} not scored{' ' + str(reasons) if reasons else ''}; "
          f"{time.perf_counter() - t0:.1f} s -> {shown_name(str(args.out))}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from trainer.report.html import write_report

    if not args.run.is_dir():
        raise FileNotFoundError(f"run folder {args.run} does not exist")
    path, missing = write_report(args.run, store_path=args.store, out=args.out)
    if missing:
        print(f"report.html: sections without data: {', '.join(missing)}", file=sys.stderr)
    print(f"report: {path}")
    return 0
