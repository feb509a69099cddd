"""Streaming mode of the trainer's data path: same batches, same predictions as the resident path."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from _tiny_runs import TINY_PREP
import torch

from trainer.config import TrainConfig, load_config
from trainer.data import SliceSource, load_dataset
from trainer.streaming import StoreImages
from trainer.loops import fit_stage, predict
from trainer.transforms import make_transform
from trainer.model import build_model


def _cfg(**over) -> TrainConfig:
    base = {"preprocess": TINY_PREP, "out_size": 32, "batch_size": 5, "eval_batch_size": 7,
            "epochs_head": 1, "patience_head": 0, "sampler": "uniform"}
    return load_config(None, config_json=__import__("json").dumps({**base, **over}))


@pytest.fixture(scope="module")
def resident(synth_store) -> SliceSource:
    return load_dataset(str(synth_store), _cfg(), torch.device("cpu"))


@pytest.fixture(scope="module")
def streamed(synth_store) -> SliceSource:
    # A budget below one image forces streaming; one shard per group makes batches straddle groups.
    return load_dataset(str(synth_store), _cfg(memory_budget_gb=1e-9, stream_shards=1), torch.device("cpu"))


def test_budget_picks_the_mode(resident, streamed):
    assert not resident.streaming and isinstance(resident.images, torch.Tensor)
    assert streamed.streaming and isinstance(streamed.images, StoreImages)
    assert streamed.images.shard_rows == 16 and len(streamed.images) == len(resident.images) > 16
    rows = torch.tensor([5, 0, 5, len(resident.images) - 1])
    assert torch.equal(streamed.images[rows], resident.images[rows])  # row reads, duplicates kept in order
    assert streamed.device == resident.device


@pytest.mark.parametrize("group_shards", [1, 2, 4])
def test_uniform_epoch_visits_each_row_once_with_the_resident_images(synth_store, resident, group_shards):
    data = load_dataset(str(synth_store), _cfg(memory_budget_gb=1e-9, stream_shards=group_shards), torch.device("cpu"))
    idx = np.arange(len(data.labels))[::2][::-1].copy()  # a subset, in no particular order
    for seed in (0, 1):
        seen, sizes = [], []
        for b, hu in data.batches(idx, 5, generator=torch.Generator().manual_seed(seed)):
            assert b.dtype == torch.int64 and hu.dtype == torch.int16
            assert torch.equal(hu, resident.images[b])
            seen.append(b.numpy())
            sizes.append(len(b))
        seen = np.concatenate(seen)
        assert sorted(seen.tolist()) == sorted(idx.tolist())  # every training row exactly once
        assert sizes[:-1] == [5] * (len(sizes) - 1)
    # the order is shuffled, and depends on the seed
    a = np.concatenate([b.numpy() for b, _ in data.batches(idx, 5, generator=torch.Generator().manual_seed(0))])
    c = np.concatenate([b.numpy() for b, _ in data.batches(idx, 5, generator=torch.Generator().manual_seed(1))])
    assert not np.array_equal(a, c) and not np.array_equal(a, np.sort(a))


def test_weighted_and_drop_last_and_eval_order(streamed, resident):
    idx = np.arange(len(streamed.labels))
    got = [b for b, _ in streamed.batches(idx, 4, generator=torch.Generator().manual_seed(3), sampler="weighted")]
    rows = torch.cat(got).numpy()
    assert len(rows) == len(idx) and set(rows) <= set(idx)
    dropped = [len(b) for b, _ in streamed.batches(idx, 7, generator=torch.Generator().manual_seed(3), drop_last=True)]
    assert dropped == [7] * (len(idx) // 7)
    ev = np.concatenate([b.numpy() for b, _ in streamed.batches(idx[::-1], 6, shuffle=False)])
    assert sorted(ev.tolist()) == idx.tolist()
    with pytest.raises(ValueError, match="Generator"):
        next(streamed.batches(idx, 4))


def test_predictions_match_the_resident_path(resident, streamed):
    cfg = _cfg()
    tf = make_transform(cfg)
    torch.manual_seed(0)
    model = build_model(weights="none", dropout=0.0, in_channels=tf.channels)
    idx = np.random.default_rng(0).permutation(len(resident.labels))[:30]
    p_res = predict(model, resident, idx, tf, cfg)
    p_str = predict(model, streamed, idx, tf, cfg)
    assert p_res.shape == (30,) and p_res.dtype == np.float64
    np.testing.assert_allclose(p_str, p_res, rtol=1e-5, atol=1e-6)


def test_training_runs_streamed_and_records_data_wait(streamed):
    cfg = _cfg(memory_budget_gb=1e-9)
    tf = make_transform(cfg)
    torch.manual_seed(0)
    model = build_model(weights="none", dropout=0.0, in_channels=tf.channels)
    n = len(streamed.labels)
    res = fit_stage(model, streamed, np.arange(0, n - 10), np.arange(n - 10, n), tf, cfg, stage="head",
                    generator=torch.Generator().manual_seed(0))
    rec = res.history[0]
    assert 0.0 <= rec["data_wait_frac"] <= 1.0 and rec["data_wait_s"] >= 0
    assert rec["train_images_per_s"] > 0 and rec["train_seconds"] <= rec["seconds"]


def test_an_abandoned_epoch_stops_its_reader_thread(streamed):
    before = {t.ident for t in threading.enumerate()}
    it = streamed.batches(np.arange(len(streamed.labels)), 3, generator=torch.Generator().manual_seed(0))
    next(it)
    it.close()  # e.g. an exception in the training step
    left = [t for t in threading.enumerate() if t.ident not in before and t.name == "neurocache-shard-reader"]
    assert not left


@pytest.mark.parametrize("readers", [2, 3])
def test_several_reader_threads_give_the_same_batches(synth_store, streamed, readers):
    many = load_dataset(str(synth_store), _cfg(memory_budget_gb=1e-9, stream_shards=1, stream_readers=readers),
                        torch.device("cpu"))
    assert many.stream_readers == readers
    idx = np.arange(len(many.labels))
    for kw in ({"generator": torch.Generator().manual_seed(5)}, {"shuffle": False}):
        one = list(streamed.batches(idx, 6, **{k: (torch.Generator().manual_seed(5) if k == "generator" else v)
                                                 for k, v in kw.items()}))
        got = list(many.batches(idx, 6, **kw))
        assert len(one) == len(got)
        for (b1, h1), (b2, h2) in zip(one, got):
            assert torch.equal(b1, b2) and torch.equal(h1, h2)
    it = many.batches(idx, 6, generator=torch.Generator().manual_seed(1))
    next(it)
    it.close()  # a consumer that stops early: the reader threads end
    assert not [t for t in threading.enumerate() if t.name.startswith("neurocache-shard-reader") and t.is_alive()]


def test_shard_reads_without_zarr_equal_zarr(streamed):
    imgs = streamed.images
    assert imgs._layout is not None  # the store's own layout: shards are decoded by neurocache.shards
    n_shards = -(-len(imgs) // imgs.shard_rows)
    for k in range(n_shards):
        lo, hi = k * imgs.shard_rows, min((k + 1) * imgs.shard_rows, len(imgs))
        got = imgs.read_shard(k, pin=False)
        assert got.dtype == torch.int16 and torch.equal(got, torch.from_numpy(np.asarray(imgs.array[lo:hi])))
