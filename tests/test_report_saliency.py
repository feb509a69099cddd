"""report.html's ``saliency`` section: true positive / false negative / highest-scored negative overlays of a
final run's test slices, computed from final_model.pt on the store's images; skipped with a note without
the store, and on cv runs."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _tiny_runs import TINY, tiny_runs
from PIL import Image

from trainer.report.html import build_report
from trainer.saliency.gallery import saliency_cases


@pytest.fixture(scope="module")
def runs(trainer_store, tmp_path_factory) -> dict[str, Path]:
    return tiny_runs(trainer_store, tmp_path_factory.getbasetemp() / "eval_runs")


def _section(doc: str, sid: str) -> str:
    i = doc.index(f'<section id="{sid}">')
    return doc[i : doc.index("</section>", i)]


def _group(section: str, gid: str) -> str:
    i = section.index(f'id="{gid}"')
    return section[i : section.index("</div>", i)]


def test_cases_are_tp_fn_and_the_highest_scored_negatives():
    pred = pd.DataFrame({"ID": list("abcdefg"), "label": [1, 1, 1, 0, 0, 0, 0],
                         "prob": [0.9, 0.6, 0.2, 0.7, 0.4, 0.1, 0.45]})
    g = saliency_cases(pred, 0.5, 2)
    assert list(g["tp"]["ID"]) == ["a", "b"] and list(g["fn"]["ID"]) == ["c"]
    assert list(g["neg"]["ID"]) == ["d", "g"]  # the false positive first, then the best-scored true negative


def test_final_report_shows_the_three_groups_with_overlays(runs):
    doc, missing = build_report(runs["final"])
    assert "saliency" not in missing
    sec = _section(doc, "saliency")
    pred = pd.read_csv(runs["final"] / "test_predictions.csv", dtype={"ID": str})
    thr = json.loads((runs["final"] / "model_card.json").read_text())["threshold"]
    want = saliency_cases(pred, thr, TINY["gallery_n"])
    size = TINY["preprocess"]["size"]
    for key in ("tp", "fn", "neg"):
        grp = _group(sec, f"saliency-{key}")
        imgs = re.findall(r'<img class="case" alt="([^"]+)" src="data:image/png;base64,([^"]+)"', grp)
        assert [a for a, _ in imgs] == list(want[key]["ID"])
        for _, b64 in imgs:
            with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
                assert im.size == (size, size) and im.mode == "P"
                assert np.asarray(im).std() > 0
        for _, r in want[key].iterrows():
            assert f"p = {r['prob']:.3f}" in grp
    assert f"Threshold {thr:.2f}" in sec and "gradcam maps at layer4" in sec


def test_without_the_store_the_section_says_so(runs, tmp_path):
    doc, missing = build_report(runs["final"], store_path=tmp_path / "gone.zarr")
    assert "saliency" in missing and "could not be opened" in _section(doc, "saliency")


def test_a_cv_run_has_no_saliency_gallery(runs):
    doc, missing = build_report(runs["cv"])
    assert "saliency" in missing and "final runs" in _section(doc, "saliency")


def test_context_slices_maps_come_from_the_stores_neighbours(runs, tmp_path):
    """A 2.5D card (one window, k = 1: the same 3 channels, so the tiny weights fit) takes each stack from
    the store's prev_row / next_row links."""
    import shutil

    from trainer.report.sections import load_context
    from trainer.saliency.gallery import saliency_gallery

    run = shutil.copytree(runs["final"], tmp_path / "run_k1")
    card = json.loads((run / "model_card.json").read_text())
    card["config"]["context_slices"] = 1
    (run / "model_card.json").write_text(json.dumps(card))
    d = saliency_gallery(load_context(run, runs["store"], None))
    cases = [c for g in d["groups"] for c in g["cases"]]
    assert cases and all(c["png"][:8] == b"\x89PNG\r\n\x1a\n" for c in cases)
