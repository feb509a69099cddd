"""Which arithmetic a model trains and scores in: bf16 autocast where the hardware does it natively, fp32 elsewhere.

The config key ``amp`` asks (``auto`` | ``true`` | ``false``); :func:`resolve_precision` answers with
``"bf16"`` or ``"fp32"`` for a device: ``auto`` is bf16 on CUDA and on CPUs with native bf16 units
(Intel AMX-BF16 / AVX512-BF16: Sapphire Rapids and later; AMD Zen 4 and later; Arm cores with the BF16
extension), fp32 on other CPUs, where bf16 is emulated and slower than fp32. The answer is recorded
with the run (``effective_config.json`` key ``precision``, ``model_card.json``), and evaluation,
calibration and ``predict`` use the model's own precision (:func:`scoring_precision`).
"""

from __future__ import annotations

import functools
import platform
import warnings
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, Literal

import torch

__all__ = ["AMP_VALUES", "PRECISIONS", "autocast", "cpu_flags", "native_bf16", "recorded_precision", "resolve_precision",
           "scoring_precision"]

Precision = Literal["bf16", "fp32"]
#: the values of config key ``amp``
AMP_VALUES: tuple[str, ...] = ("auto", "true", "false")
#: the values of config key ``precision`` ("" = not resolved yet: the trainer fills it in at start-up)
PRECISIONS: tuple[str, ...] = ("", "bf16", "fp32")

#: CPU feature flags (Linux ``/proc/cpuinfo`` names) that mean bf16 matrix arithmetic in hardware:
#: x86 AMX tiles and AVX512 dot products, Arm's BF16 extension (``Features: ... bf16``).
BF16_FLAGS: frozenset[str] = frozenset({"amx_bf16", "avx512_bf16", "bf16"})


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags from ``cpuinfo`` (the ``flags`` / ``Features`` line); empty where there is no such file."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return frozenset()


def native_bf16(flags: Iterable[str]) -> bool:
    """True when the CPU ``flags`` include a bf16 matrix unit (:data:`BF16_FLAGS`)."""
    return bool(BF16_FLAGS & set(flags))


@functools.lru_cache(maxsize=1)
def _this_cpu_bf16() -> bool:
    return native_bf16(cpu_flags())


def _cuda_bf16(device: torch.device) -> bool:
    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def resolve_precision(amp: str, device: torch.device, *, cpu_bf16: bool | None = None) -> Precision:
    """``"bf16"`` or ``"fp32"``: what config ``amp`` means on ``device``.

    Args:
        amp: ``auto`` (bf16 where the device does it natively), ``true`` (bf16), ``false`` (fp32).
        device: the training device.
        cpu_bf16: whether this CPU has native bf16 units; None reads it from the CPU flags
            (:func:`cpu_flags`). Tests inject it.
    """
    if amp == "false":
        return "fp32"
    if amp == "true":
        return "bf16"
    if device.type == "cuda":
        return "bf16" if _cuda_bf16(device) else "fp32"
    if device.type == "cpu":
        return "bf16" if (_this_cpu_bf16() if cpu_bf16 is None else cpu_bf16) else "fp32"
    return "fp32"


def recorded_precision(precision: str, amp: str, device: torch.device) -> Precision:
    """The precision a run was trained in: its recorded ``precision``; for runs made before that key
    existed (``precision`` ""), what they did: bf16 autocast on CUDA unless ``amp`` was false, fp32 on CPU."""
    if precision and precision in PRECISIONS:  # "" is the one value that is not a precision
        return precision  # type: ignore[return-value]
    return "bf16" if device.type == "cuda" and amp != "false" else "fp32"


def scoring_precision(trained: str, device: torch.device, *, cpu_bf16: bool | None = None) -> Precision:
    """The precision to score a model trained in ``trained`` with on ``device``: its own, said aloud when it cannot be.

    bf16 runs on every CPU (emulated, slower, where there are no bf16 units: a warning says so) and on
    CUDA cards that support it; a CUDA card without bf16 scores in fp32 with a warning (scores then
    differ from the run's in about the third decimal).
    """
    if trained != "bf16":
        return "fp32"
    if device.type == "cuda" and not _cuda_bf16(device):
        warnings.warn("the model was trained and calibrated in bf16, but this GPU has no bf16: scoring in fp32 "
                      "(probabilities may differ from the run's in the third decimal)", stacklevel=2)
        return "fp32"
    has = _this_cpu_bf16() if cpu_bf16 is None else cpu_bf16
    if device.type == "cpu" and not has:
        warnings.warn(f"the model was trained and calibrated in bf16; this CPU ({platform.processor() or 'unknown'}) "
                      "has no bf16 units, so bf16 is emulated (slower than fp32, same scores)", stacklevel=2)
    return "bf16"


def autocast(device: torch.device, precision: str) -> AbstractContextManager[Any]:
    """``torch.autocast`` to bf16 on ``device`` when ``precision`` is ``bf16``; a null context for ``fp32``."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()
