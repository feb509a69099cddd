"""Weight averaging (``ema_decay``): the EMA torch keeps is the textbook one, and it is what fit_stage
validates, keeps and restores."""

from __future__ import annotations

import numpy as np
import pytest
from _tiny_runs import TINY_PREP_SETS
import torch

from trainer.config import ConfigError, load_config
from trainer.data import load_dataset
from trainer.evaluation.metrics import ranking_scores
from trainer.loops import _ema, fit_stage, predict
from trainer.transforms import make_transform
from trainer.model import build_model


def test_ema_is_the_exponential_moving_average_of_the_steps():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema, module = _ema(net, 0.9)
    assert module is ema.module
    seen = []
    for _ in range(4):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        net.train()(torch.randn(8, 3))  # moves the BatchNorm running statistics
        seen.append({k: v.detach().clone().float() for k, v in net.state_dict().items() if v.is_floating_point()})
        ema.update(net)
    ref = seen[0]
    for step in seen[1:]:
        ref = {k: 0.9 * ref[k] + 0.1 * step[k] for k in ref}
    got = ema.module.state_dict()
    for k, v in ref.items():  # weights and buffers alike
        torch.testing.assert_close(got[k].float(), v)
    assert _ema(net, 0.0) == (None, net)


def test_ema_decay_must_be_below_one():
    with pytest.raises(ConfigError, match="ema_decay"):
        load_config(sets=["ema_decay=1.0"])


def _fit_ema(store, *extra: str):
    """fit_stage of stage ft (3 epochs, EMA 0.5) on 40 rows; returns (result, model, data, holdout rows, transform, cfg)."""
    cfg = load_config(sets=[*TINY_PREP_SETS, "out_size=32", "batch_size=8",
                            "eval_batch_size=32", "epochs_ft=3", "ema_decay=0.5", "device=cpu",
                            "weights=none", "lr_ft=0.01", *extra])
    data = load_dataset(str(store), cfg, torch.device("cpu"))
    rows = np.random.default_rng(0).permutation(len(data.labels))
    tr, va = rows[:40], rows[40:]
    tf = make_transform(cfg)
    torch.manual_seed(0)
    model = build_model(weights="none", dropout=0.0, in_channels=tf.channels)
    res = fit_stage(model, data, tr, va, tf, cfg, stage="ft", generator=torch.Generator().manual_seed(0))
    return res, model, data, va, tf, cfg


def test_fit_stage_restores_the_averaged_weights_it_validated(trainer_store):
    res, model, data, va, tf, cfg = _fit_ema(trainer_store, "patience_ft=3")
    assert len(res.history) == 3 and res.best_epoch >= 1
    ap, _ = ranking_scores(data.labels[va], predict(model, data, va, tf, cfg))
    assert ap == pytest.approx(res.history[res.best_epoch - 1]["val_auprc"], abs=1e-12)  # the averaged weights
    assert ap == pytest.approx(res.best_auprc, abs=1e-12)


def test_fit_stage_never_restores_the_untrained_weights(trainer_store):
    # min_delta 1.0: no epoch can beat another, so the first trained epoch is kept (never the initial weights,
    # which an untrained model's lucky holdout AUPRC used to win back)
    cfg = load_config(sets=[*TINY_PREP_SETS, "out_size=32", "batch_size=8",
                            "eval_batch_size=32", "epochs_ft=2", "patience_ft=5", "min_delta=1.0", "device=cpu",
                            "weights=none"])
    data = load_dataset(str(trainer_store), cfg, torch.device("cpu"))
    rows = np.random.default_rng(1).permutation(len(data.labels))
    tf = make_transform(cfg)
    torch.manual_seed(0)
    model = build_model(weights="none", dropout=0.0, in_channels=tf.channels)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    res = fit_stage(model, data, rows[:40], rows[40:], tf, cfg, stage="ft", generator=torch.Generator().manual_seed(0))
    assert res.best_epoch == 1 and res.best_auprc == pytest.approx(res.history[0]["val_auprc"])
    assert not torch.equal(model.state_dict()["fc.1.weight" if "fc.1.weight" in initial else "fc.weight"],
                           initial["fc.1.weight" if "fc.1.weight" in initial else "fc.weight"])


def test_restore_best_false_trains_every_epoch_and_keeps_the_last(trainer_store):
    res, model, data, va, tf, cfg = _fit_ema(trainer_store, "patience_ft=0", "restore_best=false")
    assert len(res.history) == 3 and res.best_epoch == 3  # patience 0 stops nothing
    ap, _ = ranking_scores(data.labels[va], predict(model, data, va, tf, cfg))
    assert ap == pytest.approx(res.history[-1]["val_auprc"], abs=1e-12)  # the last epoch's (averaged) weights
