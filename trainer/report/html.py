"""``report.html``: one self-contained audit page per cv or final run.

Everything is inline: plots are base64 PNG data URIs, styles are one ``<style>`` block, there is
no script and no external link, so the file opens offline and can be archived or mailed as is.
The page is rendered by jinja2 from ``trainer/report/templates/`` (autoescaped); this module
gathers what each section shows from the run folder's typed results
(:class:`~trainer.runs.results.CVResult`, :class:`~trainer.runs.results.TestResult`,
:class:`~trainer.config.TrainConfig`) and computes nothing that the run did not already report.

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
``calibration``    reliability diagram, Brier, ECE, slope, intercept
``gallery``        the most confident false positives and false negatives, brain window
``saliency``       Grad-CAM overlays of test true positives, false negatives and the highest-scored
                   negatives (final runs; :mod:`trainer.saliency.gallery`)
``label-review``   the cv run's most suspect labels (``label_review.csv``), each slice between
                   its series neighbours, with its given label, OOF prob and suggested label
``shift``          the test rows against the distribution-shift reference (final runs): flag
                   rates, reasons, the embedding distance and key columns (:mod:`trainer.report.shift`)
================== =====================================================================

A section whose inputs are missing says so in place (``<p class="missing">``) instead of failing
the whole report; :func:`write_report` returns the ids of such sections.
"""

from __future__ import annotations

import base64
import html
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from trainer.report import cases as C
from trainer.report import sections as S
from trainer.report.format import ci, fmt, kv_frame
from trainer.report.shift import shift as shift_section
from trainer.runs.files import REPORT
from trainer.runs.folder import RunNotFoundError
from trainer.saliency.gallery import saliency_gallery

__all__ = ["SECTION_IDS", "build_report", "report_command", "write_report", "write_run_report"]

SECTION_IDS: tuple[str, ...] = (
    "promise", "summary", "data-manifest", "split-manifest", "config-environment", "cv-curves", "threshold-table",
    "oof-metrics", "test-metrics", "confusion", "calibration", "gallery", "saliency", "label-review", "shift",
)
TITLES = {
    "promise": "Promise vs delivery", "summary": "Summary", "data-manifest": "Data manifest", "split-manifest": "Split manifest",
    "config-environment": "Configuration and environment", "cv-curves": "Cross-validation curves",
    "threshold-table": "Threshold table", "oof-metrics": "Out-of-fold metrics (cross-validation)",
    "test-metrics": "Test metrics", "confusion": "Confusion matrix", "calibration": "Calibration",
    "gallery": "Most confident errors", "saliency": "Where the model looks", "label-review": "Labels to review",
    "shift": "Distribution shift",
}

#: section id -> the function gathering its template's ``d`` (raises :class:`~trainer.report.sections.Missing`).
SECTIONS: dict[str, Callable[[S.Context], Any]] = {
    "promise": S.promise, "summary": S.summary, "data-manifest": S.data_manifest, "split-manifest": S.split_manifest,
    "config-environment": S.config_environment, "cv-curves": S.cv_curves, "threshold-table": S.threshold_table,
    "oof-metrics": S.oof_metrics, "test-metrics": S.test_metrics, "confusion": S.confusion,
    "calibration": S.calibration, "gallery": C.gallery, "saliency": saliency_gallery, "label-review": C.label_review,
    "shift": shift_section,
}


def _kv_rows(d: dict[str, Any], nd: int = 4) -> list[dict[str, Any]]:
    """The rows of the ``kv`` macro's key/value table."""
    return [{str(k): v for k, v in r.items()} for r in kv_frame(d, nd).to_dict("records")]


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _escape(value: Any) -> Markup:
    """Every printed value: ``html.escape(quote=True)`` (the stdlib's entities), Markup as is."""
    return value if isinstance(value, Markup) else Markup(html.escape(str(value), quote=True))


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("trainer.report", "templates"), autoescape=True,
                             finalize=_escape, undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    env.filters.update(fmt=fmt, ci=ci, data_uri=_data_uri)
    env.globals.update(kv_rows=_kv_rows)
    return env


def _section(env: jinja2.Environment, sid: str, ctx: S.Context) -> tuple[str, bool]:
    """(inner HTML of section ``sid``, whether its inputs were missing)."""
    try:
        body = env.get_template(f"sections/{sid}.html.j2").render(c=ctx, d=SECTIONS[sid](ctx))
        return body, False
    except S.Missing as e:
        return f'<p class="missing">{_escape(str(e))}</p>', True
    except Exception as e:  # noqa: BLE001 - one broken section must not lose the others
        print(f"report.html: section {sid} failed: {type(e).__name__}: {e}", file=sys.stderr)
        msg = f"this section could not be built: {type(e).__name__}: {e}"
        return f'<p class="missing">{_escape(msg)}</p>', True


def build_report(run: str | Path, *, store_path: str | Path | None = None,
                 wall_seconds: float | None = None) -> tuple[str, list[str]]:
    """The report's HTML and the ids of sections that could not be filled."""
    ctx = S.load_context(Path(run), store_path, wall_seconds)
    env = _environment()
    sections, missing = [], []
    for sid in SECTION_IDS:
        body, was_missing = _section(env, sid, ctx)
        if was_missing:
            missing.append(sid)
        sections.append({"id": sid, "title": TITLES[sid], "body": Markup(body)})
    css = (Path(__file__).parent / "templates" / "style.css").read_text()
    doc = env.get_template("report.html.j2").render(
        title=f"neurocache {ctx.kind} run {ctx.run.name}", css=Markup(css), sections=sections)
    return doc + "\n", missing


def write_report(run: str | Path, *, store_path: str | Path | None = None, wall_seconds: float | None = None,
                 out: str | Path | None = None) -> tuple[Path, list[str]]:
    """Write ``report.html`` (default: in the run folder); returns (path, ids of unfilled sections)."""
    doc, missing = build_report(run, store_path=store_path, wall_seconds=wall_seconds)
    path = Path(out) if out else Path(run) / REPORT
    path.write_text(doc, encoding="utf-8")
    return path, missing


def _say_written(path: Path, missing: list[str]) -> None:
    if missing:
        print(f"report.html: sections without data: {', '.join(missing)}", file=sys.stderr)
    print(f"report: {path}")


def write_run_report(run: Path, wall_seconds: float | None) -> None:
    """``report.html`` at the end of ``trainer cv`` / ``trainer final``: written and announced, or a warning.

    The run's results are already written when this runs, so no failure here fails the run: any
    exception (a bug in a section template, a figure that cannot be decoded, a full disk) is
    printed as one warning naming ``python -m trainer report RUN`` to retry. This is the trainer's
    one deliberate catch-all besides MLflow logging (:func:`trainer.runs.tracking.track`).
    """
    try:
        path, missing = write_report(run, wall_seconds=wall_seconds)
    except Exception as e:  # noqa: BLE001 - the run is complete; only its page is missing
        print(f"warning: report.html could not be written ({type(e).__name__}: {e}); "
              f"retry with `python -m trainer report {run}`", file=sys.stderr)
        return
    _say_written(path, missing)


def report_command(run: Path, *, store_path: str | None = None, out: Path | None = None) -> int:
    """``python -m trainer report RUN``: (re)write a run's ``report.html``; its errors reach the user.

    Raises:
        RunNotFoundError: ``run`` does not exist.
    """
    if not run.is_dir():
        raise RunNotFoundError(f"run folder {run} does not exist")
    path, missing = write_report(run, store_path=store_path, out=out)
    _say_written(path, missing)
    return 0
