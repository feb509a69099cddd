"""``python -m trainer {cv,threshold,final,predict,report,runs}``: cross-validation and the final model, from a
neurocache store; a cv run's threshold chosen again; scoring new DICOM files with a final run; the runs'
report.html; every run side by side."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

EPILOG = """examples:
  python -m trainer cv --store store.zarr --config configs/default.yaml
  python -m trainer cv --store store.zarr --config configs/default.yaml --set lr_ft=1e-4 --set epochs_ft=6
  python -m trainer cv --store store.zarr --config configs/default.yaml --run-grid
  python -m trainer threshold --cv-run outputs/run_20260101_120000_cv --threshold-strategy sens_target \
      --sens-target 0.85 --sens-confidence 0.95
  python -m trainer final --cv-run outputs/run_20260101_120000_cv
  python -m trainer predict --run outputs/run_20260101_130000_final new_scans/ one.dcm --out predictions.csv
  python -m trainer report outputs/run_20260101_130000_final
  python -m trainer runs --out outputs --sort cv_auprc --csv runs.csv --plot runs.png
"""


def _add_cv(sub: Any, strategies: tuple[str, ...]) -> None:
    """The ``cv`` subcommand's arguments."""
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
    orig = cv.add_argument_group("the original pipeline's flags (each sets the config key of the same name)")
    orig.add_argument("--seed", type=int, default=None)
    orig.add_argument("--test-size", type=float, default=None)
    orig.add_argument("--k-folds", type=int, default=None)
    orig.add_argument("--batch-size", type=int, default=None)
    orig.add_argument("--out-size", type=int, default=None)
    orig.add_argument("--holdout-frac", type=float, default=None)
    orig.add_argument("--prep-plot-n", type=int, default=None)
    orig.add_argument("--threshold-strategy", choices=strategies, default=None)
    orig.add_argument("--sens-target", type=float, default=None)
    cv.add_argument("--quiet", action="store_true", help="no progress bars")
    cl = cv.add_argument_group("cluster (dask.distributed)")
    cl.add_argument("--scheduler", default=None, metavar="ADDRESS",
                    help="run each fold (each grid candidate x fold) as a task on an existing Dask cluster: tcp://HOST:PORT "
                         "or a scheduler-file JSON; the workers open --store themselves (a path or URL they can see)")
    cl.add_argument("--fold-resources", default="GPU=1", metavar="NAME=N[,...]",
                    help="worker resources each fold task needs (workers started with --resources \"GPU=1\" run one fold "
                         "at a time); 'none' for no constraint. Ignored without --scheduler")


def _add_threshold(sub: Any, strategies: tuple[str, ...]) -> None:
    """The ``threshold`` subcommand's arguments."""
    th = sub.add_parser("threshold", help="choose a cv run's threshold again from its saved out-of-fold predictions "
                        "(seconds; no training)")
    th.add_argument("--cv-run", type=Path, required=True, help="a cv run folder (rewritten: threshold files, cv_metrics.json, "
                    "effective_config.json, report.html; earlier selections kept in threshold_history/)")
    th.add_argument("--threshold-strategy", choices=strategies, default=None, help="default: the run's")
    th.add_argument("--sens-target", type=float, default=None, help="default: the run's")
    th.add_argument("--sens-confidence", type=float, default=None,
                    help="0 = off; e.g. 0.95: the highest threshold whose 95%% lower confidence bound (patient bootstrap) "
                         "of the pooled OOF sensitivity reaches --sens-target (default: the run's)")
    th.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a selection or evaluation key (repeatable), e.g. threshold_pooling=folds, n_boot=2000, "
                         "operating_points=[{sens: 0.9}]")
    th.add_argument("--store", default=None, help="the store, where the patient keys are not in the split "
                    "(group_by other than patient, or patient_aggregation: pair); default: the run's")


def _parser() -> argparse.ArgumentParser:
    from trainer.evaluation.thresholds import STRATEGIES

    p = argparse.ArgumentParser(prog="python -m trainer", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_cv(sub, STRATEGIES)
    _add_threshold(sub, STRATEGIES)

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
    pr.add_argument("--saliency", type=Path, default=None, metavar="DIR", help="also write one Grad-CAM overlay PNG per "
                    "scored slice into DIR and the columns peak_row, peak_col (the map's peak in the DICOM's pixels)")
    pr.add_argument("--saliency-method", default=None, help="gradcam | gradcampp (default: the run config's saliency_method)")
    pr.add_argument("--saliency-layer", default=None, help="layer1..layer4 (default: the run config's saliency_layer)")
    pr.add_argument("--saliency-peak", default=None, help="tissue | brain | anywhere (default: the run config's saliency_peak)")
    pr.add_argument("--saliency-locate", default=None, help="centroid (the centre of the map's half-maximum region round "
                    "its maximum) | max (the maximum pixel) (default: the run config's saliency_locate)")

    rp = sub.add_parser("report", help="(re)write report.html of a cv or final run")
    rp.add_argument("run", type=Path, help="a cv or final run folder")
    rp.add_argument("--store", default=None, help="store to read the manifest and images from (default: the run's)")
    rp.add_argument("--out", type=Path, default=None, help="HTML file to write (default: RUN/report.html)")
    from trainer.runs.table import add_parser as add_runs_parser

    add_runs_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command. A :class:`~neurocache.errors.UserError` (bad config, store, run, device, weights,
    cluster, split...) is printed as one line, ``trainer COMMAND: error: MESSAGE``, exit status 2;
    anything else is a bug (or the environment failing) and keeps its traceback."""
    args = _parser().parse_args(argv)
    from neurocache.errors import UserError

    try:
        return _run(args)
    except UserError as e:
        print(f"trainer {args.command}: error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    """Call the command's home with the parsed arguments."""
    started = time.perf_counter()
    if args.command == "cv":
        from trainer.config import ORIGINAL_FLAGS, load_config
        from trainer.cv import load_grid, run_cv

        flags = {k: getattr(args, k) for k in ORIGINAL_FLAGS}
        cfg = load_config(args.config, config_json=args.config_json, flags=flags, sets=args.set)
        grid = load_grid(args.grid) if args.run_grid else None
        run_args = {"argv": sys.argv, **{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
        run_cv(str(args.store), cfg, out=args.out, grid=grid, scheduler=args.scheduler, fold_resources=args.fold_resources,
               quiet=args.quiet, run_args=run_args, started=started)
        return 0
    if args.command == "threshold":
        from trainer.threshold import threshold_command

        flags = {"threshold_strategy": args.threshold_strategy, "sens_target": args.sens_target,
                 "sens_confidence": args.sens_confidence}
        threshold_command(args.cv_run, flags=flags, sets=args.set, store=args.store)
        return 0
    if args.command == "final":
        from trainer.final import run_final_command

        run_final_command(args.cv_run, store=args.store, out=args.out, quiet=args.quiet, argv=sys.argv, started=started)
        return 0
    if args.command == "predict":
        from trainer.predict import predict_command

        return predict_command(args.run, args.inputs, out=args.out, device=args.device, batch_size=args.batch_size,
                               threads=args.threads, quiet=args.quiet, saliency=args.saliency,
                               saliency_method=args.saliency_method, saliency_layer=args.saliency_layer,
                               saliency_peak=args.saliency_peak, saliency_locate=args.saliency_locate)
    if args.command == "report":
        from trainer.report.html import report_command

        return report_command(args.run, store_path=args.store, out=args.out)
    from trainer.runs.table import command

    return command(args)
