"""The trainer config's parts: :class:`AugConfig` (augmentation ranges) and :class:`StageConfig` (one stage).

Both are built by :class:`trainer.config.TrainConfig`, which re-exports them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["AugConfig", "StageConfig"]


@dataclass(frozen=True)
class AugConfig:
    """Train-time augmentation ranges (see :func:`random_affine`).

    Attributes:
        degrees: max absolute rotation, degrees.
        translate: max absolute shift, fraction of the image size.
        scale: (low, high) zoom range.
        hflip_p: probability of a horizontal flip.
    """

    degrees: float = 10.0
    translate: float = 0.05
    scale: tuple[float, float] = (0.9, 1.1)
    hflip_p: float = 0.5

    def __post_init__(self) -> None:
        if not self.degrees >= 0:
            raise ValueError(f"aug.degrees must be >= 0, got {self.degrees}")
        if not 0.0 <= self.translate < 1.0:
            raise ValueError(f"aug.translate must be in [0, 1), got {self.translate}")
        if len(self.scale) != 2 or not 0.0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"aug.scale must be [low, high] with 0 < low <= high, got {list(self.scale)}")
        if not 0.0 <= self.hflip_p <= 1.0:
            raise ValueError(f"aug.hflip_p must be in [0, 1], got {self.hflip_p}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> AugConfig:
        """Build from a mapping (missing keys take the defaults; unknown keys raise ValueError)."""
        d = dict(d or {})
        valid = ("degrees", "translate", "scale", "hflip_p")
        unknown = sorted(set(d) - set(valid))
        if unknown:
            raise ValueError(f"unknown key(s) aug.{', aug.'.join(unknown)}; valid keys are: {', '.join(valid)}")
        if "scale" in d:
            sc = d["scale"]
            if isinstance(sc, (int, float)):
                raise ValueError(f"aug.scale must be a [low, high] pair, got {sc!r}")
            d["scale"] = tuple(float(v) for v in sc)
            if len(d["scale"]) != 2:
                raise ValueError(f"aug.scale must be a [low, high] pair, got {list(sc)!r}")
        d.update({k: float(d[k]) for k in ("degrees", "translate", "hflip_p") if k in d})
        return cls(**d)


@dataclass(frozen=True)
class StageConfig:
    """One training stage's settings (:meth:`TrainConfig.stage`).

    Attributes:
        name: ``head`` (stage A: head only, backbone frozen) or ``ft`` (stage B: fine-tune).
        lr: base learning rate.
        weight_decay: optimizer weight decay.
        epochs: maximum epochs.
        patience: epochs without a better validation AUPRC (after ``min_epochs``) before stopping.
        min_epochs: the stage never stops before this many epochs.
        warmup_epochs: linear warm-up epochs (``ft`` only; 0 for ``head``).
        lr_schedule: ``constant`` | ``cosine`` after warm-up (``constant`` for ``head``).
        trainable_attrs: modules trained in this stage (None: the stage's default, see
            :func:`trainer.model.set_trainable`).
    """

    name: Literal["head", "ft"]
    lr: float
    weight_decay: float
    epochs: int
    patience: int
    min_epochs: int
    warmup_epochs: int = 0
    lr_schedule: str = "constant"
    trainable_attrs: tuple[str, ...] | None = None
