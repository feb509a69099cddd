"""Trainer end to end on a tiny synthetic store: every artifact, sane values, reproducibility, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import average_precision_score, roc_auc_score

from _tiny_runs import TINY_BASE

from neurocache.config import ConfigError
from trainer.cli import main as trainer_main
from trainer.config import DEFAULTS, load_config

TINY = {**TINY_BASE, "epochs_ft": 2, "patience_ft": 2, "threads": 2}

CV_FILES = [
    "run_args.json", "effective_config.json", "store.json", "split.csv", "preprocessing_examples_label0.png",
    "preprocessing_examples_label1.png", "cv_thresholds_by_fold.csv", "cv_thresholds_summary.csv",
    "cv_oof_predictions.csv", "cv_histories.csv", "cv_history.png", "cv_mean_roc.png", "cv_mean_pr.png",
    "threshold_selection.json", "cv_metrics.json",
]
FINAL_FILES = [
    "final_model.pt", "model_card.json", "test_predictions.csv", "test_metrics.json", "test_roc_curve.png",
    "test_pr_curve.png", "effective_config.json", "store.json",
]


@pytest.fixture(scope="module")
def tiny_cfg(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    p.write_text(yaml.safe_dump(TINY))
    return p


def _run_cv(store: Path, cfg: Path, out: Path, *extra: str) -> Path:
    rc = trainer_main(["cv", "--store", str(store), "--config", str(cfg), "--out", str(out), "--quiet", *extra])
    assert rc == 0
    runs = sorted(out.glob("run_*_cv*"))
    return runs[-1]


@pytest.fixture(scope="module")
def cv_run(trainer_store, tiny_cfg, tmp_path_factory) -> Path:
    return _run_cv(trainer_store, tiny_cfg, tmp_path_factory.mktemp("out"))


@pytest.fixture(scope="module")
def final_run(cv_run) -> Path:
    out = cv_run.parent
    assert trainer_main(["final", "--cv-run", str(cv_run), "--out", str(out), "--quiet"]) == 0
    return sorted(out.glob("run_*_final*"))[-1]


def test_cv_writes_every_artifact_with_sane_values(cv_run, trainer_store):
    for f in CV_FILES:
        assert (cv_run / f).is_file(), f
    split = pd.read_csv(cv_run / "split.csv")
    assert list(split.columns) == ["ID", "group", "label", "test", "fold"]
    assert (split.loc[split["test"], "fold"] == -1).all()
    assert set(split.loc[~split["test"], "fold"]) == {0, 1}
    # no group crosses test/train or two folds
    part = np.where(split["test"], -1, split["fold"])
    assert (split.assign(part=part).groupby("group")["part"].nunique() == 1).all()

    oof = pd.read_csv(cv_run / "cv_oof_predictions.csv")
    assert list(oof.columns) == ["ID", "label", "prob", "prob_raw", "fold"]
    pool = split[~split["test"]]
    assert sorted(oof["ID"]) == sorted(pool["ID"])  # each training-pool row predicted once, test never
    assert oof["prob"].between(0, 1).all()

    summary = pd.read_csv(cv_run / "cv_thresholds_summary.csv")
    for c in ("threshold", "sens_mean", "sens_std", "spec_mean", "ppv_mean", "npv_mean", "f1_mean", "acc_mean",
              "ap_mean", "auc_mean", "train_auc_mean", "tp_sum", "fp_sum", "tn_sum", "fn_sum"):
        assert c in summary.columns, c
    sel = json.loads((cv_run / "threshold_selection.json").read_text())
    # candidates from the data: one per gap between distinct pooled OOF scores, none degenerate
    assert len(summary) == sel["n_candidates"] == oof["prob"].nunique() - 1
    assert (summary["threshold"] > oof["prob"].min()).all() and (summary["threshold"] <= oof["prob"].max()).all()
    # tp+fn summed over folds = positives of the training pool, at every threshold
    assert ((summary["tp_sum"] + summary["fn_sum"]) == int(pool["label"].sum())).all()
    by_fold = pd.read_csv(cv_run / "cv_thresholds_by_fold.csv")
    for k, g in oof.groupby("fold"):
        ap = by_fold.loc[by_fold["fold"] == k, "ap"].iloc[0]
        assert ap == pytest.approx(average_precision_score(g["label"], g["prob"]))

    best = summary.loc[summary["f1_pooled"].idxmax()]  # threshold_pooling: pooled (the default)
    assert sel["strategy"] == "max_f1" and sel["pooling"] == "pooled"
    assert sel["threshold"] == pytest.approx(best["threshold"])
    assert {f["fold"] for f in sel["per_fold"]} == {0, 1} and "warnings" in sel
    m = json.loads((cv_run / "cv_metrics.json").read_text())
    assert len(m["per_fold"]) == 2 and 0 <= m["best_val_auprc_mean"] <= 1
    hist = pd.read_csv(cv_run / "cv_histories.csv")
    assert set(hist["stage"]) == {"head", "ft"} and set(hist["fold"]) == {0, 1}
    phases = ["data_s", "fwd_bwd_s", "optimizer_s", "ema_s"]  # where each epoch's training seconds went
    assert (hist[[*phases, "eval_s"]] >= 0).all().all() and (hist["fwd_bwd_s"] > 0).all()
    assert (hist[phases].sum(axis=1) <= hist["train_seconds"] + 1e-6).all()
    assert np.allclose(hist["seconds"], hist["train_seconds"] + hist["eval_s"])
    from trainer.precision import resolve_precision

    cfg = json.loads((cv_run / "effective_config.json").read_text())
    assert cfg["amp"] == "auto" and cfg["precision"] == resolve_precision("auto", __import__("torch").device("cpu"))
    store = json.loads((cv_run / "store.json").read_text())
    assert store["fingerprint"] == zarr_fingerprint(trainer_store)


def test_final_writes_every_artifact_and_metrics_match_sklearn(final_run, cv_run):
    for f in FINAL_FILES:
        assert (final_run / f).is_file(), f
    pred = pd.read_csv(final_run / "test_predictions.csv")
    assert list(pred.columns) == ["ID", "label", "prob", "prob_raw", "pred"]
    split = pd.read_csv(cv_run / "split.csv")
    assert sorted(pred["ID"]) == sorted(split.loc[split["test"], "ID"])  # exactly the test rows, once
    sel = json.loads((cv_run / "threshold_selection.json").read_text())
    assert ((pred["prob"] >= sel["threshold"]).astype(int) == pred["pred"]).all()
    m = json.loads((final_run / "test_metrics.json").read_text())
    assert m["threshold"] == pytest.approx(sel["threshold"])
    assert m["auc"] == pytest.approx(roc_auc_score(pred["label"], pred["prob"]))
    assert m["ap"] == pytest.approx(average_precision_score(pred["label"], pred["prob"]))
    tp = int(((pred["pred"] == 1) & (pred["label"] == 1)).sum())
    assert m["tp"] == tp and m["tp"] + m["fp"] + m["tn"] + m["fn"] == len(pred)
    card = json.loads((final_run / "model_card.json").read_text())
    assert card["threshold"] == pytest.approx(sel["threshold"]) and card["store"]["fingerprint"]
    trained_in = json.loads((cv_run / "effective_config.json").read_text())["precision"]
    assert card["precision"] == card["config"]["precision"] == trained_in  # the final model trains as the folds did
    assert json.loads((final_run / "effective_config.json").read_text())["precision"] == trained_in

    import torch

    sd = torch.load(final_run / "final_model.pt", map_location="cpu", weights_only=True)
    assert "fc.1.weight" in sd and sd["fc.1.weight"].shape == (1, 512)


def test_same_seed_gives_identical_oof(cv_run, trainer_store, tiny_cfg, tmp_path):
    again = _run_cv(trainer_store, tiny_cfg, tmp_path)
    a = pd.read_csv(cv_run / "cv_oof_predictions.csv")
    b = pd.read_csv(again / "cv_oof_predictions.csv")
    pd.testing.assert_frame_equal(a, b)
    other = _run_cv(trainer_store, tiny_cfg, tmp_path, "--seed", "1")
    assert not pd.read_csv(other / "split.csv").equals(pd.read_csv(cv_run / "split.csv"))


def test_group_by_none_and_grid(trainer_store, tiny_cfg, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"candidates": [{"lr_ft": 1e-3}, {"dropout": 0.5, "epochs_ft": 1}]}))
    run = _run_cv(trainer_store, tiny_cfg, tmp_path, "--run-grid", "--grid", str(grid), "--set", "group_by=none",
                  "--threshold-strategy", "sens_target", "--sens-target", "0.8")
    g = pd.read_csv(run / "grid_results.csv")
    assert list(g["candidate"]) == [0, 1] and g["cv_auprc_mean"].between(0, 1).all()
    chosen = json.loads((run / "effective_config.json").read_text())
    best = g.loc[g["cv_auprc_mean"].idxmax(), "candidate"]
    assert (chosen["lr_ft"] == 1e-3) == (best == 0)
    split = pd.read_csv(run / "split.csv")
    assert (split["group"] == split["ID"]).all()
    # sens_target: the highest mean PPV among thresholds whose mean sensitivity reaches 0.8
    summary = pd.read_csv(run / "cv_thresholds_summary.csv")
    sel = json.loads((run / "threshold_selection.json").read_text())
    ok = summary[summary["sens_pooled"] >= 0.8 - 1e-9]
    assert sel["strategy"] == "sens_target" and sel["sens_pooled"] >= 0.8 - 1e-9
    assert sel["ppv_pooled"] == pytest.approx(ok["ppv_pooled"].max())


def test_store_with_other_fingerprint_is_refused(trainer_store, tiny_cfg, tmp_path, capsys):
    cfg = yaml.safe_load(tiny_cfg.read_text())
    cfg["preprocess"]["size"] = 128
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(cfg))
    rc = trainer_main(["cv", "--store", str(trainer_store), "--config", str(other), "--out", str(tmp_path), "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "built with other preprocessing" in err and "size: 64 -> 128" in err


def test_incomplete_store_is_refused(trainer_store, tiny_cfg, tmp_path, capsys):
    import shutil

    import zarr

    s = tmp_path / "inc.zarr"
    shutil.copytree(trainer_store, s)
    g = zarr.open_group(str(s), mode="r+")
    g.attrs["neurocache"] = {**g.attrs["neurocache"], "complete": False}
    rc = trainer_main(["cv", "--store", str(s), "--config", str(tiny_cfg), "--out", str(tmp_path), "--quiet"])
    assert rc == 2 and "is not complete" in capsys.readouterr().err


def test_invalid_sens_target_fails_before_training(trainer_store, tiny_cfg, tmp_path, capsys):
    rc = trainer_main(["cv", "--store", str(trainer_store), "--config", str(tiny_cfg), "--out", str(tmp_path), "--quiet",
                       "--threshold-strategy", "sens_target", "--sens-target", "1.01"])
    assert rc == 2 and "sens_target=1.01 must be in [0, 1]" in capsys.readouterr().err
    assert not list(tmp_path.glob("run_*"))  # refused before any run folder or training


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'lr_fx'"):
        load_config(sets=["lr_fx=1"])
    with pytest.raises(ConfigError, match=r"unknown config key 'aug.rotate'"):
        load_config(sets=["aug.rotate=3"])
    with pytest.raises(ConfigError, match="optimizer='adam' is invalid; allowed values: adamw, sgd"):
        load_config(sets=["optimizer=adam"])
    with pytest.raises(ConfigError, match="preprocess.sise"):
        load_config(sets=["preprocess.sise=3"])
    with pytest.raises(ConfigError, match="batch_size='big' is invalid"):
        load_config(sets=["batch_size=big"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs_hed: 3\n")
    with pytest.raises(ConfigError, match="epochs_hed"):
        load_config(bad)


def test_config_layers_and_coercion(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("lr_ft: 1.0e-4\nk_folds: 3\n")
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"k_folds": 4, "dropout": 0.1}))
    cfg = load_config(y, config_json=str(j), flags={"k_folds": 6, "seed": None}, sets=["lr_ft=1e-5", "aug.degrees=3"])
    assert cfg.k_folds == 6 and cfg.dropout == 0.1 and cfg.lr_ft == 1e-5 and cfg.seed == DEFAULTS["seed"]
    assert cfg.to_dict()["aug"] == {**DEFAULTS["aug"], "degrees": 3.0}
    assert load_config(config_json='{"epochs_ft": 3}').epochs_ft == 3
    default = load_config(Path(__file__).parents[1] / "configs" / "default.yaml")
    assert (default.lr_ft, default.lr_head, default.weight_decay_ft, default.epochs_head) == (1.5e-4, 3e-3, 7e-4, 12)


def zarr_fingerprint(store: Path) -> str:
    import zarr

    return zarr.open_group(str(store), mode="r").attrs["neurocache"]["fingerprint"]
