"""The ``neurocache`` command line: synth, validate, build, info, plot, relabel."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EPILOG = """examples:
  neurocache synth data/demo --patients 40 --slices-per-patient 12
  neurocache validate --data-root data/demo
  neurocache build --data-root data/demo --store store.zarr
  neurocache info store.zarr --json
  neurocache build --data-root /shared/data --store s3://bucket/store.zarr --scheduler tcp://scheduler:8786
  neurocache plot store.zarr --label 1 --n 4 --out prep_label1.png
  neurocache relabel --store store.zarr --labels corrected.csv
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="neurocache",
        description="Brain CT DICOM folder -> validated Zarr cache of HU arrays + feature table.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _synth_args(sub.add_parser("synth", help="write a synthetic head-CT DICOM dataset (the demo and test data)"))

    v = sub.add_parser("validate", help="check a data folder's structure and labels (no writes)")
    _data_args(v)
    v.add_argument("--expected-count", type=int, default=None, help="fail unless the CT folder holds exactly N DICOM files")
    v.add_argument("--json", action="store_true", help="print the report as one JSON object")

    b = sub.add_parser("build", help="build (or resume, or confirm up to date) the Zarr store")
    _data_args(b)
    b.add_argument("--store", required=True, help="store to write: a folder (store.zarr) or an fsspec URL (s3://bucket/store.zarr, "
                   "gs://..., file://...); credentials come from the environment (AWS_* variables, profiles), never from flags")
    b.add_argument("--config", type=Path, default=None,
                   help="YAML config; its `preprocess:` section sets the parameters (default: built-in defaults)")
    b.add_argument("--workers", type=int, default=None, help="Dask worker processes (default: all cores; 1 = no Dask, in-process)")
    b.add_argument("--scheduler", default=None, help="address tcp://HOST:PORT or scheduler-file JSON of an existing dask.distributed cluster; "
                   "its workers must see --data-root and --store at the same path/URL")
    b.add_argument("--strict", action="store_true", help="fail (store left incomplete) if any file is quarantined")
    b.add_argument("--force", action="store_true", help="replace a store that was built with other preprocessing parameters")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.add_argument("--json", action="store_true", help="print the store summary as JSON when done")

    i = sub.add_parser("info", help="summarise a store")
    i.add_argument("store", help="store folder or fsspec URL (s3://bucket/store.zarr)")
    i.add_argument("--json", action="store_true", help="print one JSON object (n_files, n_ok, n_quarantined, shape, dtype, "
                                                       "fingerprint, complete, bytes_on_disk, source_bytes, ...)")

    pl = sub.add_parser("plot", help="draw the preprocessing stages of some slices of one class")
    pl.add_argument("store", help="store folder or URL (its source DICOM folder must still exist)")
    pl.add_argument("--label", type=int, choices=(0, 1), required=True, help="class to draw")
    pl.add_argument("--n", type=int, default=4, help="number of slices (default 4)")
    pl.add_argument("--out", type=Path, required=True, help="PNG file to write")
    pl.add_argument("--seed", type=int, default=0, help="which slices are picked (default 0)")

    r = sub.add_parser("relabel", help="correct labels in a built store (features.parquet, quality.json, attrs); decodes nothing")
    r.add_argument("--store", required=True, help="complete store folder or fsspec URL")
    r.add_argument("--labels", type=Path, required=True, help="CSV with columns ID,Label: the labels to set (IDs not listed keep "
                   "theirs; every ID must be in the store). The data root's labels CSV is not changed: put the corrections there "
                   "too, or a build after that CSV changes joins its labels again")
    r.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    return p


def _synth_args(s: argparse.ArgumentParser) -> None:
    """The options of ``neurocache synth``."""
    s.add_argument("out", type=Path, help="output folder; gets CTs/ID_*.dcm, labels1.csv and lesions.csv (the drawn lesions, for saliency checks)")
    s.add_argument("--patients", type=int, default=40, help="number of patients (default 40)")
    s.add_argument("--slices-per-patient", type=int, default=12, help="consecutive 5 mm slices per patient (default 12)")
    s.add_argument("--size", type=int, default=512, help="main image side in pixels (default 512; some patients get non-square images)")
    s.add_argument("--positive-frac", type=float, default=0.35, help="approximate fraction of label-1 slices (default 0.35)")
    s.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives byte-identical files (default 0)")
    s.add_argument("--lesions", choices=("taper", "3d"), default="taper",  # = synth.lesion.LESION_PROFILES (tested)
                   help="how a lesion changes along its run of slices: taper (default, as earlier releases: size tapers, "
                        "full contrast) or 3d (an ellipsoid spanning the run: smaller and fainter on its end slices, "
                        "for neighbour-context (2.5D) experiments)")
    s.add_argument("--pixel-spacing", type=float, default=None, metavar="MM",
                   help="PixelSpacing of every slice in mm (default: drawn per patient in 0.40-0.50); header only")
    s.add_argument("--kvp", type=float, default=120.0, metavar="KV", help="KVP of every slice (default 120); header only")


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", type=Path, required=True, help="folder holding the CT folder and the labels CSV")
    p.add_argument("--labels", default="labels1.csv", help="labels CSV name inside the data root, columns ID,Label (default labels1.csv)")
    p.add_argument("--cts", default="CTs", help="CT folder name inside the data root, one <ID>.dcm per slice (default CTs)")


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit status.

    A :class:`neurocache.errors.UserError` (bad input, config, store or run) is printed as one
    ``neurocache COMMAND: error: MESSAGE`` line on stderr and returns its ``exit_code`` (2, or 1 for a
    failed run); anything else is a bug and propagates with its traceback.
    """
    args = _parser().parse_args(argv)
    from neurocache.errors import UserError
    from neurocache.names import shown_name

    try:
        return _COMMANDS[args.command](args)
    except UserError as e:
        print(f"neurocache {args.command}: error: {shown_name(str(e))}", file=sys.stderr)
        return e.exit_code


def _synth(args: argparse.Namespace) -> int:
    from neurocache.synth import generate_dataset

    df = generate_dataset(
        args.out,
        patients=args.patients,
        slices_per_patient=args.slices_per_patient,
        size=args.size,
        positive_frac=args.positive_frac,
        seed=args.seed,
        lesions=args.lesions,
        pixel_spacing_mm=args.pixel_spacing,
        kvp=args.kvp,
        progress=True,
    )
    n1 = int(df["Label"].sum())
    print(f"wrote {len(df)} slices of {args.patients} patients to {args.out}/CTs ({n1} label 1) and {args.out}/labels1.csv")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from neurocache.validate import format_report, validate_dataset

    r = validate_dataset(args.data_root, labels=args.labels, cts=args.cts, expected_count=args.expected_count)
    print(json.dumps(r, indent=2) if args.json else format_report(r))
    return 0 if r["ok"] else 1


def _build(args: argparse.Namespace) -> int:
    from neurocache.build import build_store
    from neurocache.config import load_prep_config
    from neurocache.info import format_info, store_info

    cfg = load_prep_config(args.config)
    res = build_store(
        args.data_root,
        args.store,
        cfg=cfg,
        labels=args.labels,
        cts=args.cts,
        workers=args.workers,
        scheduler=args.scheduler,
        strict=args.strict,
        force=args.force,
        progress=not args.no_progress,
    )
    info = store_info(args.store)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        if res.skipped:
            print(f"{args.store} is up to date (same files and parameters): nothing to do")
        print(format_info(info))
    return 0


def _info(args: argparse.Namespace) -> int:
    from neurocache.info import format_info, store_info

    info = store_info(args.store)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def _plot(args: argparse.Namespace) -> int:
    from neurocache.plot import plot_preprocessing
    from neurocache.store import open_store

    ids = plot_preprocessing(open_store(args.store), args.label, args.n, args.out, seed=args.seed)
    print(f"wrote {args.out} ({len(ids)} slices: {', '.join(ids)})")
    return 0


def _relabel(args: argparse.Namespace) -> int:
    from neurocache.relabel import relabel_store

    r = relabel_store(args.store, args.labels)
    if args.json:
        print(json.dumps(r, indent=2))
    elif r["n_changed"] == 0:
        print(f"{r['store']}: the {r['n_listed']} label(s) in {r['file']} are already the store's: nothing to do")
    else:
        print(f"relabelled {r['store']}: {r['n_changed']} of {r['n_listed']} listed label(s) changed ({r['to_1']} 0 -> 1, "
              f"{r['to_0']} 1 -> 0) from {r['file']} (sha256 {r['sha256'][:12]}…); labels_hash {r['labels_hash'][:12]}…, "
              f"fingerprint unchanged")
    return 0


_COMMANDS = {"synth": _synth, "validate": _validate, "build": _build, "info": _info, "plot": _plot, "relabel": _relabel}
