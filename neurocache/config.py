"""Preprocessing parameters of a store, read from the ``preprocess:`` section of a YAML config.

Every number that changes the cached arrays lives here; their canonical JSON is hashed into the
store's fingerprint, so a store built with other settings is never reused silently.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from neurocache.errors import UserError

#: blosc filters accepted by ``preprocess.shuffle``.
SHUFFLES = ("shuffle", "bitshuffle", "noshuffle")


class ConfigError(UserError, ValueError):
    """A config file or key is wrong; the message names the key, the value and the fix."""


@dataclass(frozen=True)
class PrepConfig:
    """How a DICOM slice becomes a cached image.

    Attributes:
        size: canonical side S of the cached images, pixels (images are S x S).
        floor_percentile: stored values at or below this percentile of the slice are set to
            ``pad_hu`` (removes the scanner's out-of-field padding), percent.
        skull_percentile: HU percentile of the slice used as the bone threshold for the skull box, percent.
        pad_hu: value used for the floor and the letterbox padding, HU (air).
        min_std_hu: a slice whose HU standard deviation is below this is quarantined as empty, HU.
        min_box_pixels: a skull box smaller than this on either side is quarantined, pixels.
        allowed_modalities: DICOM Modality values accepted; everything else is quarantined.
        fix_12bit_wrap: undo the RSNA 12-bit wrap-around (``BitsStored == 12``,
            ``PixelRepresentation == 0``, ``RescaleIntercept > -100``):
            HU = ((stored + 1000) mod 4096) - 1000, applied to the stored array before the rescale;
            such rows list ``rsna_12bit_wrap`` in ``fixes``.
        assume_rescale: ``[slope, intercept]`` used for a CT slice whose RescaleSlope/RescaleIntercept
            is missing (``fixes`` gets ``assumed_rescale``); None (default) quarantines such a slice
            as ``no_rescale`` (pydicom would silently return the raw stored values).
        shard_size: slices per Zarr shard (one inner chunk per slice).
        compression_level: blosc-zstd level (0-9) for the ``images`` array; 1 is the fastest to
            write and, with ``shuffle``, compresses HU slices about as well as higher levels.
        shuffle: blosc filter before zstd: ``shuffle`` (bytes; the default), ``bitshuffle`` or
            ``noshuffle``.
    """

    size: int = 256
    floor_percentile: float = 1.0
    skull_percentile: float = 98.0
    pad_hu: int = -1024
    min_std_hu: float = 1.0
    min_box_pixels: int = 16
    allowed_modalities: tuple[str, ...] = ("CT",)
    fix_12bit_wrap: bool = True
    assume_rescale: tuple[float, float] | None = None
    shard_size: int = 256
    compression_level: int = 1
    shuffle: str = "shuffle"

    # Parameters that do not change the arrays' values, so they stay out of the fingerprint.
    _LAYOUT_ONLY = ("shard_size", "compression_level", "shuffle")

    def __post_init__(self) -> None:
        _check(self.size >= 16, "size", self.size, "an integer >= 16")
        _check(0.0 <= self.floor_percentile < 50.0, "floor_percentile", self.floor_percentile, "a number in [0, 50)")
        _check(50.0 < self.skull_percentile < 100.0, "skull_percentile", self.skull_percentile, "a number in (50, 100)")
        _check(-32768 <= self.pad_hu <= 32767, "pad_hu", self.pad_hu, "an int16 value")
        _check(self.shard_size >= 1, "shard_size", self.shard_size, "an integer >= 1")
        _check(self.compression_level in range(10), "compression_level", self.compression_level, "an integer in 0..9 (0: no compression)")
        _check(self.shuffle in SHUFFLES, "shuffle", self.shuffle, " or ".join(SHUFFLES))
        _check(len(self.allowed_modalities) > 0, "allowed_modalities", self.allowed_modalities, "a non-empty list")
        _check(isinstance(self.fix_12bit_wrap, bool), "fix_12bit_wrap", self.fix_12bit_wrap, "true or false")
        if self.assume_rescale is not None:
            ar = self.assume_rescale
            _check(
                len(ar) == 2 and all(isinstance(v, (int, float)) and math.isfinite(v) for v in ar) and ar[0] > 0,
                "assume_rescale",
                ar,
                "null or [slope, intercept] with slope > 0, e.g. [1, -1024]",
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every parameter."""
        d = dataclasses.asdict(self)
        d["allowed_modalities"] = list(self.allowed_modalities)
        d["assume_rescale"] = None if self.assume_rescale is None else [float(v) for v in self.assume_rescale]
        return d

    def value_params(self) -> dict[str, Any]:
        """The parameters that change the cached values (the fingerprinted ones)."""
        return {k: v for k, v in self.to_dict().items() if k not in self._LAYOUT_ONLY}

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON of :meth:`value_params` plus the preprocessing version
        (:data:`neurocache.PREPROCESS_VERSION`, under the key ``schema``: the schema version it was up to 3)."""
        from neurocache import PREPROCESS_VERSION

        payload = {"schema": PREPROCESS_VERSION, "preprocess": self.value_params()}
        canon = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, *, source: str = "config") -> PrepConfig:
        """Build from a dict, rejecting unknown keys with the list of valid ones."""
        d = dict(d or {})
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(valid))
        if unknown:
            raise ConfigError(
                f"{source}: unknown key(s) preprocess.{', preprocess.'.join(unknown)}; valid keys are: {', '.join(valid)}"
            )
        if "allowed_modalities" in d:
            mods = d["allowed_modalities"]
            if isinstance(mods, str):
                mods = [mods]
            d["allowed_modalities"] = tuple(str(m).upper() for m in mods)
        if d.get("assume_rescale") is not None:
            ar = d["assume_rescale"]
            if isinstance(ar, (str, bytes)) or not hasattr(ar, "__len__") or len(ar) != 2:
                raise ConfigError(
                    f"{source}: preprocess.assume_rescale={ar!r} is invalid; expected null or [slope, intercept], e.g. [1, -1024]"
                )
            try:
                d["assume_rescale"] = (float(ar[0]), float(ar[1]))
            except (TypeError, ValueError):
                raise ConfigError(
                    f"{source}: preprocess.assume_rescale={ar!r} is invalid; expected two numbers [slope, intercept]"
                ) from None
        return cls(**d)


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"preprocess.{key}={value!r} is invalid; expected {allowed}")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file, invalid YAML or a non-mapping is a ConfigError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    with open(p) as fh:
        try:
            data = yaml.safe_load(fh) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {' '.join(str(e).split())}; fix the line it names") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of keys, got {type(data).__name__}")
    return data


def load_prep_config(path: str | Path | None) -> PrepConfig:
    """The ``preprocess:`` section of a YAML config (defaults when ``path`` is None or the section is absent)."""
    if path is None:
        return PrepConfig()
    data = load_yaml(path)
    return PrepConfig.from_dict(data.get("preprocess"), source=str(path))
