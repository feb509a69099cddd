"""``python -m trainer predict``: reproduces the final run's test predictions from the DICOM files,
gives reason codes for non-CT / broken inputs, and refuses other preprocessing."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from _tiny_runs import tiny_runs

from neurocache.store import open_store
from trainer.cli import main as trainer_main
from trainer.runs.folder import RunError
from trainer.predict import PREDICT_COLUMNS, collect_inputs, load_final_run, predict_files

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs(trainer_store, tmp_path_factory) -> dict[str, Path]:
    return tiny_runs(trainer_store, tmp_path_factory.getbasetemp() / "eval_runs")


def _dicom_paths(store: Path, ids: list[str]) -> list[Path]:
    """The source files of store rows, from the feature table (``file``) and the build's data root."""
    st = open_store(store)
    src = st.attrs["source"]
    cts = Path(src["data_root"]) / src["cts"]
    files = dict(zip(st.features["ID"].astype(str), st.features["file"].astype(str)))
    return [cts / files[i] for i in ids]


def test_predict_reproduces_the_test_predictions(runs, tmp_path):
    test = pd.read_csv(runs["final"] / "test_predictions.csv", dtype={"ID": str})
    paths = _dicom_paths(runs["store"], list(test["ID"]))
    out = tmp_path / "pred.csv"
    # a batch size that differs from the run's eval batch: batch composition must not matter
    rc = trainer_main(["predict", "--run", str(runs["final"]), *map(str, paths), "--out", str(out), "--quiet",
                       "--batch-size", "5", "--device", "cpu"])
    assert rc == 0
    got = pd.read_csv(out, dtype={"ID": str}, keep_default_na=False, na_values={"prob": [""], "pred": [""]})
    assert list(got.columns) == list(PREDICT_COLUMNS)
    assert list(got["ID"]) == list(test["ID"]) and list(got["path"]) == list(map(str, paths))
    assert (got["status"] == "ok").all() and (got["reason"] == "").all()
    np.testing.assert_allclose(got["prob"].to_numpy(float), test["prob"].to_numpy(float), rtol=0, atol=1e-5)
    assert got["pred"].astype(int).tolist() == test["pred"].astype(int).tolist()


def test_non_ct_and_broken_inputs_get_reason_codes(runs, tmp_path):
    test = pd.read_csv(runs["final"] / "test_predictions.csv", dtype={"ID": str})
    good = _dicom_paths(runs["store"], [test["ID"].iloc[0]])[0]
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    ds = pydicom.dcmread(good)
    ds.Modality = "MR"
    ds.save_as(folder / "mr_slice.dcm")
    (folder / "notes.txt").write_text("not a DICOM file\n")
    (folder / ".hidden").write_text("skipped\n")
    shutil.copy(good, folder / "sub" / "ct_slice.dcm")
    truncated = folder / "sub" / "truncated.dcm"
    truncated.write_bytes(good.read_bytes()[:600])

    files = collect_inputs([folder, tmp_path / "does_not_exist.dcm"])
    assert [p.name for p in files] == ["mr_slice.dcm", "notes.txt", "ct_slice.dcm", "truncated.dcm", "does_not_exist.dcm"]
    frame = predict_files(runs["final"], [folder, tmp_path / "does_not_exist.dcm"], device="cpu")
    by = frame.set_index("ID")
    assert by.loc["mr_slice", "status"] == "quarantined" and by.loc["mr_slice", "reason"] == "modality_not_allowed"
    assert by.loc["notes", "reason"] == "not_dicom"
    assert by.loc["does_not_exist", "reason"] == "unreadable"
    assert by.loc["truncated", "status"] == "quarantined" and by.loc["truncated", "reason"] != ""
    for i in ("mr_slice", "notes", "does_not_exist", "truncated"):
        assert np.isnan(by.loc[i, "prob"]) and pd.isna(by.loc[i, "pred"]) and by.loc[i, "detail"]
    assert by.loc["ct_slice", "status"] == "ok"
    ref = test.set_index("ID").loc[test["ID"].iloc[0], "prob"]
    assert by.loc["ct_slice", "prob"] == pytest.approx(ref, abs=1e-5)

    out = tmp_path / "o" / "p.csv"
    assert trainer_main(["predict", "--run", str(runs["final"]), str(folder / "mr_slice.dcm"), "--out", str(out), "--quiet"]) == 0
    row = pd.read_csv(out, keep_default_na=False).iloc[0]
    assert row["status"] == "quarantined" and row["reason"] == "modality_not_allowed" and row["prob"] == ""


def _copy_run(run: Path, dst: Path) -> Path:
    shutil.copytree(run, dst)
    return dst


def test_predict_refuses_preprocessing_other_than_the_store_fingerprint(runs, tmp_path, capsys):
    bad = _copy_run(runs["final"], tmp_path / "bad_run")
    card = json.loads((bad / "model_card.json").read_text())
    card["preprocess"]["size"] = 32
    (bad / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(RunError, match="fingerprint"):
        load_final_run(bad)
    assert trainer_main(["predict", "--run", str(bad), str(tmp_path), "--out", str(tmp_path / "x.csv"), "--quiet"]) == 2
    assert "refusing to predict" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


def test_old_model_card_falls_back_to_the_config_preprocess(runs, tmp_path):
    old = _copy_run(runs["final"], tmp_path / "old_run")
    card = json.loads((old / "model_card.json").read_text())
    del card["preprocess"]
    (old / "model_card.json").write_text(json.dumps(card))
    r = load_final_run(old)
    assert r.prep.fingerprint() == card["store"]["fingerprint"]


def test_predict_needs_a_final_run(runs, tmp_path):
    with pytest.raises(RunError, match="not a final run"):
        load_final_run(runs["cv"])


def test_make_predict_target():
    if shutil.which("make") is None:
        pytest.skip("make not installed")
    r = subprocess.run(["make", "-n", "-o", ".venv/.installed", "predict", "RUN=outputs/run_x_final", "INPUT=a.dcm dir/"],
                       cwd=ROOT, capture_output=True, text=True, check=True)
    assert "-m trainer predict --run outputs/run_x_final a.dcm dir/ --out outputs/predictions.csv" in r.stdout


def test_predictor_rebuilds_the_runs_pooling(runs):
    # tiny runs train with pool: max (and a 1x1 last feature map at 32 px, where max equals avg,
    # so the reproduction test above cannot tell them apart): the rebuilt model must pool as trained.
    import torch

    from trainer.predict import build_predictor

    run = load_final_run(runs["final"])
    assert run.config.pool == "max"
    model, _ = build_predictor(run, torch.device("cpu"))
    assert isinstance(model.avgpool, torch.nn.AdaptiveMaxPool2d)
