"""``python -m trainer runs``: every cv and final run of an outputs folder side by side, as one table.

One row per run: its name, kind, date, ``linked`` (a final run's cv run, named by its ``run_args.json``;
a cv run's final runs), the config keys that differ between the listed runs (only those), CV AUPRC
and ROC-AUC (mean and sd over folds), the threshold, and test metrics for a final run (whose row also
carries its cv run's CV numbers).
Folders that are not complete runs (half-written, foreign) are skipped with a message naming them.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neurocache.errors import InputError
from trainer.runs.files import MLRUNS
from trainer.runs.folder import Run, RunError, RunNotFoundError, flatten, load_run
from trainer.runs.results import CVResult, TestResult

#: Config keys that never change a result (where a run was logged): not shown as differing.
NOT_COMPARED: tuple[str, ...] = ("tracking", "tracking_uri")
#: Folders of ours that live in an outputs folder and are not runs (MLflow's default store).
NOT_RUNS: tuple[str, ...] = (MLRUNS,)

FIXED_COLUMNS: tuple[str, ...] = ("run", "kind", "date", "linked")
METRIC_COLUMNS: tuple[str, ...] = (
    "cv_auprc", "cv_auprc_sd", "cv_roc_auc", "cv_roc_auc_sd", "threshold",
    "test_roc_auc", "test_auprc", "test_sens", "test_spec", "test_f1",
)
#: test_metrics.json key of each test column
_TEST_KEYS = {"test_roc_auc": "auc", "test_auprc": "ap", "test_sens": "sens", "test_spec": "spec", "test_f1": "f1"}


def scan_runs(out: str | Path, *, fingerprint: str | None = None) -> tuple[list[Run], list[str]]:
    """The complete runs directly under ``out`` (by folder name), and one message per skipped folder.

    Args:
        out: the outputs folder.
        fingerprint: keep only runs whose ``store.json`` has this store fingerprint.
    """
    root = Path(out)
    if not root.is_dir():
        raise RunNotFoundError(f"outputs folder {root} does not exist")
    runs, skipped = [], []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in NOT_RUNS):
        try:
            r = load_run(d)
        except (RunError, OSError, ValueError) as e:  # half-written, foreign, unreadable
            skipped.append(f"skipping {d}: {e}")
            continue
        if fingerprint is None or r.store.get("fingerprint") == fingerprint:
            runs.append(r)
    return runs, skipped


def varying_keys(configs: Iterable[dict[str, Any]]) -> list[str]:
    """Flattened config keys whose values are not the same in every config (absent counts as a value)."""
    flat = [flatten(c) for c in configs]
    keys = sorted(set().union(*flat)) if flat else []
    missing = object()
    out = []
    for k in keys:
        if k in NOT_COMPARED or k.split(".")[0] in NOT_COMPARED:
            continue
        vals = {json.dumps(f.get(k, missing), sort_keys=True, default=lambda o: "<absent>") for f in flat}
        if len(vals) > 1:
            out.append(k)
    return out


def _cell(v: Any) -> Any:
    return json.dumps(v) if isinstance(v, (list, dict)) else v


def _num(v: Any) -> float:
    """``v`` as a float; NaN when it is not a number (None, absent, a boolean)."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else float("nan")


def _cv_result(r: Run) -> CVResult | None:
    return CVResult.from_dict(r.cv_metrics) if r.cv_metrics else None


def table_rows(runs: list[Run]) -> pd.DataFrame:
    """One row per run (see the module docstring); columns :data:`FIXED_COLUMNS`, the varying keys, metrics."""
    keys = varying_keys(r.config for r in runs)
    finals: dict[str, list[str]] = {}
    for r in runs:
        if r.kind == "final" and r.cv_run is not None:
            finals.setdefault(r.cv_run.name, []).append(r.name)
    rows = []
    for r in runs:
        flat = flatten(r.config)
        cm = _cv_result(r)
        test = TestResult.from_dict(r.metrics).metrics if r.kind == "final" and r.metrics else {}
        row: dict[str, Any] = {
            "run": r.name, "kind": r.kind, "date": r.created.isoformat(sep=" "),
            "linked": r.cv_run.name if r.cv_run is not None else ", ".join(finals.get(r.name, [])) or None,
        }
        for k in keys:
            row[k if k not in FIXED_COLUMNS + METRIC_COLUMNS else f"config.{k}"] = _cell(flat.get(k))
        row.update({
            # the validation folds' AUPRC, each scored once (not the early-stopping AUPRC)
            "cv_auprc": _num(cm and cm.oof_ap_mean), "cv_auprc_sd": _num(cm and cm.oof_ap_std),
            "cv_roc_auc": _num(cm and cm.oof_auc_mean), "cv_roc_auc_sd": _num(cm and cm.oof_auc_std),
            "threshold": float("nan") if r.threshold is None else r.threshold,
        })
        for col, key in _TEST_KEYS.items():
            row[col] = _num(test.get(key))
        rows.append(row)
    cols = [*FIXED_COLUMNS, *[k if k not in FIXED_COLUMNS + METRIC_COLUMNS else f"config.{k}" for k in keys], *METRIC_COLUMNS]
    return pd.DataFrame(rows, columns=cols)


def sort_table(table: pd.DataFrame, key: str = "date", *, reverse: bool = False) -> pd.DataFrame:
    """Sort by a column: metrics best first (descending), anything else ascending; ``reverse`` flips it.

    Raises:
        InputError: ``key`` is not a column (the message lists them; a ``ValueError``).
    """
    if key not in table.columns:
        raise InputError(f"--sort {key!r} is not a column; columns: {', '.join(table.columns)}")
    ascending = not (key in METRIC_COLUMNS and key != "threshold")
    if reverse:
        ascending = not ascending
    return table.sort_values(key, ascending=ascending, na_position="last", kind="stable").reset_index(drop=True)


def run_table(out: str | Path = "outputs", *, store: str | Path | None = None, sort: str = "date",
              reverse: bool = False) -> pd.DataFrame:
    """The runs table of ``out`` (only runs of ``store``'s fingerprint when given); skipped folders warn.

    What ``python -m trainer runs`` prints and the notebook shows.
    """
    runs, skipped, _ = collect_runs(out, store)
    for msg in skipped:
        warnings.warn(msg, stacklevel=2)
    return sort_table(table_rows(runs), sort, reverse=reverse)


def collect_runs(out: str | Path, store: str | Path | None = None) -> tuple[list[Run], list[str], str | None]:
    """:func:`scan_runs` of ``out`` filtered to ``store``'s fingerprint (when given), and that fingerprint."""
    fp = None
    if store is not None:
        from neurocache.store import open_store

        fp = open_store(store).fingerprint
    runs, skipped = scan_runs(out, fingerprint=fp)
    return runs, skipped, fp


def format_table(table: pd.DataFrame) -> str:
    """Text of the table: mean ± sd columns joined, 3 decimals, ``-`` for empty cells."""
    if table.empty:
        return "(no runs)"
    show = table.copy()
    for m in ("cv_auprc", "cv_roc_auc"):
        show[m] = [("-" if np.isnan(a) else f"{a:.3f}" + ("" if np.isnan(s) else f" ± {s:.3f}"))
                   for a, s in zip(table[m], table[f"{m}_sd"])]
        show = show.drop(columns=f"{m}_sd")
    for c in show.columns:
        if show[c].dtype.kind == "f":
            show[c] = ["-" if np.isnan(v) else f"{v:.3f}" for v in show[c]]
    return show.fillna("-").to_string(index=False)


def cv_auprc_figure(runs: list[Run]):
    """CV AUPRC per cv run: each validation fold's AUPRC (scored once) as a dot, mean ± sd as a bar.

    A ``matplotlib.figure.Figure`` built without pyplot (no backend switch: it shows inline in a notebook).
    """
    from matplotlib.figure import Figure

    cvs = [r for r in runs if r.kind == "cv" and r.cv_metrics]
    fig = Figure(figsize=(max(4.0, 0.9 * len(cvs) + 2), 4))
    ax = fig.subplots()
    for i, r in enumerate(cvs):
        cm = CVResult.from_dict(r.cv_metrics)
        folds = [f.val_ap for f in cm.per_fold if isinstance(f.val_ap, (int, float))]
        ax.scatter([i] * len(folds), folds, s=16, color="0.5", zorder=2, label="fold" if i == 0 else None)
        ax.errorbar([i], [_num(cm.oof_ap_mean)], yerr=[np.nan_to_num(_num(cm.oof_ap_std))],
                    fmt="o", color="C0", capsize=4, zorder=3, label="mean ± sd" if i == 0 else None)
    ax.set_xticks(range(len(cvs)), [r.name for r in cvs], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("CV AUPRC (validation fold, scored once)")
    ax.set_ylim(0, 1.02)
    ax.set_title("CV AUPRC by run")
    if cvs:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def plot_cv_auprc(runs: list[Run], path: str | Path) -> Path:
    """Write :func:`cv_auprc_figure` as a PNG (``runs --plot``)."""
    cv_auprc_figure(runs).savefig(path, dpi=90)
    return Path(path)


# --------------------------------------------------------------------------------------------
# the `runs` subcommand (trainer/cli.py adds the parser and dispatches here)
# --------------------------------------------------------------------------------------------
def add_parser(sub: Any) -> None:
    """Add ``runs`` to the trainer's subcommands."""
    p = sub.add_parser("runs", help="list every cv/final run side by side: differing config keys, CV and test metrics",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("outputs"), help="folder holding the run folders")
    p.add_argument("--store", default=None, help="only runs made on this store (same fingerprint)")
    p.add_argument("--sort", default="date", metavar="KEY",
                   help="column to sort by (metrics best first, others ascending), e.g. cv_auprc, test_roc_auc, run, or a config key")
    p.add_argument("--reverse", action="store_true", help="reverse the sort order")
    p.add_argument("--csv", type=Path, default=None, metavar="FILE", help="also write the table as CSV")
    p.add_argument("--plot", type=Path, default=None, metavar="FILE.png", help="plot CV AUPRC with the fold spread per cv run")


def command(args: argparse.Namespace) -> int:
    """``python -m trainer runs``."""
    runs, skipped, fp = collect_runs(args.out, args.store)
    for msg in skipped:
        print(f"warning: {msg}", file=sys.stderr)
    table = sort_table(table_rows(runs), args.sort, reverse=args.reverse)
    print(format_table(table))
    print(f"{len(table)} run(s) in {args.out}" + (f" on store {args.store} ({fp[:12]}…)" if fp else ""), file=sys.stderr)
    if args.csv:
        table.to_csv(args.csv, index=False)
        print(f"table: {args.csv}", file=sys.stderr)
    if args.plot:
        print(f"plot: {plot_cv_auprc(runs, args.plot)}", file=sys.stderr)
    return 0
