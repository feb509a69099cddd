"""What each section of ``report.html`` shows, gathered from a run folder (templates in ``templates/sections/``).

Each function takes the run's :class:`Context` and returns the section template's ``d`` (plain
values and typed results), or raises :class:`Missing` with the sentence the report shows instead.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from markupsafe import Markup, escape

from trainer.config import TrainConfig
from trainer.report.format import ci, fmt
from trainer.runs import files as F
from trainer.runs.results import CVResult, TestResult


class Missing(Exception):
    """A section's input is not available; the message is shown in the report."""


@dataclass(frozen=True)
class Figure:
    """A PNG of a run folder, read for inlining (``png`` None when the file is missing)."""

    path: Path
    alt: str
    png: bytes | None


def figure(path: Path, alt: str) -> Figure:
    return Figure(Path(path), alt, Path(path).read_bytes() if Path(path).is_file() else None)


@dataclass
class Context:
    """Everything the sections read, from :func:`trainer.load_run` and the store."""

    run: Path
    kind: str
    config: dict[str, Any]           # effective_config.json as saved (shown as is)
    cfg: TrainConfig                 # the same, typed
    store_json: dict[str, Any]
    run_args: dict[str, Any]
    cv_dir: Path | None
    cv: CVResult | None              # cv_metrics.json of the run (cv) or its cv run (final)
    test: TestResult | None          # test_metrics.json (final runs)
    selection: dict[str, Any] | None
    split: pd.DataFrame | None
    threshold: float | None
    wall_seconds: float | None
    store: Any = None
    store_error: str | None = None


def load_context(run: Path, store_path: str | Path | None, wall_seconds: float | None) -> Context:
    from trainer.runs.folder import load_run

    r = load_run(run, require=())  # whatever the run has; missing pieces are None and their sections say so
    cv = CVResult.from_dict(r.cv_metrics) if r.cv_metrics else None
    test = TestResult.from_dict(r.metrics) if r.kind == "final" and r.metrics else None
    if wall_seconds is None:
        wall_seconds = test.wall_seconds if r.kind == "final" and test else (cv.wall_seconds if cv else None)
    ctx = Context(run=r.path, kind=r.kind, config=r.config, cfg=r.train_config, store_json=r.store,
                  run_args=r.run_args, cv_dir=r.path if r.kind == "cv" else r.cv_run, cv=cv, test=test,
                  selection=r.selection, split=r.split, threshold=r.threshold, wall_seconds=wall_seconds)
    _open_store(ctx, store_path or ctx.store_json.get("path"))
    return ctx


def _open_store(ctx: Context, sp: str | Path | None) -> None:
    if not sp:
        ctx.store_error = "the run's store.json names no store path"
        return
    try:
        from neurocache.store import open_store

        st = open_store(sp)
        want = ctx.store_json.get("fingerprint")
        if want and st.fingerprint != want:
            ctx.store_error = (f"the store at {sp} has fingerprint {st.fingerprint[:12]}…, not the run's "
                               f"{want[:12]}…; it is not the store this run used")
        else:
            ctx.store = st
    except Exception as e:  # noqa: BLE001 - shown in the report
        ctx.store_error = f"{type(e).__name__}: {e}"


def _evaluation_block(ctx: Context) -> dict[str, Any] | None:
    """The evaluation of this run: the test's (final) or the pooled OOF's (cv), as a dict."""
    if ctx.kind == "final":
        return ctx.test.to_dict() if ctx.test else None
    return ctx.cv.oof if ctx.cv else None


def run_warnings(ctx: Context) -> list[str]:
    """Every warning of the run: stuck folds and threshold spread (cv), the final model's (final)."""
    return list(ctx.cv.warnings if ctx.cv else []) + list(ctx.test.warnings if ctx.test else [])


# --------------------------------------------------------------------------------------------
# sections
# --------------------------------------------------------------------------------------------
def promise(ctx: Context) -> dict[str, Any]:
    from trainer.evaluation.promise import (NAMES, bound_text, fold_stats_of, promise_vs_delivery, row_verdict,
                                            verdict_summary, verdict_text)

    table = ctx.test.promised if ctx.test else None
    untested = table is None
    if table is None:
        if not (ctx.cv and ctx.cv.oof):
            raise Missing("cv_metrics.json has no pooled OOF evaluation")
        table = promise_vs_delivery(ctx.cv.oof, {}, None, float(ctx.threshold or ctx.cv.threshold), fold_stats_of(ctx.cv),
                                    (ctx.selection or {}).get("sens_bound"))
    css = {"worse": "fail", "better": "pass", "held": "held", "degenerate": "note"}

    def shown(r: dict[str, Any]) -> Any:
        v = row_verdict(r)
        return Markup(f'<span class="{css[v]}">{escape(verdict_text(r))}</span>') if v in css else ""

    rows = [{"metric": NAMES[r["metric"]], "CV (pooled OOF)": fmt(r["cv"]) + (f" ({bound_text(r)})" if bound_text(r) else ""),
             "CV interval": ci([r["cv_lo"], r["cv_hi"]]),
             "CV fold mean ± sd": _fold_mean(r), "test": fmt(r["test"]), "test interval": ci([r["test_lo"], r["test_hi"]]),
             "test − CV": fmt(r["diff"]), "verdict": shown(r)} for r in table["rows"]]
    bound = bound_text(table["rows"][0]) if table["rows"] else ""
    return {"table": table, "rows": rows, "warnings": run_warnings(ctx), "untested": untested, "bound": bound,
            "summary": None if untested else verdict_summary(table)}


def _fold_mean(row: dict[str, Any]) -> str:
    """'mean ± sd' of a ranking row's fold validation scores ('' on threshold rows and old tables)."""
    mean = row.get("cv_fold_mean")
    return "" if mean is None else f"{fmt(mean)} ± {fmt(row.get('cv_fold_sd'))}"


def summary(ctx: Context) -> dict[str, Any]:
    rows: dict[str, Any] = {"run folder": str(ctx.run.resolve()), "kind": ctx.kind,
                            "report written": _dt.datetime.now().isoformat(timespec="seconds")}
    if ctx.cv_dir is not None and ctx.kind == "final":
        rows["cv run"] = str(ctx.cv_dir)
    if ctx.threshold is not None:
        rows["decision threshold"] = ctx.threshold
    cm = ctx.cv
    if cm:
        rows["CV AUPRC (OOF, mean ± sd over folds)"] = f"{fmt(cm.oof_ap_mean)} ± {fmt(cm.oof_ap_std)}"
        rows["CV early stopping / calibration"] = f"{cm.early_stopping} / {cm.calibration}"
        for f in cm.stuck_folds:
            rows[f"fold {f['fold']} did not learn"] = f["why"]
        rows["CV ROC-AUC (OOF, mean ± sd over folds)"] = f"{fmt(cm.oof_auc_mean)} ± {fmt(cm.oof_auc_std)}"
    tm = ctx.test
    if tm:
        iv, m = tm.intervals or {}, tm.metrics
        rows["test ROC-AUC (95% DeLong)"] = f"{fmt(m.get('auc'))} ({ci((iv.get('auc') or {}).get('delong'))})"
        rows["test AUPRC (95% patient bootstrap)"] = f"{fmt(m.get('ap'))} ({ci((iv.get('ap') or {}).get('bootstrap'))})"
        rows["test sensitivity / specificity"] = f"{fmt(m.get('sens'))} / {fmt(m.get('spec'))}"
    elif ctx.kind == "cv":
        rows["test set"] = "untouched by this cv run; see the test-metrics section"
    return {"rows": rows}


def data_manifest(ctx: Context) -> dict[str, Any]:
    from neurocache.reasons import REASONS

    st, sj = ctx.store, ctx.store_json
    head = {"store": sj.get("path"), "fingerprint (preprocessing)": sj.get("fingerprint"), "ok slices used by the run": sj.get("n_ok")}
    if st is None:
        raise Missing(f"the store could not be opened ({ctx.store_error}); only store.json is shown above")
    q, a = st.quality, st.attrs
    src, c = a.get("source", {}), q.get("counts", {})
    dup, mm = q.get("duplicates", {}), q.get("mismatches", {})
    return {
        "head": head, "q": q,
        "files": {"data root": src.get("data_root"), "CT folder / labels": f"{src.get('cts')} / {src.get('labels')}",
                  "input files": c.get("n_files"), "ok": c.get("n_ok"), "quarantined": c.get("n_quarantined"),
                  "labels without a file": c.get("n_missing_file"), "patients (ok slices)": q.get("patients"),
                  "source bytes": src.get("bytes"), "store created": a.get("created"),
                  "schema / neurocache version": f"{a.get('schema_version')} / {a.get('package_version')}",
                  "images shape": a.get("shape")},
        "reasons": [{"reason": r, "files": n, "meaning": REASONS.get(r, "")}
                    for r, n in sorted(c.get("by_reason", {}).items(), key=lambda t: -t[1])],
        "fixes": [{"fix": k, "files": v} for k, v in q.get("fixes", {}).items()],
        "balance": [{"rows": k, **v} for k, v in q.get("class_balance", {}).items()],
        "syntaxes": [{"transfer syntax": k, "files": v} for k, v in q.get("transfer_syntaxes", {}).items()],
        "sizes": [{"size": k, "files": v} for k, v in q.get("image_sizes", {}).items()],
        "duplicates": {"duplicate IDs": len(dup.get("ids", [])),
                       "groups of identical files (content hash)": len(dup.get("content_hash_groups", [])),
                       "files without label": len(mm.get("files_without_label", [])),
                       "labels without file": len(mm.get("labels_without_file", []))},
        "outliers": [{"column": k, "what": v.get("what"), "n": v.get("n")} for k, v in q.get("outliers", {}).items()],
        "preprocess": a.get("preprocess", {}),
    }


def split_summary(split: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows per split (test, fold k), the train pool and all rows: slices, positives, prevalence, groups."""
    s = split.assign(part=np.where(split["test"].astype(bool), "test", "fold " + split["fold"].astype(str)))
    pool = s[~s["test"].astype(bool)]
    parts = [*s.groupby("part", sort=True), ("train pool (all folds)", pool), ("all", s)]
    return [{"split": name, "slices": len(d), "positives": int(d["label"].sum()),
             "prevalence": float(d["label"].mean()) if len(d) else float("nan"), "groups": int(d["group"].nunique())}
            for name, d in parts]


def split_manifest(ctx: Context) -> dict[str, Any]:
    from trainer.split import crossing_groups

    split = ctx.split
    if split is None:
        raise Missing("split.csv of the cv run was not found")
    crossing = [str(g) for g, _ in crossing_groups(split["group"], split["test"], split["fold"])]
    return {"rows": split_summary(split), "crossing": crossing, "n_groups": int(split["group"].nunique()),
            "max_fold": int(split["fold"].max())}


def config_environment(ctx: Context) -> dict[str, Any]:
    from trainer.evaluation import eval_settings

    env = ctx.store_json.get("environment", {})
    ev, w = eval_settings(ctx.cfg), ctx.wall_seconds
    head = {
        "seed": ctx.config.get("seed"), "bootstrap resamples (n_boot)": ev["n_boot"], "bootstrap seed (ci_seed)": ev["ci_seed"],
        "confidence level": ev["ci_level"], "patient aggregation": ev["patient_aggregation"],
        "device": env.get("device"), "GPU": env.get("gpu", "—"), "torch threads": env.get("torch_threads"),
        "wall time (s)": None if w is None else round(float(w), 1),
        "python": env.get("python"), "platform": env.get("platform"),
        "command": " ".join(map(str, ctx.run_args.get("argv", []))) or None,
    }
    return {"head": head, "packages": [{"package": k, "version": v} for k, v in env.get("packages", {}).items()]}


def cv_curves(ctx: Context) -> dict[str, Any]:
    d = ctx.cv_dir
    if d is None:
        raise Missing("the cv run folder (run_args.json cv_run) is not available")
    per_fold = [f.to_dict() for f in ctx.cv.per_fold] if ctx.cv else []
    cols = [c for c in ("fold", "early_stopping", "n_train", "n_holdout", "n_val", "best_val_auprc", "holdout_auc",
                        "val_auc", "train_auc", "seconds") if per_fold and c in per_fold[0]]
    return {"figures": [figure(d / F.CV_MEAN_ROC, "cross-validated ROC"), figure(d / F.CV_MEAN_PR, "cross-validated PR"),
                        figure(d / F.CV_HISTORY_PLOT, "training histories")], "per_fold": per_fold, "cols": cols}


def threshold_rows(summary: pd.DataFrame, threshold: float, around: int = 5) -> pd.DataFrame:
    """Rows of the CV threshold summary within ``around`` grid steps of ``threshold``."""
    i = int(np.argmin(np.abs(summary["threshold"].to_numpy(dtype=float) - float(threshold))))
    return summary.iloc[max(0, i - around): i + around + 1]


def threshold_table(ctx: Context) -> dict[str, Any]:
    d, sel = ctx.cv_dir, ctx.selection
    if d is None or sel is None or not (d / F.CV_THRESHOLDS_SUMMARY).is_file():
        raise Missing("cv_thresholds_summary.csv / threshold_selection.json of the cv run were not found")
    thr = float(sel["threshold"])
    near = threshold_rows(pd.read_csv(d / F.CV_THRESHOLDS_SUMMARY), thr)
    cols = [c for c in ("threshold", "sens_pooled", "spec_pooled", "f1_pooled", "sens_mean", "sens_std", "spec_mean",
                        "spec_std", "ppv_mean", "npv_mean", "f1_mean", "tp_sum", "fp_sum", "tn_sum", "fn_sum")
            if c in near.columns]
    recs = near[cols].to_dict("records")
    for r in recs:
        for k in ("tp_sum", "fp_sum", "tn_sum", "fn_sum"):
            if k in r:
                r[k] = int(r[k])
    chosen = next((i for i, r in enumerate(recs) if abs(float(r["threshold"]) - thr) < 1e-9), None)
    hist = d / F.THRESHOLD_HISTORY
    history = pd.read_csv(hist).drop(columns=["file"]).to_dict("records") if hist.is_file() else []
    return {"threshold": thr, "sel": sel, "rows": recs, "cols": cols, "chosen": chosen, "per_fold": sel.get("per_fold") or [],
            "bound": sel.get("sens_bound"), "history": history}


METRIC_ROWS = (("sens", "sensitivity", "wilson"), ("spec", "specificity", "wilson"), ("ppv", "PPV (precision)", "wilson"),
               ("npv", "NPV", "wilson"), ("auc", "ROC-AUC", "delong"), ("ap", "AUPRC (average precision)", None))


def metrics_rows(metrics: dict[str, Any], intervals: dict[str, Any] | None) -> dict[str, Any]:
    """The metrics table of one prediction set: estimate, Wilson/DeLong and bootstrap intervals, counts."""
    iv = intervals or {}
    pct = f"{round(100 * float(iv.get('level', 0.95)))}%"
    rows = []
    for key, name, method in METRIC_ROWS:
        e = iv.get(key) or {}
        rows.append({"metric": name, "estimate": fmt(metrics.get(key)),
                     f"{pct} CI (Wilson / DeLong; rows independent)": ci(e.get(method)) if method else "—",
                     f"{pct} CI (patient bootstrap)": ci(e.get("bootstrap")),
                     "counts": f"{e['k']}/{e['n']}" if "k" in e else ""})
    for key, name in (("f1", "F1"), ("acc", "accuracy"), ("prevalence", "prevalence")):
        rows.append({"metric": name, "estimate": fmt(metrics.get(key)), f"{pct} CI (Wilson / DeLong; rows independent)": "—",
                     f"{pct} CI (patient bootstrap)": "—", "counts": ""})
    return {"rows": rows, "bootstrap": iv.get("bootstrap")}


def operating_point_rows(points: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """One row per requested operating point (config ``operating_points``): threshold, sens/spec/PPV with Wilson CIs."""
    names = {"sens": "sensitivity", "spec": "specificity"}
    rows = []
    for p in points or []:
        row: dict[str, Any] = {"operating point": f"{names.get(p.get('kind'), p.get('kind'))} ≥ {fmt(p.get('target'), 2)}"}
        if "note" in p:
            rows.append({**row, "threshold": p["note"]})
            continue
        row["threshold"] = fmt(p.get("threshold"), 4)
        for k, name in (("sens", "sensitivity"), ("spec", "specificity"), ("ppv", "PPV")):
            e = p.get(k) or {}
            row[name] = f"{fmt(e.get('estimate'))} ({ci(e.get('wilson'))})"
        row["tp / fp / tn / fn"] = f"{p.get('tp')} / {p.get('fp')} / {p.get('tn')} / {p.get('fn')}"
        rows.append(row)
    return rows


def _evaluation(ev: dict[str, Any], metrics: dict[str, Any], what: str) -> dict[str, Any]:
    pt = ev.get("patient")
    return {"what": what, "head": {"slices": metrics.get("n"), "positive slices": metrics.get("n_pos"),
                                   "threshold": metrics.get("threshold")},
            "slices": metrics_rows(metrics, ev.get("intervals")), "patient": pt,
            "patients": metrics_rows(pt.get("metrics", {}), pt.get("intervals")) if pt else None,
            "points": operating_point_rows(ev.get("operating_points"))}


def oof_metrics(ctx: Context) -> dict[str, Any]:
    oof = ctx.cv.oof if ctx.cv else None
    if not oof:
        raise Missing("cv_metrics.json has no 'oof' evaluation")
    return _evaluation(oof, oof.get("metrics", {}), "OOF")


def test_metrics(ctx: Context) -> dict[str, Any] | None:
    if ctx.kind == "cv":
        return None
    if not ctx.test:
        raise Missing("test_metrics.json not found")
    return _evaluation(ctx.test.to_dict(), ctx.test.metrics, "test")


def confusion(ctx: Context) -> dict[str, Any]:
    ev = _evaluation_block(ctx)
    if not ev:
        raise Missing("no metrics for this run")
    m = ev if ctx.kind == "final" else ev.get("metrics", {})
    what = "test" if ctx.kind == "final" else "out-of-fold"
    tables = [{"m": m, "title": f"{what} slices at threshold {fmt(m.get('threshold'), 2)}"}]
    pt = (ev.get("patient") or {}).get("metrics")
    if pt:
        tables.append({"m": pt, "title": f"{what} patients at threshold {fmt(pt.get('threshold'), 2)}"})
    fig = figure(ctx.run / F.TEST_CONFUSION, "test confusion matrix") if ctx.kind == "final" else None
    return {"tables": tables, "figure": fig}


def calibration(ctx: Context) -> dict[str, Any]:
    cal = (_evaluation_block(ctx) or {}).get("calibration")
    if not cal:
        raise Missing("no calibration results for this run")
    png = ctx.run / (F.TEST_CALIBRATION_PLOT if ctx.kind == "final" else F.CV_CALIBRATION_PLOT)
    head = {"Brier score": cal.get("brier"), "expected calibration error (ECE)": cal.get("ece"),
            "Brier of predicting the prevalence": cal.get("brier_reference"),
            "calibration slope (1 = ideal)": cal.get("slope"), "calibration intercept (0 = ideal)": cal.get("intercept"),
            "calibration-in-the-large (slope fixed at 1)": cal.get("citl"),
            "bins": f"{cal.get('n_bins')} ({cal.get('strategy')})"}
    return {"figure": figure(png, "reliability diagram"), "head": head, "bins": cal.get("bins", [])}
