"""``python -m trainer runs``: three runs (two configs differing in one key) side by side."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from _tiny_runs import tiny_runs

from trainer.cli import main
from trainer.runs.table import FIXED_COLUMNS, METRIC_COLUMNS, run_table, sort_table, varying_keys


@pytest.fixture(scope="module")
def outputs(trainer_store, tmp_path_factory) -> Path:
    """tiny cv + its final (copied), a second cv with dropout=0.5, a half-written run and a foreign folder."""
    tiny = tiny_runs(trainer_store, tmp_path_factory.getbasetemp() / "eval_runs")
    out = tmp_path_factory.mktemp("runs_table")
    for k in ("cv", "final"):
        shutil.copytree(tiny[k], out / tiny[k].name)
    assert main(["cv", "--store", str(trainer_store), "--config", str(tiny["config"]), "--out", str(out), "--quiet",
                 "--set", "dropout=0.5"]) == 0
    (out / "run_20990101_000000_cv").mkdir()  # killed right after it started
    (out / "run_20990101_000000_cv" / "run_args.json").write_text("{}")
    (out / "scratch").mkdir()  # someone's notes
    (out / "eda_executed.ipynb").write_text("{}")  # a file, not a folder: ignored
    return out


def _runs(out: Path) -> dict[str, Path]:
    cvs = sorted(p for p in out.glob("run_2026*_cv*") if p.is_dir())
    return {"cv": cvs[0], "cv2": cvs[1], "final": next(out.glob("run_*_final*"))}


def test_only_the_differing_key_is_a_column(outputs):
    with pytest.warns(UserWarning) as rec:
        table = run_table(outputs)
    warned = " ".join(str(w.message) for w in rec)
    assert "run_20990101_000000_cv" in warned and "missing" in warned and "scratch" in warned
    assert "eda_executed" not in warned
    assert len(table) == 3
    varying = [c for c in table.columns if c not in FIXED_COLUMNS + METRIC_COLUMNS]
    assert varying == ["dropout"]
    r = _runs(outputs)
    by = table.set_index("run")
    assert by.loc[r["cv"].name, "dropout"] == 0.3 and by.loc[r["final"].name, "dropout"] == 0.3
    assert by.loc[r["cv2"].name, "dropout"] == 0.5
    assert list(by["kind"]) == ["cv", "final", "cv"]  # default sort: date
    # a final row: its cv run's CV numbers, its own test metrics; the cv row names its final
    cvm = json.loads((r["cv"] / "cv_metrics.json").read_text())
    tm = json.loads((r["final"] / "test_metrics.json").read_text())
    f = by.loc[r["final"].name]
    assert f["linked"] == r["cv"].name and by.loc[r["cv"].name, "linked"] == r["final"].name
    assert f["cv_auprc"] == pytest.approx(cvm["oof_ap_mean"]) and f["cv_auprc_sd"] == pytest.approx(cvm["oof_ap_std"])
    assert f["cv_roc_auc"] == pytest.approx(cvm["oof_auc_mean"]) and f["threshold"] == pytest.approx(cvm["threshold"])
    assert (f["test_roc_auc"], f["test_auprc"], f["test_sens"]) == pytest.approx((tm["auc"], tm["ap"], tm["sens"]))
    assert pd.isna(by.loc[r["cv2"].name, "test_roc_auc"]) and pd.isna(by.loc[r["cv2"].name, "linked"])


def test_sort_csv_plot_and_store_filter_from_the_cli(outputs, trainer_store, tmp_path, capsys):
    csv, png = tmp_path / "runs.csv", tmp_path / "runs.png"
    assert main(["runs", "--out", str(outputs), "--sort", "cv_auprc", "--csv", str(csv), "--plot", str(png)]) == 0
    cap = capsys.readouterr()
    assert "warning: skipping" in cap.err and "scratch" in cap.err
    assert "dropout" in cap.out.splitlines()[0] and " ± " in cap.out
    table = pd.read_csv(csv)
    assert len(table) == 3 and list(table["cv_auprc"]) == sorted(table["cv_auprc"], reverse=True)  # metrics: best first
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # --store keeps only runs on that store's fingerprint
    r = _runs(outputs)
    other = tmp_path / "other_out"
    shutil.copytree(outputs, other, ignore=shutil.ignore_patterns("scratch", "run_2099*"))
    sj = other / r["cv2"].name / "store.json"
    sj.write_text(json.dumps({**json.loads(sj.read_text()), "fingerprint": "0" * 64}))
    assert main(["runs", "--out", str(other), "--store", str(trainer_store), "--csv", str(csv)]) == 0
    assert set(pd.read_csv(csv)["run"]) == {r["cv"].name, r["final"].name}
    assert main(["runs", "--out", str(outputs), "--sort", "nope"]) == 2
    assert "--sort 'nope' is not a column" in capsys.readouterr().err


def test_varying_keys_and_sort_rules():
    a = {"lr": 1.0, "aug": {"degrees": 5.0, "hflip_p": 0.5}, "tracking": "none", "windows": [[40, 80]]}
    b = {"lr": 1.0, "aug": {"degrees": 10.0, "hflip_p": 0.5}, "tracking": "mlflow", "windows": [[40, 80]], "new": 1}
    assert varying_keys([a, b]) == ["aug.degrees", "new"]  # tracking never counts; absent counts as different
    assert varying_keys([a, a]) == []
    t = pd.DataFrame({"run": ["a", "b", "c"], "cv_auprc": [0.5, float("nan"), 0.9], "threshold": [0.3, 0.2, 0.1]})
    assert list(sort_table(t, "cv_auprc")["run"]) == ["c", "a", "b"]
    assert list(sort_table(t, "cv_auprc", reverse=True)["run"]) == ["a", "c", "b"]
    assert list(sort_table(t, "threshold")["run"]) == ["c", "b", "a"]
