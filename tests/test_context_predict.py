"""2.5D through the commands: cv -> final -> predict with ``context_slices: 1``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from _tiny_runs import TINY

from neurocache.store import open_store
from trainer.cli import main
from trainer.predict import PREDICT_COLUMNS, predict_files


@pytest.fixture(scope="module")
def runs(trainer_store, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("context_runs")
    cfg = root / "ctx.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "context_slices": 1, "n_boot": 0}))
    out = root / "out"
    assert main(["cv", "--store", str(trainer_store), "--config", str(cfg), "--out", str(out), "--quiet"]) == 0
    cv = sorted(out.glob("run_*_cv*"))[-1]
    assert main(["final", "--cv-run", str(cv), "--out", str(out), "--quiet"]) == 0
    return {"cv": cv, "final": sorted(out.glob("run_*_final*"))[-1], "store": trainer_store}


def _paths(store: Path, ids: list[str]) -> list[Path]:
    st = open_store(store)
    src = st.attrs["source"]
    files = dict(zip(st.features["ID"].astype(str), st.features["file"].astype(str)))
    return [Path(src["data_root"]) / src["cts"] / files[i] for i in ids]


def test_the_run_records_the_context(runs):
    cfg = json.loads((runs["final"] / "effective_config.json").read_text())
    assert cfg["context_slices"] == 1


def test_predict_on_the_test_series_reproduces_the_test_predictions(runs):
    test = pd.read_csv(runs["final"] / "test_predictions.csv", dtype={"ID": str})
    paths = _paths(runs["store"], list(test["ID"]))[::-1]  # another order: neighbours come from geometry, not order
    got = predict_files(runs["final"], paths, device="cpu", batch_size=5)
    assert list(got.columns) == [*PREDICT_COLUMNS, "neighbours_missing"]
    got = got.set_index("ID").loc[test["ID"]]
    np.testing.assert_allclose(got["prob"].to_numpy(float), test["prob"].to_numpy(float), rtol=0, atol=1e-5)
    st = open_store(runs["store"]).features.set_index("ID").loc[test["ID"]]
    want_missing = (st["prev_row"] < 0).astype(int) + (st["next_row"] < 0).astype(int)
    assert got["neighbours_missing"].astype(int).tolist() == want_missing.tolist()
    assert (want_missing == 0).any()  # series are linked: some rows had their full context


def test_a_lone_file_is_its_own_context_and_says_so(runs, tmp_path):
    test = pd.read_csv(runs["final"] / "test_predictions.csv", dtype={"ID": str})
    one = _paths(runs["store"], [test["ID"].iloc[0]])
    got = predict_files(runs["final"], one, device="cpu")
    assert got["neighbours_missing"].tolist() == [2] and got["status"].tolist() == ["ok"]
    assert 0.0 <= float(got["prob"].iloc[0]) <= 1.0
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"not dicom")
    got = predict_files(runs["final"], [broken, *one], device="cpu")
    assert got["status"].tolist() == ["quarantined", "ok"] and got["neighbours_missing"].isna().tolist() == [True, False]


def test_context_0_reproduces_the_single_slice_oof_predictions(trainer_store, tmp_path_factory):
    from _tiny_runs import tiny_runs

    base = tiny_runs(trainer_store, tmp_path_factory.getbasetemp() / "eval_runs")  # the original pipeline's input (no key)
    root = tmp_path_factory.mktemp("context0")
    cfg = root / "c0.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "context_slices": 0}))
    assert main(["cv", "--store", str(trainer_store), "--config", str(cfg), "--out", str(root / "out"), "--quiet"]) == 0
    run = sorted((root / "out").glob("run_*_cv*"))[-1]
    want = pd.read_csv(base["cv"] / "cv_oof_predictions.csv", dtype={"ID": str})
    got = pd.read_csv(run / "cv_oof_predictions.csv", dtype={"ID": str})
    pd.testing.assert_frame_equal(got, want)  # the same rows, folds and probabilities, bit for bit


def test_predict_shift_scores_match_the_final_runs_check_with_context(runs):
    # the embedding of a context stack: predict's hook on the scoring pass vs the final run's own pass
    scores = pd.read_csv(runs["final"] / "shift_scores.csv", dtype={"ID": str}, keep_default_na=False)
    test = scores[scores["part"] == "test"]
    got = predict_files(runs["final"], _paths(runs["store"], list(test["ID"]))[::-1], device="cpu", batch_size=5)
    got = got.set_index("ID").loc[test["ID"]]
    np.testing.assert_allclose(got["shift_score"].to_numpy(float), test["shift_score"].to_numpy(float), rtol=1e-3, atol=1e-3)
