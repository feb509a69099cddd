"""The trainer's user errors (neurocache.errors.UserError): ``python -m trainer`` prints those in one line
and exit status 2, anything else reaches the user with its traceback; cheap local checks come before
slow or networked ones."""

from __future__ import annotations

import ast
import urllib.error
from pathlib import Path

import pytest
import yaml
from _exceptions import package_exceptions
from _tiny_runs import TINY

import trainer
from neurocache.errors import UserError
from trainer.cli import main
from trainer.cli import main as trainer_main

ROOT = Path(__file__).resolve().parents[1]

#: Exception classes of the trainer that never reach a user, and why.
INTERNAL = {
    "trainer.report.sections.Missing": "a report section without its input: the report shows the message in place",
}


def _trainer_exceptions() -> dict[str, type[BaseException]]:
    """Every exception class defined in a trainer module, by qualified name."""
    return package_exceptions(trainer)


@pytest.fixture
def tiny_cfg(tmp_path) -> Path:
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump({**TINY, "threads": 1}))
    return p


def test_every_user_facing_error_is_a_user_error_with_its_builtin_base():
    found = _trainer_exceptions()
    bases = {  # the builtin each always was (or the one its plain raise was), so `except ValueError` callers keep working
        "trainer.runs.folder.RunError": RuntimeError, "trainer.runs.folder.RunNotFoundError": FileNotFoundError,
        "trainer.model.WeightsUnavailableError": RuntimeError, "trainer.model.WeightsFileError": ValueError,
        "trainer.model.WeightsNotFoundError": FileNotFoundError,
        "trainer.evaluation.thresholds.ThresholdUnreachableError": ValueError, "trainer.split.SplitError": ValueError,
        "trainer.data.DeviceUnavailableError": RuntimeError, "trainer.runs.tracking.TrackingError": ValueError,
        "trainer.evaluation.sens_bound.SensBoundUnreachableError": ValueError,
    }
    assert set(bases) <= set(found)
    for name, base in bases.items():
        assert issubclass(found[name], UserError) and issubclass(found[name], base), name
    not_user = [name for name, cls in found.items() if not issubclass(cls, UserError) and name not in INTERNAL]
    assert not_user == [], f"derive these from neurocache.errors.UserError or list them in INTERNAL: {not_user}"
    assert trainer.RunError is found["trainer.runs.folder.RunError"]


def test_the_cli_catches_only_user_errors():
    tree = ast.parse((ROOT / "trainer" / "cli.py").read_text())
    caught = [ast.unparse(h.type) if h.type is not None else "<bare>" for h in ast.walk(tree) if isinstance(h, ast.ExceptHandler)]
    assert caught == ["UserError"]


def test_predict_does_not_import_the_training_code():
    """``trainer.predict`` finds RunError in trainer.runs, not through trainer.final (which pulls in training)."""
    tree = ast.parse((ROOT / "trainer" / "predict.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not imported & {"trainer.final", "trainer.cv", "trainer.folds"}


@pytest.mark.parametrize("error", [ValueError("internal: a bug"), RuntimeError("internal: a bug"),
                                   FileNotFoundError("internal: a bug")])
def test_an_internal_error_keeps_its_traceback(monkeypatch, tmp_path, capsys, error):
    import trainer.report.html

    def broken(run, **kw):
        raise error

    monkeypatch.setattr(trainer.report.html, "write_report", broken)
    with pytest.raises(type(error), match="internal: a bug") as e:
        main(["report", str(tmp_path)])
    assert e.value is error and e.traceback[-1].name == "broken"  # the traceback reaches the user unchanged
    assert capsys.readouterr().err == ""


def test_an_internal_error_in_cv_keeps_its_traceback(monkeypatch, tmp_path, tiny_cfg, capsys):
    import trainer.cv

    def broken(store, cfg, **kw):
        raise ValueError("internal: a bug in cv")

    monkeypatch.setattr(trainer.cv, "run_cv", broken)
    with pytest.raises(ValueError, match="internal: a bug in cv"):
        main(["cv", "--store", str(tmp_path / "s.zarr"), "--config", str(tiny_cfg), "--out", str(tmp_path / "out")])
    assert capsys.readouterr().err == ""


def test_missing_store_is_one_line(tmp_path, tiny_cfg, capsys):
    store = tmp_path / "nonexistent.zarr"
    out = tmp_path / "out"
    assert main(["cv", "--store", str(store), "--config", str(tiny_cfg), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"trainer cv: error: no neurocache store at {store}: "
                                f"run `neurocache build --store {store} ...` (or `make cache`) first"]
    assert not out.exists()  # nothing written


def test_missing_store_is_said_before_the_imagenet_weights_are_fetched(tmp_path, monkeypatch, capsys):
    import trainer.model

    fetched = []

    def fetch():
        fetched.append(True)
        raise trainer.model.WeightsUnavailableError("offline: could not get the ImageNet ResNet18 weights")

    monkeypatch.setattr(trainer.model, "_fetch_imagenet_state_dict", fetch)
    store = tmp_path / "typo.zarr"
    config = ROOT / "configs" / "default.yaml"
    assert yaml.safe_load(config.read_text())["weights"] == "imagenet"
    assert main(["cv", "--store", str(store), "--config", str(config), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and f"no neurocache store at {store}" in err and "ImageNet" not in err
    assert fetched == []


def test_cuda_without_cuda_is_one_line_before_any_run_folder(trainer_store, tmp_path, tiny_cfg, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "out"
    assert main(["cv", "--store", str(trainer_store), "--config", str(tiny_cfg), "--out", str(out), "--quiet",
                 "--set", "device=cuda"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "trainer cv: error: config key device='cuda' but CUDA is not available; use device: auto or cpu"]
    assert not out.exists()


@pytest.mark.parametrize(("argv", "message"), [
    (["final", "--cv-run", "{tmp}/no_such_run"], "trainer final: error: run folder {tmp}/no_such_run does not exist"),
    (["report", "{tmp}/no_such_run"], "trainer report: error: run folder {tmp}/no_such_run does not exist"),
    (["runs", "--out", "{tmp}/no_outputs"], "trainer runs: error: outputs folder {tmp}/no_outputs does not exist"),
    (["cv", "--store", "{tmp}/s.zarr", "--run-grid", "--grid", "{tmp}/no_grid.yaml"],
     "trainer cv: error: grid file {tmp}/no_grid.yaml does not exist"),
])
def test_missing_paths_are_one_line(tmp_path, capsys, argv, message):
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    assert capsys.readouterr().err.splitlines() == [message.format(tmp=tmp_path)]


def test_imagenet_offline_fails_before_any_split(trainer_store, tmp_path, monkeypatch, capsys):
    import torch
    import torchvision.models._api as tv_api

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*a, **k):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(tv_api, "load_state_dict_from_url", offline)
    out = tmp_path / "out"
    # the default config (imagenet) on the test store's preprocessing: the store passes its (cheaper) check first
    rc = trainer_main(["cv", "--store", str(trainer_store), "--config", str(ROOT / "configs" / "default.yaml"),
                       "--set", "preprocess.size=64", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in err
    assert "weights: none" in err and "state_dict" in err
    assert not out.exists() or not list(out.glob("run_*"))  # nothing written: no split, no run folder


def test_predict_arguments_are_checked_before_the_model_is_loaded(tmp_path, capsys):
    """A final run whose weights file is not a model: a bad --batch-size is said before the file is read."""
    import json

    from neurocache.config import PrepConfig
    from trainer.config import TrainConfig
    from trainer.runs import files as F

    run = tmp_path / "run_20260101_000000_final"
    run.mkdir()
    (run / F.FINAL_MODEL).write_bytes(b"not a state_dict")
    card = {"config": TrainConfig().to_dict(), "threshold": 0.5, "preprocess": PrepConfig(**TINY["preprocess"]).to_dict(),
            "store": {"fingerprint": PrepConfig(**TINY["preprocess"]).fingerprint()}}
    (run / F.MODEL_CARD).write_text(json.dumps(card))
    argv = ["predict", "--run", str(run), str(tmp_path), "--out", str(tmp_path / "p.csv"), "--quiet", "--device", "cpu"]
    assert main([*argv, "--batch-size", "-1"]) == 2  # (reading the weights would fail with a traceback)
    assert capsys.readouterr().err.splitlines() == ["trainer predict: error: batch size must be >= 1, got -1"]
