"""The operating point (trainer/selection.py) of `trainer cv` and `trainer threshold` (issue 30): the
sens_confidence rule, its config checks, the selection history, and the command on a copy of the tiny cv run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _tiny_runs import tiny_runs

from neurocache.config import ConfigError
from neurocache.errors import UserError
from trainer.config import TrainConfig, load_config
from trainer.evaluation.sens_bound import SensBoundUnreachableError, select_with_confidence
from trainer.evaluation.thresholds import ThresholdUnreachableError
from trainer.runs import files as F
from trainer.selection import choose, read_history, write_selection


def _oof(seed: int = 0, patients: int = 60, slices: int = 5) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(OOF predictions, split) of a synthetic 2-fold CV: patient effects, a third of the patients positive."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(patients), slices)
    pos_patient = rng.random(patients) < 0.35
    y = (pos_patient[g] & (rng.random(g.size) < 0.7)).astype(int)
    z = rng.normal(0, 0.8, patients)[g] + rng.normal(0, 1, g.size) + 2.0 * y - 1.0
    ids = [f"ID_{i}" for i in range(g.size)]
    oof = pd.DataFrame({"ID": ids, "label": y, "prob": 1 / (1 + np.exp(-z)), "prob_raw": 0.5, "fold": g % 2})
    split = pd.DataFrame({"ID": ids, "group": [f"P{k}" for k in g], "label": y, "test": False, "fold": g % 2})
    return oof, split


def test_sens_confidence_config_is_checked_and_names_the_keys():
    cfg = load_config(sets=["threshold_strategy=sens_target", "sens_confidence=0.95"])
    assert cfg.sens_confidence == 0.95 and load_config().sens_confidence == 0.0
    for sets, words in ((["sens_confidence=0.95"], "threshold_strategy"),
                        (["threshold_strategy=sens_target", "sens_confidence=1"], r"\[0, 1\)"),
                        (["threshold_strategy=sens_target", "sens_confidence=-0.1"], r"\[0, 1\)"),
                        (["threshold_strategy=sens_target", "sens_confidence=0.9", "threshold_pooling=folds"], "threshold_pooling"),
                        (["threshold_strategy=sens_target", "sens_confidence=0.9", "n_boot=0"], "n_boot")):
        with pytest.raises(ConfigError, match=words) as e:
            load_config(sets=sets)
        assert "sens_confidence" in str(e.value)


def test_sens_confidence_picks_the_highest_threshold_whose_patient_bound_reaches_the_target():
    oof, split = _oof()
    base = ["threshold_strategy=sens_target", "sens_target=0.8", "n_boot=300", "ci_seed=7"]
    point = choose(oof, split, load_config(sets=base), train_auc={0: 0.9, 1: 0.9}).selection
    op = choose(oof, split, load_config(sets=[*base, "sens_confidence=0.9"]), train_auc={0: 0.9, 1: 0.9})
    sel = op.selection
    cand = op.summary["threshold"].to_numpy()
    direct = select_with_confidence(oof["label"], oof["prob"], split["group"], cand, 0.8, level=0.9, n_boot=300, seed=7)
    assert sel["threshold"] == direct["threshold"] and sel["sens_bound"] == direct
    assert sel["sens_lower_bound"] == direct["sens_lower_bound"] >= 0.8 and sel["sens_confidence"] == 0.9
    assert sel["sens_pooled"] == pytest.approx(direct["sens"])  # the summary row at that threshold
    assert sel["strategy"] == "sens_target" and sel["per_fold"] and "n_candidates" in sel
    # the bound is lower than the point estimate, so the threshold is no higher than the point rule allows
    reach = op.summary.loc[op.summary["sens_pooled"] >= 0.8, "threshold"]
    assert sel["threshold"] <= reach.max() and sel["threshold"] <= point["threshold"] + 1e-12
    assert op.oof_eval["metrics"]["threshold"] == sel["threshold"]  # the OOF evaluation is at the selected threshold
    assert "sens_bound" not in point and "sens_confidence" not in point


def test_an_unreachable_bound_is_a_user_error_naming_target_level_and_best_bound():
    oof, split = _oof(seed=3, patients=12)
    cfg = load_config(sets=["threshold_strategy=sens_target", "sens_target=0.999", "sens_confidence=0.99", "n_boot=200"])
    oof.loc[oof.index[oof["label"] == 1][0], "prob"] = 1e-4  # the lowest score is a positive's: no candidate catches it
    with pytest.raises(SensBoundUnreachableError, match=r"0\.99 lower confidence bound .* sens_target 0\.999.*best bound") as e:
        choose(oof, split, cfg, train_auc={0: 0.5, 1: 0.5})
    assert isinstance(e.value, ThresholdUnreachableError) and isinstance(e.value, UserError)


def test_the_history_keeps_every_selection_and_records_an_older_runs_first(tmp_path):
    (tmp_path / F.THRESHOLD_SELECTION).write_text(json.dumps({"strategy": "max_f1", "pooling": "pooled", "threshold": 0.4}))
    write_selection(tmp_path, {"strategy": "sens_target", "pooling": "pooled", "threshold": 0.3, "sens_target": 0.9},
                    command="threshold")
    write_selection(tmp_path, {"strategy": "max_f1", "pooling": "pooled", "threshold": 0.5}, command="threshold")
    h = read_history(tmp_path)
    assert h["n"].tolist() == [1, 2, 3] and h["command"].tolist() == ["cv", "threshold", "threshold"]
    assert h["threshold"].tolist() == [0.4, 0.3, 0.5] and h["sens_target"].iloc[1] == 0.9
    for n, thr in zip(h["n"], h["threshold"]):
        assert json.loads((tmp_path / F.threshold_history_selection(n)).read_text())["threshold"] == thr
    assert json.loads((tmp_path / F.THRESHOLD_SELECTION).read_text())["threshold"] == 0.5


@pytest.fixture(scope="module")
def runs(trainer_store, tmp_path_factory) -> dict[str, Path]:
    return tiny_runs(trainer_store, tmp_path_factory.getbasetemp() / "eval_runs")


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_threshold_command_reselects_with_cvs_code_and_final_uses_it(runs, tmp_path, capsys):
    from trainer.cli import main
    from trainer.runs.results import CVResult
    from trainer.selection import train_aucs

    cv = tmp_path / runs["cv"].name
    shutil.copytree(runs["cv"], cv)
    # the same policy: the cv's selection, tables and metrics again, byte for byte
    assert main(["threshold", "--cv-run", str(cv)]) == 0
    for name in (F.THRESHOLD_SELECTION, F.CV_METRICS, F.EFFECTIVE_CONFIG, F.CV_THRESHOLDS_SUMMARY, F.CV_THRESHOLDS_BY_FOLD):
        assert (cv / name).read_bytes() == (runs["cv"] / name).read_bytes(), name
    # another policy: what a direct call of the selection code gives
    flags = ["--threshold-strategy", "sens_target", "--sens-target", "0.6", "--sens-confidence", "0.8",
             "--set", "operating_points=[{sens: 0.9}]"]
    assert main(["threshold", "--cv-run", str(cv), *flags]) == 0
    out = capsys.readouterr().out
    assert "80% lower bound" in out and ">= target 0.60" in out
    cfg = TrainConfig.from_dict(_json(runs["cv"] / F.EFFECTIVE_CONFIG)).with_overrides(
        {"threshold_strategy": "sens_target", "sens_target": 0.6, "sens_confidence": 0.8, "operating_points": [{"sens": 0.9}]})
    oof = pd.read_csv(runs["cv"] / F.CV_OOF_PREDICTIONS, dtype={"ID": str})
    split = pd.read_csv(runs["cv"] / F.SPLIT, dtype={"ID": str, "group": str})
    m0 = CVResult.from_dict(_json(runs["cv"] / F.CV_METRICS))
    direct = choose(oof, split, cfg, train_auc=train_aucs(m0.per_fold))
    sel = _json(cv / F.THRESHOLD_SELECTION)
    assert sel == json.loads(json.dumps(direct.selection))
    m = _json(cv / F.CV_METRICS)
    assert m["threshold"] == sel["threshold"] == m["oof"]["metrics"]["threshold"] and m["threshold_strategy"] == "sens_target"
    assert m["oof"]["operating_points"][0]["kind"] == "sens" and m["per_fold"] == _json(runs["cv"] / F.CV_METRICS)["per_fold"]
    conf = _json(cv / F.EFFECTIVE_CONFIG)
    assert (conf["threshold_strategy"], conf["sens_target"], conf["sens_confidence"]) == ("sens_target", 0.6, 0.8)
    # the history holds all three selections
    h = read_history(cv)
    assert h["command"].tolist() == ["cv", "threshold", "threshold"]
    assert h["threshold"].iloc[0] == h["threshold"].iloc[1] == _json(runs["cv"] / F.THRESHOLD_SELECTION)["threshold"]
    assert h["threshold"].iloc[2] == sel["threshold"] and h["sens_lower_bound"].iloc[2] == sel["sens_lower_bound"]
    assert _json(cv / F.threshold_history_selection(1)) == _json(runs["cv"] / F.THRESHOLD_SELECTION)
    assert "Selections of this run" in (cv / F.REPORT).read_text()
    # a key that changes training is refused, and nothing is written
    before = (cv / F.THRESHOLD_SELECTION).read_bytes()
    assert main(["threshold", "--cv-run", str(cv), "--set", "lr_ft=1e-3"]) == 2
    assert "lr_ft" in capsys.readouterr().err and (cv / F.THRESHOLD_SELECTION).read_bytes() == before
    # trainer final on the re-selected run uses the new threshold, and states the bound on the sensitivity row
    out_dir = tmp_path / "out"
    assert main(["final", "--cv-run", str(cv), "--out", str(out_dir), "--quiet"]) == 0
    final = sorted(out_dir.glob("run_*_final*"))[-1]
    assert _json(final / F.MODEL_CARD)["threshold"] == sel["threshold"] == _json(final / F.TEST_METRICS)["threshold"]
    promised = _json(final / F.TEST_METRICS)["promised"]
    assert promised["threshold"] == sel["threshold"] and promised["rows"][0]["cv_lower_bound"] == sel["sens_lower_bound"]
    assert "80% lower bound" in capsys.readouterr().out
    page = (final / F.REPORT).read_text()
    promise = page[page.index('<section id="promise">'):page.index('<section id="summary">')]
    assert f"{sel['sens_pooled']:.3f} (80% lower bound {sel['sens_lower_bound']:.3f} &gt;= target 0.600)" in promise
