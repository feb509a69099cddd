"""MLflow tracking (``tracking: mlflow``), read back with MLflow's own client."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from _tiny_runs import tiny_runs

from neurocache.config import ConfigError
from trainer.cli import main
from trainer.config import load_config
from trainer.runs.folder import flatten
from trainer.runs.tracking import EXPERIMENT, TrackingError, check_tracking, log_run

pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402


def _client(out: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{(out / 'mlruns' / 'mlflow.db').resolve()}")


def _numeric(d: dict) -> dict[str, float]:
    return {k: float(v) for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def test_cv_run_is_logged_with_its_config_and_metrics(trainer_store, tmp_path, tmp_path_factory):
    tiny = tiny_runs(trainer_store, tmp_path_factory.getbasetemp() / "eval_runs")
    out = tmp_path / "out"
    assert main(["cv", "--store", str(trainer_store), "--config", str(tiny["config"]), "--out", str(out), "--quiet",
                 "--set", "tracking=mlflow"]) == 0
    run = next(out.glob("run_*_cv"))
    client = _client(out)
    exp = client.get_experiment_by_name(EXPERIMENT)
    found = client.search_runs([exp.experiment_id])
    assert len(found) == 1
    ml = found[0]
    assert ml.info.run_name == run.name and ml.info.status == "FINISHED"
    assert ml.data.tags["neurocache.kind"] == "cv"
    cfg = json.loads((run / "effective_config.json").read_text())
    assert cfg["tracking"] == "mlflow"
    flat = flatten(cfg)
    assert set(ml.data.params) == set(flat)
    assert {k: (v if isinstance(flat[k], str) else json.loads(v)) for k, v in ml.data.params.items()} == flat
    assert ml.data.params["aug.degrees"] == "10.0" and ml.data.params["k_folds"] == "2"
    metrics = _numeric(json.loads((run / "cv_metrics.json").read_text()))
    assert "oof_auc_mean" in metrics and "threshold" in metrics
    assert ml.data.metrics == pytest.approx(metrics)
    logged = {f.path for f in client.list_artifacts(ml.info.run_id)}
    assert {"cv_metrics.json", "effective_config.json", "split.csv", "cv_oof_predictions.csv", "report.html"} <= logged


def test_final_run_is_logged_with_test_metrics(trainer_store, tmp_path, tmp_path_factory):
    tiny = tiny_runs(trainer_store, tmp_path_factory.getbasetemp() / "eval_runs")
    out = tmp_path / "out"
    final = out / tiny["final"].name
    shutil.copytree(tiny["final"], final, ignore=shutil.ignore_patterns("final_model.pt"))
    cfg = json.loads((final / "effective_config.json").read_text())
    (final / "effective_config.json").write_text(json.dumps({**cfg, "tracking": "mlflow", "tracking_uri": ""}))
    rid = log_run(final)
    ml = _client(out).get_run(rid)
    assert ml.info.run_name == final.name and ml.data.tags["neurocache.kind"] == "final"
    assert Path(ml.data.tags["neurocache.cv_run"]) == tiny["cv"].resolve()
    assert ml.data.metrics == pytest.approx(_numeric(json.loads((final / "test_metrics.json").read_text())))
    assert ml.data.metrics["auc"] == pytest.approx(json.loads((final / "test_metrics.json").read_text())["auc"])


def test_no_tracking_by_default(trainer_store, tmp_path_factory):
    tiny = tiny_runs(trainer_store, tmp_path_factory.getbasetemp() / "eval_runs")
    assert json.loads((tiny["cv"] / "effective_config.json").read_text())["tracking"] == "none"
    assert log_run(tiny["cv"]) is None
    assert not (tiny["cv"].parent / "mlruns").exists()


def test_clear_error_at_start_up_without_mlflow(trainer_store, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` raises ImportError
    with pytest.raises(TrackingError, match=r"tracking=mlflow needs the Python package 'mlflow'.*neurocache\[tracking\]"):
        check_tracking(load_config(sets=["tracking=mlflow"]))
    check_tracking(load_config())  # tracking: none needs nothing
    out = tmp_path / "out"
    assert main(["cv", "--store", str(trainer_store), "--out", str(out), "--quiet", "--set", "tracking=mlflow"]) == 2
    assert "neurocache[tracking]" in capsys.readouterr().err
    assert not out.exists()  # refused before any run folder was written
    with pytest.raises(ConfigError, match="allowed values: none, mlflow"):
        load_config(sets=["tracking=wandb"])
