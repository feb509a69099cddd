"""2.5D inputs end to end: context stacks from the store's links, through both data modes and the transform."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _tiny_runs import TINY_PREP
import torch

from neurocache.config import ConfigError
from trainer.config import load_config
from trainer.context import context_rows
from trainer.data import load_dataset
from trainer.loops import predict
from trainer.transforms import make_transform
from trainer.model import build_model
from trainer.transforms import BatchTransform


def _cfg(**over):
    base = {"preprocess": TINY_PREP, "out_size": 32, "batch_size": 5, "eval_batch_size": 7,
            "sampler": "uniform", "context_slices": 1}
    return load_config(None, config_json=json.dumps({**base, **over}))


@pytest.fixture(scope="module")
def resident(synth_store):
    return load_dataset(str(synth_store), _cfg(), torch.device("cpu"))


@pytest.fixture(scope="module")
def streamed(synth_store):
    with pytest.warns(UserWarning, match="most neighbours are read one by one"):  # the cost is said, not hidden
        return load_dataset(str(synth_store), _cfg(memory_budget_gb=1e-9, stream_shards=1), torch.device("cpu"))


def test_resident_batches_hold_the_stack_of_each_row(resident):
    prev, nxt = (resident.table[c].to_numpy() for c in ("prev_row", "next_row"))
    idx = np.arange(len(resident.labels))
    for b, hu in resident.batches(idx, 5, generator=torch.Generator().manual_seed(0)):
        assert hu.shape == (len(b), 3) + tuple(resident.images.shape[1:])
        for i, r in enumerate(b.tolist()):
            lo = prev[r] if prev[r] >= 0 else r  # a missing neighbour is the centre slice
            hi = nxt[r] if nxt[r] >= 0 else r
            assert torch.equal(hu[i, 0], resident.images[lo])
            assert torch.equal(hu[i, 1], resident.images[r])
            assert torch.equal(hu[i, 2], resident.images[hi])
    assert (prev >= 0).sum() > len(prev) // 2  # the phantom series are linked (not a vacuous check)


@pytest.mark.parametrize("group_shards", [1, 3])
def test_streamed_stacks_equal_the_resident_ones(synth_store, resident, group_shards):
    with pytest.warns(UserWarning, match="context_slices=1"):
        data = load_dataset(str(synth_store), _cfg(memory_budget_gb=1e-9, stream_shards=group_shards), torch.device("cpu"))
    assert data.streaming
    idx = np.arange(len(data.labels))[::-1].copy()
    seen = []
    for b, hu in data.batches(idx, 5, generator=torch.Generator().manual_seed(3)):
        stack = context_rows(b, torch.as_tensor(resident.table["prev_row"].to_numpy().copy()),
                             torch.as_tensor(resident.table["next_row"].to_numpy().copy()), 1)
        assert torch.equal(hu, resident.images[stack])
        seen += b.tolist()
    assert sorted(seen) == sorted(idx.tolist())


def test_streamed_predictions_with_context_match_resident(resident, streamed):
    cfg = _cfg()
    tf = make_transform(cfg)
    assert tf.channels == 3 and tf.stack == 3
    torch.manual_seed(0)
    model = build_model(weights="none", in_channels=tf.channels)
    idx = np.arange(len(resident.labels))
    np.testing.assert_allclose(predict(model, streamed, idx, tf, cfg), predict(model, resident, idx, tf, cfg), rtol=0, atol=1e-12)


def test_transform_channels_are_each_slice_through_each_window_with_one_warp():
    g = torch.Generator().manual_seed(0)
    stack = (torch.rand((4, 3, 40, 40), generator=g) * 300 - 100).to(torch.int16)
    wins = ((40.0, 80.0), (600.0, 2800.0))
    ctx = BatchTransform(windows=wins, out_size=24, context=1)
    plain = BatchTransform(windows=wins + ((40.0, 80.0),), out_size=24)  # 3 channels: w0, w1, w0
    assert ctx.channels == 6
    for train in (False, True):
        out = ctx(stack, train=train, generator=torch.Generator().manual_seed(5))
        assert out.shape == (4, 6, 24, 24)
        for j in range(3):  # slice j -> channels 2j (window 0) and 2j + 1 (window 1), same warp for every slice
            ref = plain(stack[:, j], train=train, generator=torch.Generator().manual_seed(5))
            mean, std = sum((0.485, 0.456, 0.406)) / 3, sum((0.229, 0.224, 0.225)) / 3  # C = 6: averaged statistics
            # undo each transform's normalisation, compare the windowed-and-warped intensities
            ref_01 = ref * torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1) + torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
            got_01 = out[:, 2 * j : 2 * j + 2] * std + mean
            torch.testing.assert_close(got_01, ref_01[:, :2], rtol=0, atol=1e-5)


def test_transform_refuses_a_batch_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"\(B, 3, S, S\)"):
        BatchTransform(context=1)(torch.zeros((2, 32, 32), dtype=torch.int16), train=False)
    with pytest.raises(ValueError, match=r"\(B, S, S\)"):
        BatchTransform()(torch.zeros((2, 3, 32, 32), dtype=torch.int16), train=False)


def test_context_needs_a_grouped_split_and_a_small_k():
    with pytest.raises(ConfigError, match="context_slices"):
        _cfg(group_by="none")
    with pytest.raises(ConfigError, match="context_slices"):
        _cfg(context_slices=9)
    assert _cfg(context_slices=0, group_by="none").context_slices == 0
