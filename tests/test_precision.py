"""Precision and per-step work: amp auto/true/false, the CPU's bf16 units injected from the test, no host sync
in a training step or a straddling streamed batch, channels_last only when asked, the CUDA device made current."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from _tiny_runs import TINY_PREP_SETS
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import trainer.precision as precision
from trainer.config import ConfigError, load_config
from trainer.config_parts import AugConfig
from trainer.data import load_dataset
from trainer.loops import _StepClock, _train_epoch
from trainer.transforms import make_transform
from trainer.model import build_model, make_optimizer
from trainer.precision import cpu_flags, native_bf16, recorded_precision, resolve_precision, scoring_precision
from trainer.streaming import _gather
from trainer.transforms import BatchTransform

CPU = torch.device("cpu")


def test_auto_is_bf16_only_on_a_cpu_with_bf16_units():
    assert resolve_precision("auto", CPU, cpu_bf16=True) == "bf16"
    assert resolve_precision("auto", CPU, cpu_bf16=False) == "fp32"  # emulated bf16 is slower than fp32 there
    for has in (True, False):
        assert resolve_precision("true", CPU, cpu_bf16=has) == "bf16"
        assert resolve_precision("false", CPU, cpu_bf16=has) == "fp32"


def test_auto_on_cuda_follows_the_card(monkeypatch):
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(precision, "_cuda_bf16", lambda dev: True)
    assert resolve_precision("auto", cuda, cpu_bf16=False) == "bf16"
    monkeypatch.setattr(precision, "_cuda_bf16", lambda dev: False)
    assert resolve_precision("auto", cuda, cpu_bf16=True) == "fp32"


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 amx_tile amx_bf16\n\nprocessor\t: 1\n")
    assert {"avx512_bf16", "amx_bf16"} <= cpu_flags(x86) and native_bf16(cpu_flags(x86))
    old = tmp_path / "old"
    old.write_text("flags\t\t: fpu sse avx2 avx512f avx512bw\n")  # AVX-512 without bf16: emulated
    assert not native_bf16(cpu_flags(old))
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n")
    assert native_bf16(cpu_flags(arm))
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_amp_config_values():
    assert load_config(sets=["amp=true"]).amp == "true"  # YAML reads true as a bool
    assert load_config(sets=["amp=false"]).amp == "false"
    assert load_config().amp == "auto" and load_config().precision == ""
    with pytest.raises(ConfigError, match="amp"):
        load_config(sets=["amp=fp16"])
    with pytest.raises(ConfigError, match="precision"):
        load_config(sets=["precision=fp16"])


def test_scoring_uses_the_models_precision_and_says_when_it_is_emulated():
    assert scoring_precision("fp32", CPU, cpu_bf16=True) == "fp32"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert scoring_precision("bf16", CPU, cpu_bf16=True) == "bf16"
    with pytest.warns(UserWarning, match="emulated"):
        assert scoring_precision("bf16", CPU, cpu_bf16=False) == "bf16"
    # runs made before `precision` was recorded: bf16 autocast on CUDA unless amp was false, fp32 on CPU
    assert recorded_precision("", "true", CPU) == "fp32"
    assert recorded_precision("", "true", torch.device("cuda")) == "bf16"
    assert recorded_precision("", "false", torch.device("cuda")) == "fp32"
    assert recorded_precision("bf16", "false", CPU) == "bf16"


def test_autocast_runs_the_convolutions_in_bf16():
    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.randn(2, 3, 8, 8)
    with precision.autocast(CPU, "bf16"):
        assert conv(x).dtype == torch.bfloat16
    with precision.autocast(CPU, "fp32"):
        assert conv(x).dtype == torch.float32


@pytest.mark.parametrize("channels_last", [True, False])
def test_channels_last_only_when_asked(channels_last):
    tf = BatchTransform(windows=((40.0, 80.0),), out_size=24, aug=AugConfig(), channels_last=channels_last)
    hu = torch.full((3, 32, 32), 40, dtype=torch.int16)
    for train in (True, False):
        x = tf(hu, train=train, generator=torch.Generator().manual_seed(0))
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        assert x.is_contiguous(memory_format=fmt) and x.shape == (3, 3, 24, 24)
    assert make_transform(load_config(sets=["channels_last=false"])).channels_last is False


class _Ops(TorchDispatchMode):
    """Records the aten ops run under it."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func.overloadpacket.__name__))
        return func(*args, **(kwargs or {}))


#: ops that make the host wait for the device: reading a value (.item(), float(t)), counting a mask
HOST_SYNC = {"_local_scalar_dense", "nonzero", "is_nonzero", "masked_select"}


def test_a_training_epoch_reads_one_device_value(synth_store):
    """With EMA and the class-balanced sampler, the only host read in an epoch is its mean loss at the end."""
    cfg = load_config(sets=[*TINY_PREP_SETS, "out_size=32", "batch_size=8",
                            "ema_decay=0.9", "amp=true", "weights=none"])
    data = load_dataset(str(synth_store), cfg, CPU)
    tf = make_transform(cfg)
    model = build_model(weights="none", in_channels=tf.channels).to(memory_format=torch.channels_last)
    from trainer.loops import _ema

    ema, _ = _ema(model, cfg.ema_decay)
    opt = make_optimizer(list(model.parameters()), name="adamw", lr=1e-3, weight_decay=0.0)
    idx = np.arange(min(24, len(data.labels)))
    with _Ops() as rec:
        loss, seen, phases = _train_epoch(model, data, idx, tf, cfg, opt, torch.nn.BCEWithLogitsLoss(),
                                          torch.Generator().manual_seed(0), ema)
    syncs = [op for op in rec.ops if op in HOST_SYNC]
    assert syncs == ["_local_scalar_dense"], syncs  # float(mean loss), once per epoch
    assert seen == len(idx) and np.isfinite(loss) and ema.updates == len(idx) // 8
    assert phases["fwd_bwd_s"] > 0 and phases["ema_s"] > 0


def test_a_straddling_streamed_batch_is_gathered_without_a_mask(synth_store):
    cfg = load_config(sets=[*TINY_PREP_SETS, "memory_budget_gb=1e-9"])
    streamed = load_dataset(str(synth_store), cfg, CPU)
    images, sr = streamed.images, streamed.images.shard_rows
    resident = torch.from_numpy(np.asarray(streamed.store.images[:]))
    n_store = -(-len(images) // sr)
    # groups of one shard: shard 0 is group 0, shard 1 group 1; both loaded; the last shard's rows come from the store
    loaded = {g: images.read_shard(g, pin=False) for g in (0, 1)}
    group_of_shard = np.full(n_store, -1)
    group_of_shard[[0, 1]] = [0, 1]
    slot = np.zeros(n_store, dtype=np.int64)
    rows = np.array([3, sr + 2, 1, len(images) - 1, sr])  # straddles two loaded groups and the store
    with _Ops() as rec:
        got = _gather(images, rows, loaded, group_of_shard, slot)
    assert torch.equal(got, resident[torch.from_numpy(rows)])
    assert not [op for op in rec.ops if op in HOST_SYNC - {"_local_scalar_dense"}]  # no boolean device mask
    assert "index_put" not in rec.ops and "index_put_" not in rec.ops


def test_a_cuda_device_is_made_current(monkeypatch):
    from trainer import data as data_mod

    made: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: made.append(torch.device(d)))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert data_mod.pick_device("cuda:1") == torch.device("cuda", 1)
    assert data_mod.pick_device("cuda") == torch.device("cuda", 0)
    assert made == [torch.device("cuda", 1), torch.device("cuda", 0)]


def test_step_clock_records_on_the_training_devices_stream(monkeypatch):
    asked: list[torch.device] = []

    class FakeEvent:
        t = 0.0

        def __init__(self, enable_timing: bool) -> None:
            FakeEvent.t += 1.0
            self.at = FakeEvent.t

        def record(self, stream) -> None:
            assert stream == "stream"

        def elapsed_time(self, other: FakeEvent) -> float:
            return (other.at - self.at) * 1e3  # ms

        def synchronize(self) -> None:
            pass

    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda dev: asked.append(dev) or "stream")
    clock = _StepClock(torch.device("cuda", 1))
    clock.start_step()
    for _ in range(4):
        clock.mark()
    clock.stop()
    assert set(asked) == {torch.device("cuda", 1)}
    tot = clock.totals()
    assert tot == {"data_s": 1.0, "fwd_bwd_s": 1.0, "optimizer_s": 1.0, "ema_s": 1.0, "step_s": 5.0}
