"""``report.html``: one self-contained audit page per cv or final run.

Everything is inline: plots are base64 PNG data URIs, styles are one ``<style>`` block, there is
no script and no external link, so the file opens offline and can be archived or mailed as is.

Sections (stable ``id`` attributes, in this order):

================== =====================================================================
``promise``        what CV promised at the threshold beside what the test delivered (final
                   runs; a cv run shows its promise), and every warning of the run
``summary``        run kind, folder, headline numbers
``data-manifest``  the store: files, ok, quarantined by reason, fixes, class balance,
                   transfer syntaxes, image sizes, duplicates, outliers, preprocessing
``split-manifest`` slices/positives/groups per split and fold; the no-group-crosses check
``config-environment`` seed, bootstrap settings, device, wall time, package versions, config
``cv-curves``      cross-validated ROC / PR with fold bands, training histories, per fold
``threshold-table`` the CV threshold summary around the chosen threshold
``oof-metrics``    pooled out-of-fold metrics with intervals (slice and patient level)
``test-metrics``   test metrics with intervals (final runs; a cv run says how to get them)
``confusion``      confusion matrix at the threshold (test for final, OOF for cv)
``calibration``    reliability diagram, Brier, slope, intercept
``gallery``        the most confident false positives and false negatives, brain window
================== =====================================================================

A section whose inputs are missing says so in place (``<p class="missing">``) instead of failing
the whole report; :func:`write_report` returns the ids of such sections.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["SECTION_IDS", "build_report", "write_report"]

SECTION_IDS: tuple[str, ...] = (
    "promise", "summary", "data-manifest", "split-manifest", "config-environment", "cv-curves", "threshold-table",
    "oof-metrics", "test-metrics", "confusion", "calibration", "gallery",
)
TITLES = {
    "promise": "Promise vs delivery", "summary": "Summary", "data-manifest": "Data manifest", "split-manifest": "Split manifest",
    "config-environment": "Configuration and environment", "cv-curves": "Cross-validation curves",
    "threshold-table": "Threshold table", "oof-metrics": "Out-of-fold metrics (cross-validation)",
    "test-metrics": "Test metrics", "confusion": "Confusion matrix", "calibration": "Calibration",
    "gallery": "Most confident errors",
}

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1100px;padding:1em 2em;color:#222}
h1{font-size:1.6em;margin-bottom:.2em} h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
h3{font-size:1.05em;margin-top:1.3em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right;vertical-align:top}
th{background:#f3f3f3} td.l,th.l{text-align:left}
tr.chosen td{background:#fff3c4;font-weight:bold}
.pass{color:#15692b;font-weight:bold} .fail{color:#a30d0d;font-weight:bold}
.missing{color:#8a5a00;background:#fff8e6;padding:.4em .6em;border-left:4px solid #e0a800}
.note{color:#555;font-size:.9em}
.warn{color:#7a2e00;background:#fff0e6;padding:.4em .6em;border-left:4px solid #d9480f;margin:.3em 0}
img.plot{max-width:100%;border:1px solid #eee;margin:.3em}
.gallery{display:flex;flex-wrap:wrap;gap:.8em}
.gallery figure{margin:0;text-align:center;font-size:.8em}
.gallery img{width:170px;height:170px;image-rendering:pixelated;border:1px solid #999}
code{background:#f5f5f5;padding:0 .2em}
nav a{margin-right:.8em}
"""


class Missing(Exception):
    """A section's input is not available; the message is shown in the report."""


# --------------------------------------------------------------------------------------------
# small HTML helpers
# --------------------------------------------------------------------------------------------
def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def fmt(x: Any, nd: int = 3) -> str:
    """Numbers rounded, None/NaN as an em dash."""
    if x is None:
        return "—"
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        if not math.isfinite(float(x)):
            return "—"
        return f"{float(x):.{nd}f}"
    return esc(x)


def ci(pair: Any, nd: int = 3) -> str:
    if not pair or pair[0] is None or pair[1] is None:
        return "—"
    return f"{fmt(pair[0], nd)} – {fmt(pair[1], nd)}"


def table(rows: list[dict[str, Any]], cols: list[str] | None = None, *, left: tuple[str, ...] = (),
          highlight: Callable[[dict[str, Any]], bool] | None = None, nd: int = 3, raw: tuple[str, ...] = (),
          cls: str = "") -> str:
    if not rows:
        return '<p class="note">(none)</p>'
    cols = cols or list(rows[0].keys())
    head = "".join(f'<th class="{"l" if c in left else ""}">{esc(c)}</th>' for c in cols)
    body = []
    for r in rows:
        tr = ' class="chosen"' if highlight and highlight(r) else ""
        cells = "".join(
            f'<td class="{"l" if c in left else ""}">{r.get(c, "") if c in raw else fmt(r.get(c), nd)}</td>' for c in cols
        )
        body.append(f"<tr{tr}>{cells}</tr>")
    c = f' class="{cls}"' if cls else ""
    return f"<table{c}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def kv_table(d: dict[str, Any], nd: int = 4) -> str:
    rows = [{"key": k, "value": v if not isinstance(v, (dict, list)) else json.dumps(v)} for k, v in d.items()]
    return table(rows, ["key", "value"], left=("key", "value"), nd=nd)


def img_png(data: bytes, alt: str, cls: str = "plot") -> str:
    return f'<img class="{cls}" alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'


def img_file(path: Path, alt: str) -> str:
    if not Path(path).is_file():
        return f'<p class="missing">{esc(Path(path).name)} not found in {esc(Path(path).parent)}</p>'
    return img_png(Path(path).read_bytes(), alt)


# --------------------------------------------------------------------------------------------
# context: everything the sections read
# --------------------------------------------------------------------------------------------
def _context(run: Path, store_path: str | Path | None, wall_seconds: float | None) -> dict[str, Any]:
    from trainer.run_folder import load_run

    r = load_run(run, require=())  # whatever the run has; missing pieces are None and their sections say so
    ctx: dict[str, Any] = {"run": r.path, "kind": r.kind, "config": r.config, "cfg": r.train_config, "store_json": r.store,
                           "run_args": r.run_args, "cv_dir": r.path if r.kind == "cv" else r.cv_run,
                           "cv_metrics": r.cv_metrics, "selection": r.selection, "split": r.split,
                           "test_metrics": r.metrics if r.kind == "final" else None, "card": r.model_card,
                           "threshold": r.threshold}
    ctx["wall_seconds"] = wall_seconds if wall_seconds is not None else (
        (ctx["test_metrics"] or {}).get("wall_seconds") if ctx["kind"] == "final" else (ctx["cv_metrics"] or {}).get("wall_seconds"))
    # the store (manifest, gallery images)
    ctx["store"], ctx["store_error"] = None, None
    sp = store_path or ctx["store_json"].get("path")
    if sp:
        try:
            from neurocache.store import open_store

            st = open_store(sp)
            want = ctx["store_json"].get("fingerprint")
            if want and st.fingerprint != want:
                ctx["store_error"] = (f"the store at {sp} has fingerprint {st.fingerprint[:12]}…, not the run's "
                                      f"{want[:12]}…; it is not the store this run used")
            else:
                ctx["store"] = st
        except Exception as e:  # noqa: BLE001 - shown in the report
            ctx["store_error"] = f"{type(e).__name__}: {e}"
    else:
        ctx["store_error"] = "the run's store.json names no store path"
    return ctx


def _eval_block(ctx: dict[str, Any]) -> dict[str, Any] | None:
    """The evaluation dict of this run: test_metrics (final) or cv_metrics['oof'] (cv)."""
    if ctx["kind"] == "final":
        return ctx["test_metrics"]
    return (ctx["cv_metrics"] or {}).get("oof")


# --------------------------------------------------------------------------------------------
# sections
# --------------------------------------------------------------------------------------------
def run_warnings(ctx: dict[str, Any]) -> list[str]:
    """Every warning of the run: stuck folds and threshold spread (cv), the final model's (final)."""
    out = list((ctx["cv_metrics"] or {}).get("warnings") or [])
    out += list((ctx["test_metrics"] or {}).get("warnings") or [])
    return out


def sec_promise(ctx: dict[str, Any]) -> str:
    from trainer.evaluation.promise import NAMES

    parts = [f'<p class="warn">{esc(w)}</p>' for w in run_warnings(ctx)]
    table_ = (ctx["test_metrics"] or {}).get("promised")
    if table_ is None:
        oof = (ctx["cv_metrics"] or {}).get("oof")
        if not oof:
            raise Missing("cv_metrics.json has no pooled OOF evaluation")
        from trainer.evaluation.promise import promise_vs_delivery

        table_ = promise_vs_delivery(oof, {}, None, float(ctx["threshold"]))
        parts.append('<p class="note">The CV promise at the chosen threshold. The held-out test has not been scored: '
                     f"<code>python -m trainer final --cv-run {esc(ctx['run'])}</code> adds what it delivers.</p>")
    rows = [{"metric": NAMES[r["metric"]], "CV (pooled OOF)": fmt(r["cv"]), "CV interval": ci([r["cv_lo"], r["cv_hi"]]),
             "test": fmt(r["test"]), "test interval": ci([r["test_lo"], r["test_hi"]]),
             "test − CV": fmt(r["diff"]),
             "held?": "" if r["test"] is None else ('<span class="fail">outside the CV interval</span>' if r["outside"]
                                                    else '<span class="pass">within</span>')}
            for r in table_["rows"]]
    parts.insert(0, f"<p>At threshold <b>{fmt(table_['threshold'], 4)}</b>. {esc(table_['what'])}</p>"
                 + table(rows, list(rows[0]), left=("metric",), raw=("held?",)))
    return "".join(parts)


def sec_summary(ctx: dict[str, Any]) -> str:
    run = ctx["run"]
    rows = {"run folder": str(run.resolve()), "kind": ctx["kind"],
            "report written": _dt.datetime.now().isoformat(timespec="seconds")}
    if ctx["cv_dir"] is not None and ctx["kind"] == "final":
        rows["cv run"] = str(ctx["cv_dir"])
    if ctx["threshold"] is not None:
        rows["decision threshold"] = ctx["threshold"]
    cm = ctx["cv_metrics"] or {}
    if cm:
        rows["CV AUPRC (OOF, mean ± sd over folds)"] = f"{fmt(cm.get('oof_ap_mean'))} ± {fmt(cm.get('oof_ap_std'))}"
        rows["CV early stopping / calibration"] = f"{cm.get('early_stopping', 'val_fold')} / {cm.get('calibration', 'none')}"
        for f in cm.get("stuck_folds") or []:
            rows[f"fold {f['fold']} did not learn"] = f["why"]
        rows["CV ROC-AUC (OOF, mean ± sd over folds)"] = f"{fmt(cm.get('oof_auc_mean'))} ± {fmt(cm.get('oof_auc_std'))}"
    tm = ctx["test_metrics"]
    if tm:
        iv = tm.get("intervals", {})
        rows["test ROC-AUC (95% DeLong)"] = f"{fmt(tm.get('auc'))} ({ci((iv.get('auc') or {}).get('delong'))})"
        rows["test AUPRC (95% patient bootstrap)"] = f"{fmt(tm.get('ap'))} ({ci((iv.get('ap') or {}).get('bootstrap'))})"
        rows["test sensitivity / specificity"] = f"{fmt(tm.get('sens'))} / {fmt(tm.get('spec'))}"
    elif ctx["kind"] == "cv":
        rows["test set"] = "untouched by this cv run; see the test-metrics section"
    return kv_table(rows)


def sec_data_manifest(ctx: dict[str, Any]) -> str:
    from neurocache.reasons import REASONS

    st, sj = ctx["store"], ctx["store_json"]
    parts = [kv_table({"store": sj.get("path"), "fingerprint (preprocessing)": sj.get("fingerprint"),
                       "ok slices used by the run": sj.get("n_ok")})]
    if st is None:
        raise Missing(f"the store could not be opened ({ctx['store_error']}); only store.json is shown above")
    q = st.quality
    a = st.attrs
    src = a.get("source", {})
    c = q.get("counts", {})
    parts.append("<h3>Files</h3>" + kv_table({
        "data root": src.get("data_root"), "CT folder / labels": f"{src.get('cts')} / {src.get('labels')}",
        "input files": c.get("n_files"), "ok": c.get("n_ok"), "quarantined": c.get("n_quarantined"),
        "labels without a file": c.get("n_missing_file"), "patients (ok slices)": q.get("patients"),
        "source bytes": src.get("bytes"), "store created": a.get("created"),
        "schema / neurocache version": f"{a.get('schema_version')} / {a.get('package_version')}",
        "images shape": a.get("shape"),
    }))
    by_reason = c.get("by_reason", {})
    rows = [{"reason": r, "files": n, "meaning": REASONS.get(r, "")} for r, n in sorted(by_reason.items(), key=lambda t: -t[1])]
    parts.append("<h3>Quarantined and missing, by reason</h3>" + table(rows, ["reason", "files", "meaning"], left=("reason", "meaning")))
    fixes = q.get("fixes", {})
    parts.append("<h3>Fixes applied</h3>" + table([{"fix": k, "files": v} for k, v in fixes.items()], ["fix", "files"], left=("fix",)))
    cb = q.get("class_balance", {})
    rows = [{"rows": k, **v} for k, v in cb.items()]
    parts.append("<h3>Class balance</h3>" + table(rows, ["rows", "n_label0", "n_label1", "positive_fraction", "imbalance_ratio"], left=("rows",)))
    ts = q.get("transfer_syntaxes", {})
    parts.append("<h3>Transfer syntaxes</h3>" + table([{"transfer syntax": k, "files": v} for k, v in ts.items()], left=("transfer syntax",)))
    sizes = q.get("image_sizes", {})
    parts.append("<h3>Image sizes (rows × columns)</h3>" + table([{"size": k, "files": v} for k, v in sizes.items()], left=("size",)))
    dup = q.get("duplicates", {})
    mm = q.get("mismatches", {})
    parts.append("<h3>Duplicates and mismatches</h3>" + kv_table({
        "duplicate IDs": len(dup.get("ids", [])), "groups of identical files (content hash)": len(dup.get("content_hash_groups", [])),
        "files without label": len(mm.get("files_without_label", [])), "labels without file": len(mm.get("labels_without_file", [])),
    }))
    outl = q.get("outliers", {})
    parts.append("<h3>Header / HU outliers (beyond 5 scaled MADs)</h3>" + table(
        [{"column": k, "what": v.get("what"), "n": v.get("n")} for k, v in outl.items()], ["column", "what", "n"], left=("column", "what")))
    parts.append("<h3>Preprocessing (fingerprinted)</h3>" + kv_table(a.get("preprocess", {})))
    return "".join(parts)


def split_summary(split: pd.DataFrame) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows per split (test, fold k, train pool) and the groups found in more than one split."""
    s = split.assign(part=np.where(split["test"].astype(bool), "test", "fold " + split["fold"].astype(str)))
    rows = []
    for part, d in s.groupby("part", sort=True):
        rows.append({"split": part, "slices": len(d), "positives": int(d["label"].sum()),
                     "prevalence": float(d["label"].mean()), "groups": int(d["group"].nunique())})
    pool = s[~s["test"].astype(bool)]
    rows.append({"split": "train pool (all folds)", "slices": len(pool), "positives": int(pool["label"].sum()),
                 "prevalence": float(pool["label"].mean()) if len(pool) else float("nan"), "groups": int(pool["group"].nunique())})
    rows.append({"split": "all", "slices": len(s), "positives": int(s["label"].sum()),
                 "prevalence": float(s["label"].mean()), "groups": int(s["group"].nunique())})
    per_group = s.groupby("group")["part"].nunique()
    crossing = sorted(per_group[per_group > 1].index.astype(str))
    return rows, crossing


def sec_split_manifest(ctx: dict[str, Any]) -> str:
    split = ctx["split"]
    if split is None:
        raise Missing("split.csv of the cv run was not found")
    rows, crossing = split_summary(split)
    gb = ctx["config"].get("group_by", "patient")
    parts = [f'<p class="note">Group key: <code>{esc(gb)}</code> (keyed hash from the DICOM header; '
             f"rows without one form a group of one). Split seed {fmt(ctx['config'].get('seed'))}, "
             f"test_size {fmt(ctx['config'].get('test_size'))}, k_folds {fmt(ctx['config'].get('k_folds'))}.</p>",
             table(rows, ["split", "slices", "positives", "prevalence", "groups"], left=("split",))]
    n_groups = int(split["group"].nunique())
    if crossing:
        parts.append(f'<p id="group-check" class="fail">FAIL: {len(crossing)} group(s) appear in more than one split/fold: '
                     f"{esc(', '.join(crossing[:20]))}</p>")
    else:
        parts.append(f'<p id="group-check" class="pass">PASS: no group crosses splits — each of the {n_groups} groups '
                     f"lies in exactly one of test / fold 0…{int(split['fold'].max())}.</p>")
    tm = ctx["test_metrics"]
    if tm:
        parts.append("<h3>Final model</h3>" + kv_table({
            "trained on (train pool minus holdout)": tm.get("n_train"),
            "early-stopping holdout (grouped, from the train pool)": tm.get("n_holdout"),
            "test (scored once)": tm.get("n_test")}))
    return "".join(parts)


def sec_config_env(ctx: dict[str, Any]) -> str:
    cfg = ctx["config"]
    env = ctx["store_json"].get("environment", {})
    from trainer.evaluation import eval_settings

    ev = eval_settings(ctx["cfg"])
    w = ctx["wall_seconds"]
    head = {
        "seed": cfg.get("seed"), "bootstrap resamples (n_boot)": ev["n_boot"], "bootstrap seed (ci_seed)": ev["ci_seed"],
        "confidence level": ev["ci_level"], "patient aggregation": ev["patient_aggregation"],
        "device": env.get("device"), "GPU": env.get("gpu", "—"), "torch threads": env.get("torch_threads"),
        "wall time (s)": None if w is None else round(float(w), 1),
        "python": env.get("python"), "platform": env.get("platform"),
        "command": " ".join(map(str, ctx["run_args"].get("argv", []))) or None,
    }
    parts = [kv_table(head)]
    pk = env.get("packages", {})
    parts.append("<h3>Package versions</h3>" + table([{"package": k, "version": v} for k, v in pk.items()],
                                                     ["package", "version"], left=("package", "version")))
    parts.append("<h3>Effective configuration</h3>" + kv_table(cfg))
    return "".join(parts)


def sec_cv_curves(ctx: dict[str, Any]) -> str:
    d = ctx["cv_dir"]
    if d is None:
        raise Missing("the cv run folder (run_args.json cv_run) is not available")
    parts = [img_file(d / "cv_mean_roc.png", "cross-validated ROC"), img_file(d / "cv_mean_pr.png", "cross-validated PR"),
             '<p class="note">Thin lines: folds; thick: mean over folds; band: ±1 sample SD across folds.</p>',
             "<h3>Training histories</h3>", img_file(d / "cv_history.png", "training histories")]
    cm = ctx["cv_metrics"] or {}
    if cm.get("per_fold"):
        cols = [c for c in ("fold", "early_stopping", "n_train", "n_holdout", "n_val", "best_val_auprc", "holdout_auc",
                            "val_auc", "train_auc", "seconds") if c in cm["per_fold"][0]]
        parts.append("<h3>Per fold</h3>" + table(cm["per_fold"], cols)
                     + '<p class="note">best_val_auprc and holdout_auc: on the rows the fold model early-stopped and was '
                       "calibrated on (its inner holdout, or with cv_early_stopping: val_fold its validation fold); "
                       "val_auc: its validation fold, scored once.</p>")
    return "".join(parts)


def threshold_rows(summary: pd.DataFrame, threshold: float, around: int = 5) -> pd.DataFrame:
    """Rows of the CV threshold summary within ``around`` grid steps of ``threshold``."""
    i = int(np.argmin(np.abs(summary["threshold"].to_numpy(dtype=float) - float(threshold))))
    return summary.iloc[max(0, i - around): i + around + 1]


def sec_threshold_table(ctx: dict[str, Any]) -> str:
    d, sel = ctx["cv_dir"], ctx["selection"]
    if d is None or sel is None or not (d / "cv_thresholds_summary.csv").is_file():
        raise Missing("cv_thresholds_summary.csv / threshold_selection.json of the cv run were not found")
    summ = pd.read_csv(d / "cv_thresholds_summary.csv")
    thr = float(sel["threshold"])
    near = threshold_rows(summ, thr)
    cols = [c for c in ("threshold", "sens_pooled", "spec_pooled", "f1_pooled", "sens_mean", "sens_std", "spec_mean",
                        "spec_std", "ppv_mean", "npv_mean", "f1_mean", "tp_sum", "fp_sum", "tn_sum", "fn_sum")
            if c in near.columns]
    recs = near[cols].to_dict("records")
    for r in recs:
        for k in ("tp_sum", "fp_sum", "tn_sum", "fn_sum"):
            if k in r:
                r[k] = int(r[k])
    strat = sel.get("strategy")
    extra = f", sens_target {sel.get('sens_target')}" if strat == "sens_target" else ""
    on = ("the pooled out-of-fold predictions (<code>_pooled</code> columns)" if sel.get("pooling") == "pooled"
          else "the mean over folds of the out-of-fold threshold tables (<code>_mean</code> columns)")
    per_fold = sel.get("per_fold") or []
    return (f'<p>Chosen threshold <b>{fmt(thr, 4)}</b> by <code>{esc(strat)}</code>{esc(extra)} on {on} '
            f"(highlighted), among {fmt(sel.get('n_candidates'))} candidates ({esc(sel.get('candidates', 'grid'))}). "
            "Means and SDs are across folds; counts are summed.</p>"
            + table(recs, cols, highlight=lambda r: abs(float(r["threshold"]) - thr) < 1e-9)
            + ("<h3>Each fold at the chosen threshold</h3>" + table(per_fold, list(per_fold[0])) if per_fold else ""))


METRIC_ROWS = (("sens", "sensitivity", "wilson"), ("spec", "specificity", "wilson"), ("ppv", "PPV (precision)", "wilson"),
               ("npv", "NPV", "wilson"), ("auc", "ROC-AUC", "delong"), ("ap", "AUPRC (average precision)", None))


def metrics_table(metrics: dict[str, Any], intervals: dict[str, Any] | None) -> str:
    iv = intervals or {}
    level = iv.get("level", 0.95)
    pct = f"{round(100 * float(level))}%"
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
    cols = list(rows[0].keys())
    out = table(rows, cols, left=("metric",), raw=tuple(cols))
    b = iv.get("bootstrap")
    if b:
        out += (f'<p class="note">Bootstrap: {fmt(b.get("n_boot"))} resamples of {fmt(b.get("n_units"))} '
                f'{esc(b.get("unit"))}s with replacement (seed {fmt(b.get("seed"))}, {esc(b.get("method"))} interval); '
                f'{fmt(b.get("n_used"))} used, {fmt(b.get("n_skipped"))} skipped for holding one class only.</p>')
    return out


def _eval_tables(ev: dict[str, Any], metrics: dict[str, Any], what: str) -> str:
    parts = [f"<h3>Slice level ({esc(what)})</h3>",
             kv_table({"slices": metrics.get("n"), "positive slices": metrics.get("n_pos"), "threshold": metrics.get("threshold")}),
             metrics_table(metrics, ev.get("intervals"))]
    pt = ev.get("patient")
    if pt:
        parts += [f"<h3>Patient level ({esc(what)})</h3>",
                  f'<p class="note">Score: {esc(pt.get("score"))}; label: {esc(pt.get("label_rule"))}; '
                  f"predicted positive when the score ≥ the threshold. Config key <code>patient_aggregation</code> "
                  f"= <code>{esc(pt.get('aggregation'))}</code>.</p>",
                  kv_table({"patients": pt.get("n_patients"), "positive patients": pt.get("n_pos_patients")}),
                  metrics_table(pt.get("metrics", {}), pt.get("intervals"))]
    return "".join(parts)


def sec_oof_metrics(ctx: dict[str, Any]) -> str:
    oof = (ctx["cv_metrics"] or {}).get("oof")
    if not oof:
        raise Missing("cv_metrics.json has no 'oof' evaluation (a cv run made before intervals were added)")
    return ('<p class="note">Out-of-fold predictions of the k fold models pooled, at the selected threshold. '
            "The threshold was chosen on these same predictions, so threshold metrics here are optimistic; "
            "the test set (final run) is the unbiased estimate.</p>" + _eval_tables(oof, oof.get("metrics", {}), "OOF"))


def sec_test_metrics(ctx: dict[str, Any]) -> str:
    if ctx["kind"] == "cv":
        return ('<p class="missing">This is a cv run: the held-out test set has not been scored. Run '
                f"<code>python -m trainer final --cv-run {esc(ctx['run'])}</code> (or <code>make final</code>) "
                "to train the final model and score the test set once; its report.html has this section.</p>")
    tm = ctx["test_metrics"]
    if not tm:
        raise Missing("test_metrics.json not found")
    return _eval_tables(tm, tm, "test")


def confusion_html(m: dict[str, Any], title: str) -> str:
    return (f'<table class="confusion"><caption>{esc(title)}</caption>'
            '<tr><th></th><th>predicted 0</th><th>predicted 1</th></tr>'
            f'<tr><th>label 0</th><td>TN {fmt(m.get("tn"))}</td><td>FP {fmt(m.get("fp"))}</td></tr>'
            f'<tr><th>label 1</th><td>FN {fmt(m.get("fn"))}</td><td>TP {fmt(m.get("tp"))}</td></tr></table>')


def sec_confusion(ctx: dict[str, Any]) -> str:
    ev = _eval_block(ctx)
    if not ev:
        raise Missing("no metrics for this run")
    m = ev if ctx["kind"] == "final" else ev.get("metrics", {})
    what = "test" if ctx["kind"] == "final" else "out-of-fold"
    parts = [confusion_html(m, f"{what} slices at threshold {fmt(m.get('threshold'), 2)}")]
    pt = (ev.get("patient") or {}).get("metrics")
    if pt:
        parts.append(confusion_html(pt, f"{what} patients at threshold {fmt(pt.get('threshold'), 2)}"))
    if ctx["kind"] == "final":
        parts.append(img_file(ctx["run"] / "test_confusion.png", "test confusion matrix"))
    return "".join(parts)


def sec_calibration(ctx: dict[str, Any]) -> str:
    ev = _eval_block(ctx)
    cal = (ev or {}).get("calibration")
    if not cal:
        raise Missing("no calibration results for this run")
    png = ctx["run"] / ("test_calibration.png" if ctx["kind"] == "final" else "cv_calibration.png")
    head = {"Brier score": cal.get("brier"), "Brier of predicting the prevalence": cal.get("brier_reference"),
            "calibration slope (1 = ideal)": cal.get("slope"), "calibration intercept (0 = ideal)": cal.get("intercept"),
            "calibration-in-the-large (slope fixed at 1)": cal.get("citl"), "expected calibration error": cal.get("ece"),
            "bins": f"{cal.get('n_bins')} ({cal.get('strategy')})"}
    return (img_file(png, "reliability diagram") + kv_table(head)
            + '<p class="note">Slope and intercept: logistic regression of the label on logit(p) (unpenalised). '
              "A slope below 1 means over-confident predictions.</p>"
            + "<h3>Bins</h3>" + table(cal.get("bins", []), ["lo", "hi", "n", "mean_pred", "frac_pos"]))


def _slice_png(hu: np.ndarray, center: float, width: float) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg

    from neurocache.plot import brain_window

    buf = io.BytesIO()
    mpimg.imsave(buf, brain_window(hu, center, width), cmap="gray", vmin=0.0, vmax=1.0, format="png")
    return buf.getvalue()


def gallery_cases(pred: pd.DataFrame, threshold: float, n: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``n`` most confident false positives (label 0, highest prob >= threshold) and false
    negatives (label 1, lowest prob < threshold)."""
    fp = pred[(pred["label"] == 0) & (pred["prob"] >= threshold)].sort_values(["prob", "ID"], ascending=[False, True])
    fn = pred[(pred["label"] == 1) & (pred["prob"] < threshold)].sort_values(["prob", "ID"], ascending=[True, True])
    return fp.head(n), fn.head(n)


def sec_gallery(ctx: dict[str, Any]) -> str:
    run, thr = ctx["run"], ctx["threshold"]
    src = run / ("test_predictions.csv" if ctx["kind"] == "final" else "cv_oof_predictions.csv")
    if thr is None or not src.is_file():
        raise Missing(f"{src.name} or the threshold is missing")
    if ctx["store"] is None:
        raise Missing(f"the store could not be opened ({ctx['store_error']}), so no images can be shown")
    pred = pd.read_csv(src, dtype={"ID": str})
    n = int(ctx["cfg"].gallery_n)
    fp, fn = gallery_cases(pred, float(thr), n)
    wins = ctx["config"].get("windows") or [[40, 80]]
    center, width = float(wins[0][0]), float(wins[0][1])
    feats = ctx["store"].features
    rows = dict(zip(feats["ID"].astype(str), feats["row"].astype(int)))
    what = "test" if ctx["kind"] == "final" else "out-of-fold"
    parts = [f'<p class="note">{esc(what)} slices shown through the training window (center {center:g}, width {width:g} HU), '
             f"from the cached HU image; threshold {fmt(float(thr), 2)}; up to {n} per kind (config key gallery_n).</p>"]
    for title, cases, cid in (("False positives (label 0, most confident first)", fp, "gallery-fp"),
                              ("False negatives (label 1, most confident first)", fn, "gallery-fn")):
        figs = []
        for _, r in cases.iterrows():
            row = rows.get(str(r["ID"]), -1)
            if row < 0:
                figs.append(f'<figure><p class="missing">{esc(r["ID"])}: not in the store</p></figure>')
                continue
            hu = np.asarray(ctx["store"].images[row])
            figs.append(f'<figure class="case">{img_png(_slice_png(hu, center, width), str(r["ID"]), cls="case")}'
                        f'<figcaption>{esc(r["ID"])}<br>p = {float(r["prob"]):.3f}, label {int(r["label"])}</figcaption></figure>')
        body = "".join(figs) if figs else '<p class="note">(none at this threshold)</p>'
        parts.append(f'<h3>{esc(title)}</h3><div class="gallery" id="{cid}">{body}</div>')
    return "".join(parts)


SECTIONS: dict[str, Callable[[dict[str, Any]], str]] = {
    "promise": sec_promise, "summary": sec_summary, "data-manifest": sec_data_manifest, "split-manifest": sec_split_manifest,
    "config-environment": sec_config_env, "cv-curves": sec_cv_curves, "threshold-table": sec_threshold_table,
    "oof-metrics": sec_oof_metrics, "test-metrics": sec_test_metrics, "confusion": sec_confusion,
    "calibration": sec_calibration, "gallery": sec_gallery,
}


def build_report(run: str | Path, *, store_path: str | Path | None = None,
                 wall_seconds: float | None = None) -> tuple[str, list[str]]:
    """The report's HTML and the ids of sections that could not be filled."""
    ctx = _context(Path(run), store_path, wall_seconds)
    body, missing = [], []
    for sid in SECTION_IDS:
        try:
            inner = SECTIONS[sid](ctx)
        except Missing as e:
            inner = f'<p class="missing">{esc(e)}</p>'
            missing.append(sid)
        except Exception as e:  # noqa: BLE001 - one broken section must not lose the others
            inner = f'<p class="missing">this section could not be built: {esc(type(e).__name__)}: {esc(e)}</p>'
            missing.append(sid)
            print(f"report.html: section {sid} failed: {type(e).__name__}: {e}", file=sys.stderr)
        body.append(f'<section id="{sid}"><h2>{esc(TITLES[sid])}</h2>{inner}</section>')
    nav = "".join(f'<a href="#{sid}">{esc(TITLES[sid])}</a>' for sid in SECTION_IDS)
    title = f"neurocache {ctx['kind']} run {ctx['run'].name}"
    doc = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
           f"<style>{CSS}</style></head><body><h1>{esc(title)}</h1><nav>{nav}</nav>"
           + "".join(body) + "</body></html>\n")
    return doc, missing


def write_report(run: str | Path, *, store_path: str | Path | None = None, wall_seconds: float | None = None,
                 out: str | Path | None = None) -> tuple[Path, list[str]]:
    """Write ``report.html`` (default: in the run folder); returns (path, ids of unfilled sections)."""
    doc, missing = build_report(run, store_path=store_path, wall_seconds=wall_seconds)
    path = Path(out) if out else Path(run) / "report.html"
    path.write_text(doc, encoding="utf-8")
    return path, missing
