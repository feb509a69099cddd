"""The training schedule (trainer.loops): learning-rate warm-up and cosine decay, and training that does not
stop before it starts (min_epochs) (issue 10)."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml
from _tiny_runs import TINY_BASE

from trainer.cli import main as trainer_main
from trainer.loops import lr_factor


def test_lr_factor_warmup_then_cosine():
    assert [lr_factor(e, 5, warmup=1, schedule="cosine") for e in (1, 2)] == [0.5, 1.0]
    f = [lr_factor(e, 10, warmup=2, schedule="cosine") for e in range(1, 11)]
    assert f[:3] == pytest.approx([1 / 3, 2 / 3, 1.0]) and all(a > b for a, b in zip(f[2:], f[3:])) and 0 < f[-1] < 0.05
    assert [lr_factor(e, 4) for e in range(1, 5)] == [1.0] * 4


def test_min_epochs_keeps_training_past_patience(trainer_store, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        **TINY_BASE, "epochs_head": 0, "epochs_ft": 5, "patience_ft": 0, "min_epochs_ft": 3,
        "min_delta": 1.0,  # no epoch can count as better: only min_epochs_ft + patience keep it going
        "threads": 2, "n_boot": 0}))
    assert trainer_main(["cv", "--store", str(trainer_store), "--config", str(cfg), "--out", str(tmp_path), "--quiet"]) == 0
    run = sorted(tmp_path.glob("run_*_cv*"))[-1]
    hist = pd.read_csv(run / "cv_histories.csv")
    # min_epochs_ft=3 epochs are never counted; the 4th is the first bad one and ends the stage (patience 0)
    assert hist.groupby("fold")["epoch"].max().tolist() == [4, 4]
