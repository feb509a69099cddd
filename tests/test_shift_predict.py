"""The distribution-shift check end to end on the tiny final run: the reference ``trainer final``
saves (no image data), predict's shift columns and summary JSON, a run made before the check,
the report's ``shift`` section and ``neurocache synth --pixel-spacing / --kvp``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from _tiny_runs import tiny_runs

from neurocache.cli import main as neurocache_main
from neurocache.store import open_store
from trainer.cli import main as trainer_main
from trainer.predict import PREDICT_COLUMNS, predict_files
from trainer.report.html import write_report
from trainer.runs import files as F
from trainer.shift import SHIFT_COLUMNS


@pytest.fixture(scope="module")
def runs(trainer_store, tmp_path_factory) -> dict[str, Path]:
    return tiny_runs(trainer_store, tmp_path_factory.getbasetemp() / "eval_runs")


def _test_files(runs: dict[str, Path]) -> tuple[list[str], list[Path]]:
    test = pd.read_csv(runs["final"] / F.TEST_PREDICTIONS, dtype={"ID": str})
    st = open_store(runs["store"])
    src = st.attrs["source"]
    files = dict(zip(st.features["ID"].astype(str), st.features["file"].astype(str)))
    return list(test["ID"]), [Path(src["data_root"]) / src["cts"] / files[i] for i in test["ID"]]


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"ID": str}, keep_default_na=False, na_values={"prob": [""], "shift_score": [""]})


def test_final_saves_a_reference_without_images(runs):
    run = runs["final"]
    ref = json.loads((run / F.SHIFT_REFERENCE).read_text())
    assert ref["n_fit"] > 0 and ref["n_holdout"] > 0 and ref["thresholds_from"] == "holdout rows"
    assert ref["alpha"] == 0.01 and ref["embedding_dim"] == 512 and ref["feature_threshold"] >= 1.0
    assert {c["name"] for c in ref["columns"]} >= {"spacing_row_mm", "kvp", "hu_p99", "frac_brain", "box_h", "scale"}
    kvp = next(c for c in ref["columns"] if c["name"] == "kvp")
    assert kvp["lo"] == kvp["hi"] == 120.0 and kvp["scale"] == 1.0  # synth writes 120 kV everywhere
    size = open_store(runs["store"]).attrs["preprocess"]["size"]
    with np.load(run / F.SHIFT_EMBEDDING, allow_pickle=False) as z:
        shapes = {k: z[k].shape for k in z.files}
    assert shapes == {"classes": (2,), "means": (2, 512), "precision": (2, 512, 512), "shrinkage": (2,)}
    assert all(size not in s[-2:] for s in shapes.values())  # nothing image-shaped
    scores = pd.read_csv(run / F.SHIFT_SCORES, dtype={"ID": str})
    n_test = len(pd.read_csv(run / F.TEST_PREDICTIONS))
    assert scores["part"].value_counts().to_dict() == {"fit": ref["n_fit"], "holdout": ref["n_holdout"], "test": n_test}
    ho = scores[scores["part"] == "holdout"]
    assert ho["shifted"].mean() == pytest.approx(ref["holdout_flag_rate"])
    assert (run / F.SHIFT_PLOT).stat().st_size > 1000


def test_predict_adds_shift_columns_that_match_the_final_runs_check(runs, tmp_path, capsys):
    ids, paths = _test_files(runs)
    out = tmp_path / "pred.csv"
    assert trainer_main(["predict", "--run", str(runs["final"]), *map(str, paths), "--out", str(out), "--quiet",
                         "--batch-size", "4", "--device", "cpu"]) == 0
    got = _read(out)
    assert list(got.columns) == list(PREDICT_COLUMNS) and list(got.columns[-3:]) == list(SHIFT_COLUMNS)
    want = pd.read_csv(runs["final"] / F.SHIFT_SCORES, dtype={"ID": str}, keep_default_na=False).set_index("ID").loc[ids]
    np.testing.assert_allclose(got["shift_score"], want["shift_score"], rtol=1e-3, atol=1e-3)
    assert got["shifted"].tolist() == want["shifted"].tolist()
    summary = json.loads((tmp_path / "pred.shift.json").read_text())
    k = int(got["shifted"].sum())
    assert summary["reference"] is True and summary["n_checked"] == len(ids) and summary["n_shifted"] == k
    assert summary["message"].startswith(f"{k} of {len(ids)} slices outside the training distribution")
    assert f"shift: {summary['message']}" in capsys.readouterr().out


def test_other_kvp_and_spacing_are_named_and_quarantined_files_get_empty_columns(runs, tmp_path):
    _, paths = _test_files(runs)
    folder = tmp_path / "in"
    folder.mkdir()
    for n, src in enumerate(paths[:3]):
        ds = pydicom.dcmread(src)
        ds.KVP = "80"
        if n == 2:
            ds.PixelSpacing = ["0.9", "0.9"]
        ds.save_as(folder / f"a{n}.dcm")
    (folder / "b_notes.txt").write_text("not a DICOM file\n")
    frame = predict_files(runs["final"], [folder], device="cpu")
    by = frame.set_index("ID")
    for i in ("a0", "a1", "a2"):
        assert by.loc[i, "shifted"] and by.loc[i, "shift_score"] > 1 and by.loc[i, "prob"] == by.loc[i, "prob"]  # still scored
        assert "kVp 80 kV vs 120 kV in training" in by.loc[i, "shift_reason"]
    assert "pixel spacing (rows) 0.9 mm vs " in by.loc["a2", "shift_reason"]
    assert pd.isna(by.loc["b_notes", "shifted"]) and np.isnan(by.loc["b_notes", "shift_score"])
    assert by.loc["b_notes", "shift_reason"] == "" and by.loc["b_notes", "reason"] == "not_dicom"
    s = frame.attrs["shift"]
    assert s["n_files"] == 4 and s["n_checked"] == 3 and s["n_shifted"] == 3
    assert s["checks"][0]["check"] == "kvp" and s["checks"][0]["n"] == 3 and s["checks"][0]["values"] == [80.0, 80.0]
    assert "kVp 80 kV vs 120 kV in training (3 slices)" in s["message"]
    assert "pixel spacing (rows) 0.9 mm" in s["message"] and "(1 slices)" in s["message"]


def _old_run(runs: dict[str, Path], dst: Path) -> Path:
    old = shutil.copytree(runs["final"], dst)
    for f in (F.SHIFT_REFERENCE, F.SHIFT_EMBEDDING, F.SHIFT_SCORES, F.SHIFT_PLOT):
        (old / f).unlink()
    return old


def test_a_run_made_before_the_check_predicts_with_empty_columns_and_one_warning(runs, tmp_path):
    old = _old_run(runs, tmp_path / "old_run")
    _, paths = _test_files(runs)
    out = tmp_path / "old.csv"
    with pytest.warns(UserWarning, match="no shift_reference.json") as record:
        assert trainer_main(["predict", "--run", str(old), *map(str, paths[:3]), "--out", str(out), "--quiet"]) == 0
    assert len([w for w in record if "shift_reference" in str(w.message)]) == 1
    got = _read(out)
    assert list(got.columns) == list(PREDICT_COLUMNS) and (got["status"] == "ok").all()
    assert got["shift_score"].isna().all() and (got["shifted"] == "").all() and (got["shift_reason"] == "").all()
    summary = json.loads((tmp_path / "old.shift.json").read_text())
    assert summary["reference"] is False and "not checked" in summary["message"]


def test_report_shows_the_test_rows_against_the_reference(runs, tmp_path):
    page = (runs["final"] / F.REPORT).read_text()
    section = page[page.index('<section id="shift">'):]
    section = section[: section.index("</section>")]
    scores = pd.read_csv(runs["final"] / F.SHIFT_SCORES)
    t = scores[scores["part"] == "test"]
    assert f"<b>{int(t['shifted'].sum())} of {len(t)}</b> test slices outside the training distribution" in section
    assert 'class="plot"' in section and "data:image/png;base64," in section
    for word in ("Reference", "Ledoit-Wolf shrinkage", "Reasons (test)", "Checked columns", "pixel spacing (rows)", "holdout"):
        assert word in section, word
    cv_page = (runs["cv"] / F.REPORT).read_text()
    assert "saves the training reference with the final model" in cv_page
    path, missing = write_report(_old_run(runs, tmp_path / "old_run"), out=tmp_path / "old.html")
    assert "shift" in missing and "made before the distribution-shift check" in path.read_text()


def test_synth_writes_another_pixel_spacing_and_kvp_in_the_header_only(tmp_path):
    base = ["synth", "--patients", "1", "--slices-per-patient", "2", "--size", "32", "--seed", "3"]
    assert neurocache_main([*base[:1], str(tmp_path / "a"), *base[1:]]) == 0
    assert neurocache_main([*base[:1], str(tmp_path / "b"), *base[1:], "--pixel-spacing", "0.9", "--kvp", "80"]) == 0
    a, b = sorted((tmp_path / "a" / "CTs").glob("*.dcm")), sorted((tmp_path / "b" / "CTs").glob("*.dcm"))
    assert [p.name for p in a] == [p.name for p in b]
    for pa, pb in zip(a, b):
        da, db = pydicom.dcmread(pa), pydicom.dcmread(pb)
        assert da.KVP == 120 and db.KVP == 80 and [float(x) for x in db.PixelSpacing] == [0.9, 0.9]
        assert 0.40 <= float(da.PixelSpacing[0]) <= 0.50
        assert da.PixelData == db.PixelData
    assert neurocache_main(["synth", str(tmp_path / "c"), "--patients", "1", "--kvp", "0"]) == 2


def test_an_unreadable_reference_is_a_run_error(runs, tmp_path, capsys):
    bad = shutil.copytree(runs["final"], tmp_path / "bad_run")
    (bad / F.SHIFT_EMBEDDING).unlink()
    _, paths = _test_files(runs)
    out = tmp_path / "x.csv"
    assert trainer_main(["predict", "--run", str(bad), str(paths[0]), "--out", str(out), "--quiet"]) == 2
    assert "shift_reference.json (the distribution-shift reference) cannot be read" in capsys.readouterr().err
    assert not out.exists()
