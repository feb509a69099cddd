"""report.html of the tiny cv and final runs, read back with the stdlib HTML parser; the new
evaluation keys of cv_metrics.json / test_metrics.json."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _tiny_runs import TINY, tiny_runs
from sklearn.metrics import roc_auc_score

from trainer.report.html import SECTION_IDS, write_report


@pytest.fixture(scope="module")
def runs(trainer_store, tmp_path_factory) -> dict[str, Path]:
    return tiny_runs(trainer_store, tmp_path_factory.getbasetemp() / "eval_runs")


class Page(HTMLParser):
    """Sections (id -> text, tags, attributes) of a report."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.sections: dict[str, dict] = {}
        self.order: list[str] = []
        self.cur: str | None = None
        self.all_tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.all_tags.append((tag, a))
        if tag == "section":
            self.cur = a.get("id")
            self.order.append(self.cur)
            self.sections[self.cur] = {"text": [], "tags": []}
        elif self.cur:
            self.sections[self.cur]["tags"].append((tag, a))

    def handle_endtag(self, tag):
        if tag == "section":
            self.cur = None

    def handle_data(self, data):
        if self.cur:
            self.sections[self.cur]["text"].append(data)

    def text(self, sid: str) -> str:
        return " ".join(self.sections[sid]["text"])

    def tags(self, sid: str, name: str) -> list[dict]:
        return [a for t, a in self.sections[sid]["tags"] if t == name]


def _parse(path: Path) -> Page:
    p = Page()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def _self_contained(page: Page) -> None:
    names = {t for t, _ in page.all_tags}
    assert "script" not in names and "link" not in names and "iframe" not in names
    for tag, a in page.all_tags:
        for attr in ("src", "href"):
            v = a.get(attr)
            if v is not None:
                assert v.startswith("data:image/png;base64,") or v.startswith("#"), (tag, v[:60])
        if tag == "img":
            raw = base64.b64decode(a["src"].split(",", 1)[1])
            assert raw[:8] == b"\x89PNG\r\n\x1a\n"


def test_final_report_has_every_section_with_content(runs):
    path = runs["final"] / "report.html"
    assert path.is_file()
    page = _parse(path)
    assert page.order == list(SECTION_IDS)
    _self_contained(page)
    assert "missing" not in {c for a in sum((page.tags(s, "p") for s in SECTION_IDS), []) for c in [a.get("class")]}

    dm = page.text("data-manifest")
    for word in ("input files", "quarantined", "Quarantined and missing, by reason", "Fixes applied", "Class balance",
                 "Transfer syntaxes", "1.2.840.10008.1.2.1", "Image sizes", "128x128"):
        assert word in dm, word
    split = pd.read_csv(runs["cv"] / "split.csv")
    sm = page.sections["split-manifest"]
    check = [a for t, a in sm["tags"] if a.get("id") == "group-check"]
    assert check and check[0]["class"] == "pass"
    assert "no group crosses" in page.text("split-manifest")
    assert f"{split['group'].nunique()} groups" in page.text("split-manifest")
    ce = page.text("config-environment")
    for word in ("torch", "scikit-learn", "device", "wall time", "seed", "n_boot", "Effective configuration"):
        assert word in ce, word
    assert len(page.tags("cv-curves", "img")) == 3
    chosen = [a for a in page.tags("threshold-table", "tr") if a.get("class") == "chosen"]
    assert len(chosen) == 1
    tm = page.text("test-metrics")
    for word in ("Slice level", "Patient level", "ROC-AUC", "AUPRC", "sensitivity", "specificity", "PPV", "NPV",
                 "95% CI (Wilson / DeLong", "95% CI (patient bootstrap)", "200 resamples"):
        assert word in tm, word
    assert len(page.tags("confusion", "table")) == 2 and page.tags("confusion", "img")
    assert page.tags("calibration", "img") and "Brier score" in page.text("calibration")
    assert "calibration slope" in page.text("calibration")

    # gallery: the most confident FPs / FNs of the test predictions, at most gallery_n of each
    pred = pd.read_csv(runs["final"] / "test_predictions.csv", dtype={"ID": str})
    thr = json.loads((runs["final"] / "model_card.json").read_text())["threshold"]
    n_fp = min(TINY["gallery_n"], int(((pred["label"] == 0) & (pred["prob"] >= thr)).sum()))
    n_fn = min(TINY["gallery_n"], int(((pred["label"] == 1) & (pred["prob"] < thr)).sum()))
    figs = page.tags("gallery", "figure")
    assert len(figs) == n_fp + n_fn
    assert len(page.tags("gallery", "img")) == n_fp + n_fn
    if n_fp:
        top = pred[(pred["label"] == 0)].sort_values("prob", ascending=False)["ID"].iloc[0]
        assert top in page.text("gallery")


def test_cv_report_says_how_to_get_test_metrics(runs):
    page = _parse(runs["cv"] / "report.html")
    assert page.order == list(SECTION_IDS)
    _self_contained(page)
    assert "trainer final" in page.text("test-metrics")
    assert "Patient level" in page.text("oof-metrics") and "95% CI" in page.text("oof-metrics")
    assert page.tags("calibration", "img") and page.tags("confusion", "table")
    assert "no group crosses" in page.text("split-manifest")


def test_missing_store_is_reported_in_place(runs, tmp_path):
    path, missing = write_report(runs["final"], store_path=tmp_path / "gone.zarr", out=tmp_path / "r.html")
    assert set(missing) == {"data-manifest", "gallery", "saliency"}
    page = _parse(path)
    assert page.order == list(SECTION_IDS)
    assert "could not be opened" in page.text("data-manifest")
    assert "95% CI" in page.text("test-metrics")


def test_test_metrics_json_keeps_old_keys_and_adds_intervals(runs):
    m = json.loads((runs["final"] / "test_metrics.json").read_text())
    for k in ("tp", "fp", "tn", "fn", "sens", "spec", "ppv", "npv", "f1", "acc", "auc", "ap", "n", "n_pos",
              "prevalence", "threshold", "confusion", "holdout_best_auprc", "n_train", "n_holdout", "n_test"):
        assert k in m, k
    iv = m["intervals"]
    assert iv["level"] == 0.95 and iv["bootstrap"]["n_boot"] == TINY["n_boot"]
    assert iv["bootstrap"]["unit"] == "patient" and iv["bootstrap"]["seed"] == 12345
    for k in ("sens", "spec", "ppv", "npv"):
        lo, hi = iv[k]["wilson"]
        if iv[k]["n"]:
            assert lo <= m[k] <= hi
        else:  # nothing to estimate from (e.g. NPV with nothing predicted negative): no interval
            assert lo is None and hi is None
    lo, hi = iv["auc"]["delong"]
    assert lo <= m["auc"] <= hi
    assert set(m["calibration"]) >= {"brier", "slope", "intercept", "citl", "ece", "bins"}
    pred = pd.read_csv(runs["final"] / "test_predictions.csv", dtype={"ID": str})
    pts = pd.read_csv(runs["final"] / "test_patient_predictions.csv", dtype={"patient": str})
    assert pts["n_slices"].sum() == len(pred) and m["patient"]["n_patients"] == len(pts)
    assert m["patient"]["aggregation"] == "max"
    if pts["label"].nunique() == 2:
        assert m["patient"]["metrics"]["auc"] == pytest.approx(roc_auc_score(pts["label"], pts["prob"]))
    assert (runs["final"] / "test_calibration.png").is_file()
    assert m["wall_seconds"] > 0


def test_cv_metrics_json_has_the_oof_evaluation(runs):
    m = json.loads((runs["cv"] / "cv_metrics.json").read_text())
    oof = pd.read_csv(runs["cv"] / "cv_oof_predictions.csv")
    ev = m["oof"]
    assert ev["metrics"]["n"] == len(oof) and ev["metrics"]["threshold"] == m["threshold"]
    assert ev["intervals"]["bootstrap"]["n_units"] == ev["patient"]["n_patients"]
    assert ev["calibration"]["n"] == len(oof)
    assert (runs["cv"] / "cv_calibration.png").is_file()
    pts = pd.read_csv(runs["cv"] / "cv_oof_patient_predictions.csv")
    assert pts["n_slices"].sum() == len(oof)
    assert np.all(pts["label"] == (pts["n_pos_slices"] > 0))
