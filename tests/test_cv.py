"""trainer.folds / trainer.cv: each fold model is made as final makes its model (issue 10): its inner
holdout comes from its training folds only, and its validation fold is scored once by a model that never saw it."""

from __future__ import annotations

import numpy as np
from _fakes import fake_data as _fake_data
from _fakes import fake_split as _split

import trainer.folds as folds_mod
from trainer.config import load_config


def test_inner_holdout_is_carved_from_the_training_folds_only():
    data = _fake_data()
    split = _split(data)
    cfg = load_config(sets=["holdout_frac=0.25"])
    for k in range(3):
        tr, va = folds_mod.fold_rows(split, k)
        fit, hold = folds_mod.inner_holdout(data, tr, cfg, seed=cfg.seed + k)
        assert set(fit) | set(hold) == set(tr) and not set(fit) & set(hold)
        assert not set(hold) & set(va) and not set(fit) & set(va)  # never the validation fold
        assert not set(hold) & set(np.flatnonzero(split["test"]))  # never the test set
        # no patient straddles fit / holdout / validation
        g = data.groups
        assert not set(g[fit]) & set(g[hold]) and not set(g[hold]) & set(g[va]) and not set(g[fit]) & set(g[va])
        assert set(data.labels[hold]) == {0, 1} and set(data.labels[fit]) == {0, 1}
        assert 0.1 < len(hold) / len(tr) < 0.45


def test_run_fold_scores_its_validation_fold_once_with_a_model_that_never_saw_it(monkeypatch):
    data = _fake_data()
    split = _split(data)
    cfg = load_config(sets=["holdout_frac=0.25"])
    seen: dict[str, list] = {"train": [], "stop": [], "predict": []}

    def fake_train(d, train_idx, val_idx, c, *, seed, on_epoch=None):
        seen["train"].append(set(train_idx.tolist()))
        seen["stop"].append(set(val_idx.tolist()))
        return "model", [{"stage": "ft", "epoch": 1}], 0.5

    def fake_predict(model, d, idx, tf, c):
        seen["predict"].append(idx.tolist())
        return np.linspace(0.01, 0.99, len(idx))

    monkeypatch.setattr(folds_mod, "train_model", fake_train)
    monkeypatch.setattr(folds_mod, "predict", fake_predict)
    monkeypatch.setattr(folds_mod, "make_transform", lambda c: None)
    res = folds_mod.collect_folds([folds_mod.run_fold(data, split, cfg, k) for k in folds_mod.fold_ids(split)])
    oof = res.oof
    pool_ids = split.loc[~split["test"], "ID"]
    assert sorted(oof["ID"]) == sorted(pool_ids) and oof["ID"].is_unique  # every pool row exactly once, no test row
    id_row = {i: r for r, i in enumerate(split["ID"])}
    for k, (trained, stopped) in enumerate(zip(seen["train"], seen["stop"])):
        va = {id_row[i] for i in oof.loc[oof["fold"] == k, "ID"]}
        assert not va & trained and not va & stopped  # neither trained nor early-stopped/calibrated on it
        assert sum(sorted(p) == sorted(va) for p in seen["predict"]) == 1  # scored once
    # the original pipeline's way stays available: the validation fold is the early-stopping set
    seen["stop"].clear()
    cfg_seed = load_config(sets=["cv_early_stopping=val_fold"])
    folds_mod.run_fold(data, split, cfg_seed, 0)
    assert seen["stop"][0] == set(folds_mod.fold_rows(split, 0)[1].tolist())
