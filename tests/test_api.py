"""The Python API: ``neurocache.open_store`` and ``trainer.load_run``, and the CLI readers that go through them."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import neurocache
import trainer
from _tiny_runs import tiny_runs


@pytest.fixture(scope="module")
def runs(trainer_store, tmp_path_factory):
    return tiny_runs(trainer_store, tmp_path_factory.getbasetemp() / "eval_runs")


def test_open_store_reads_like_the_cli(synth_store):
    store = neurocache.open_store(synth_store)
    assert isinstance(store.features, pd.DataFrame) and len(store.features) == 48
    assert store.quality["counts"]["n_ok"] == 48 and store.quality["patients"] == 8
    assert store.images.shape == (48, 64, 64) and store.images.dtype == np.int16
    # image(ID) is the slice at the ID's row, int16 HU
    rec = store.features[store.features["status"] == "ok"].iloc[5]
    img = store.image(rec["ID"])
    assert img.dtype == np.int16 and img.shape == (64, 64)
    np.testing.assert_array_equal(img, np.asarray(store.images[int(rec["row"])]))
    # info() is what `neurocache info --json` prints: one implementation
    cli = subprocess.run([sys.executable, "-m", "neurocache", "info", str(synth_store), "--json"],
                         capture_output=True, text=True, check=True)
    assert json.loads(cli.stdout) == json.loads(json.dumps(store.info()))
    assert store.info()["n_ok"] == 48 and store.info()["shape"] == [48, 64, 64]


def test_image_of_a_missing_or_quarantined_id_names_it(synth_store):
    store = neurocache.open_store(synth_store)
    with pytest.raises(KeyError, match="'ID_nope' is not in store"):
        store.image("ID_nope")
    bad = store.features.iloc[[0]].assign(ID="ID_broken", status="quarantined", reason="not_dicom", row=-1,
                                         detail="no DICM prefix")
    missing = store.features.iloc[[0]].assign(ID="ID_gone", status="missing", reason="missing_file", row=-1, detail="")
    s2 = dataclasses.replace(store, features=pd.concat([store.features, bad, missing], ignore_index=True))
    with pytest.raises(KeyError, match=r"'ID_broken' has no image .*quarantined \(reason not_dicom: no DICM prefix\)"):
        s2.image("ID_broken")
    with pytest.raises(KeyError, match=r"'ID_gone' has no image .*missing \(reason missing_file\)"):
        s2.image("ID_gone")


def test_load_run_cv_and_final(runs):
    cv, final = trainer.load_run(runs["cv"]), trainer.load_run(runs["final"])
    assert (cv.kind, final.kind) == ("cv", "final")
    assert cv.config == json.loads((runs["cv"] / "effective_config.json").read_text())
    split = pd.read_csv(runs["cv"] / "split.csv", dtype={"ID": str, "group": str})
    pd.testing.assert_frame_equal(cv.split, split)
    metrics = json.loads((runs["cv"] / "cv_metrics.json").read_text())
    assert cv.metrics == metrics and cv.cv_metrics == metrics
    assert len(cv.oof) == metrics["n_train_pool"] and set(cv.oof["ID"]) == set(split.loc[~split["test"], "ID"])
    assert cv.threshold == json.loads((runs["cv"] / "threshold_selection.json").read_text())["threshold"]
    assert cv.test is None and cv.model_card is None and cv.cv_run is None
    # a final run: its own test predictions and metrics, its cv run's split and CV metrics
    assert final.cv_run == runs["cv"]
    assert final.metrics == json.loads((runs["final"] / "test_metrics.json").read_text())
    assert len(final.test) == metrics["n_test"] and set(final.test["ID"]) == set(split.loc[split["test"], "ID"])
    pd.testing.assert_frame_equal(final.split, split)
    assert final.cv_metrics == metrics and final.threshold == cv.threshold
    assert final.created > cv.created
    with pytest.raises(dataclasses.FrozenInstanceError):
        cv.kind = "final"  # type: ignore[misc]


def test_load_run_names_a_missing_file(runs, tmp_path):
    half = tmp_path / runs["cv"].name
    shutil.copytree(runs["cv"], half)
    (half / "cv_metrics.json").unlink()
    with pytest.raises(trainer.RunError, match="not a complete cv run \\(missing cv_metrics.json\\)"):
        trainer.load_run(half)
    foreign = tmp_path / "notes"
    foreign.mkdir()
    with pytest.raises(trainer.RunError, match="is not a run folder"):
        trainer.load_run(foreign)
    with pytest.raises(trainer.RunError, match="does not exist"):
        trainer.load_run(tmp_path / "nowhere")


def test_trainer_final_reads_its_cv_run_through_load_run(runs, tmp_path):
    from trainer.final import read_cv_run

    cv = read_cv_run(runs["cv"])
    r = trainer.load_run(runs["cv"])
    assert cv.config.to_dict() == r.config and cv.selection == r.selection and cv.store == r.store
    pd.testing.assert_frame_equal(cv.split, r.split)
    with pytest.raises(trainer.RunError, match="is a final run, not a cv run"):
        read_cv_run(runs["final"])
    half = tmp_path / runs["cv"].name
    half.mkdir()
    (half / "split.csv").write_text("ID,group,label,test,fold\n")
    with pytest.raises(trainer.RunError, match="missing effective_config.json, threshold_selection.json, store.json"):
        read_cv_run(half)
