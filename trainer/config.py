"""The trainer's one config object, :class:`TrainConfig`: YAML -> ``--config-json`` -> the original pipeline's flags -> ``--set key=value``.

Every key has a default (the original pipeline's values) on :class:`TrainConfig`. An unknown key is an error that
names it and lists the valid ones; values are coerced to the default's type, so ``--set lr_ft=1e-4``
works (YAML alone would read ``1e-4`` as a string). The resolved config is saved as
``effective_config.json`` (:meth:`TrainConfig.to_dict`) in every run folder, and read back with
:meth:`TrainConfig.from_dict`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from neurocache.config import ConfigError, PrepConfig, load_yaml
from trainer.config_parts import AugConfig, StageConfig
from trainer.evaluation.calibrators import METHODS as CALIBRATION_METHODS
from trainer.evaluation.operating_points import parse_points
from trainer.evaluation.patient import AGGREGATIONS
from trainer.evaluation.reliability import BIN_STRATEGIES
from trainer.evaluation.thresholds import CANDIDATE_SOURCES, POOLINGS
from trainer.evaluation.thresholds import STRATEGIES as THRESHOLD_STRATEGIES
from trainer.model import OPTIMIZERS, POOLS
from trainer.precision import AMP_VALUES, PRECISIONS
from trainer.saliency.cam import LAYERS as SALIENCY_LAYERS
from trainer.saliency.cam import METHODS as SALIENCY_METHODS
from trainer.saliency.peak import LOCATES as SALIENCY_LOCATES
from trainer.saliency.peak import PEAKS as SALIENCY_PEAKS

__all__ = ["ALLOWED", "DEFAULTS", "AugConfig", "ConfigError", "StageConfig", "TrainConfig", "load_config", "parse_set", "prep_config"]

#: The allowed values of each key with a fixed set of values. A set is defined once, in the module that
#: implements it, and read from there; the sets written here belong to modules that import this one
#: (data.py: group_by, sampler; folds.py: cv_early_stopping; loops.py: lr_schedule; runs/tracking.py:
#: tracking), so they are defined here and nowhere else.
ALLOWED: dict[str, tuple[str, ...]] = {
    "group_by": ("patient", "study", "series", "none"),
    "optimizer": OPTIMIZERS,
    "sampler": ("weighted", "uniform"),
    "threshold_strategy": THRESHOLD_STRATEGIES,
    "patient_aggregation": AGGREGATIONS,
    "calibration_strategy": BIN_STRATEGIES,
    "cv_early_stopping": ("inner_holdout", "val_fold"),
    "calibration": CALIBRATION_METHODS,
    "threshold_pooling": POOLINGS,
    "threshold_candidates": CANDIDATE_SOURCES,
    "lr_schedule": ("constant", "cosine"),
    "pool": POOLS,
    "tracking": ("none", "mlflow"),
    "amp": AMP_VALUES,
    "precision": PRECISIONS,
    "saliency_method": SALIENCY_METHODS,
    "saliency_layer": SALIENCY_LAYERS,
    "saliency_peak": SALIENCY_PEAKS,
    "saliency_locate": SALIENCY_LOCATES,
}

#: The command-line flags of the original pipeline this project re-implements (``trainer cv --seed ...``)
#: and the config keys they set.
ORIGINAL_FLAGS: dict[str, str] = {
    "seed": "seed", "test_size": "test_size", "k_folds": "k_folds", "batch_size": "batch_size",
    "out_size": "out_size", "holdout_frac": "holdout_frac", "prep_plot_n": "prep_plot_n",
    "threshold_strategy": "threshold_strategy", "sens_target": "sens_target",
}


@dataclass(frozen=True)
class TrainConfig:
    """Every trainer setting, validated on construction; units in brackets.

    The field order is the order of ``effective_config.json``. Build one with :func:`load_config`
    (files and overrides), :meth:`from_dict` (a saved config) or :meth:`with_overrides`.
    """

    seed: int = 42                     # seeds the split, the model init, batch order and augmentation
    test_size: float = 0.2             # fraction of groups held out for the final test
    k_folds: int = 5                   # cross-validation folds on the training pool
    group_by: str = "patient"          # patient | study | series | none: slices of a group never straddle splits
    batch_size: int = 32               # training batch [images]
    eval_batch_size: int = 128         # evaluation batch [images]
    num_workers: int = 0               # kept so saved configs keep their keys; batches are formed on the device
    out_size: int = 224                # model input side [pixels]
    windows: tuple[tuple[float, float], ...] = ((40.0, 80.0),)  # (center, width) [HU] per channel
    context_slices: int = 0            # 2.5D: k neighbours per side stacked as channels (0 = the slice alone)
    aug: AugConfig = field(default_factory=AugConfig)  # train-time augmentation ranges
    weights: str = "none"              # none | imagenet | path to a resnet18 state_dict (configs/default.yaml: imagenet;
                                       # the built-in fallback is none so a config without the key never downloads)
    pool: str = "avg"                  # avg | max: global pooling of the last feature map (max keeps a small lesion's peak)
    dropout: float = 0.3               # head: Dropout(p) -> Linear(512, 1)
    optimizer: str = "adamw"           # adamw | sgd
    momentum: float = 0.9              # sgd only
    nesterov: bool = True              # sgd only
    lr_head: float = 3e-3              # stage A: head only, backbone frozen
    weight_decay_head: float = 5e-5
    epochs_head: int = 12
    patience_head: int = 2             # epochs without a better validation AUPRC before stopping
    min_epochs_head: int = 0           # stage A never stops before this many epochs, whatever the patience
    lr_ft: float = 1.5e-4              # stage B: fine-tune
    weight_decay_ft: float = 7e-4
    epochs_ft: int = 12
    patience_ft: int = 2
    min_epochs_ft: int = 0             # stage B never stops before this many epochs
    warmup_epochs: int = 0             # stage B: learning rate ramps linearly up to lr_ft over this many epochs
    lr_schedule: str = "constant"      # constant | cosine: stage B's rate after warm-up (cosine decays to 0 at epochs_ft)
    min_delta: float = 0.0             # an epoch counts as better only if validation AUPRC rises by more than this
    ema_decay: float = 0.0             # 0 = off; else validate/keep an exponential moving average of the weights (per step)
    restore_best: bool = True          # True: early stopping, the best holdout epoch kept | False: every epoch, the last kept
    ft_trainable_attrs: tuple[str, ...] | None = None  # None = all modules; or e.g. [layer3, layer4, fc]
    sampler: str = "weighted"          # weighted (class-balanced, with replacement) | uniform
    pos_weight: str | float = "none"   # none | auto (n_neg / n_pos) | a number: BCE positive-class weight
    holdout_frac: float = 0.15         # grouped stratified holdout of training rows: early stopping + calibration only
    cv_early_stopping: str = "inner_holdout"  # inner_holdout: each fold stops/calibrates on a holdout of its own
                                       # training folds, as final does | val_fold: the original pipeline's way (optimistic)
    calibration: str = "platt"         # platt | temperature | isotonic | none (trainer/evaluation/calibrators.py)
    threshold_strategy: str = "max_f1" # max_f1 | sens_target
    sens_target: float = 0.9           # for sens_target: minimum CV sensitivity
    sens_confidence: float = 0.0       # 0 = off; e.g. 0.95 (sens_target only): the highest threshold whose one-sided
                                       # lower confidence bound of the pooled OOF sensitivity (patient bootstrap) >= target
    threshold_pooling: str = "pooled"  # pooled: metrics of all OOF rows at once | folds: mean over folds (the original pipeline's)
    threshold_candidates: str = "oof"  # oof: midpoints between the pooled OOF scores | grid: 0, step, ..., 1
    threshold_step: float = 0.01       # grid step (threshold_candidates: grid)
    prep_plot_n: int = 4               # slices per class in preprocessing_examples_label{0,1}.png
    device: str = "auto"               # auto | cpu | cuda | cuda:N
    amp: str = "auto"                  # auto: bf16 autocast on CUDA and on CPUs with bf16 units (AMX, AVX512-BF16), fp32
                                       # elsewhere | true: bf16 | false: fp32 (trainer/precision.py)
    precision: str = ""                # bf16 | fp32: what amp resolved to, recorded by `trainer cv` and used by final
                                       # and predict (fold and final models train alike); "" = resolve on use
    channels_last: bool = True         # NHWC memory format for the model and its input (faster on GPUs and oneDNN CPUs)
    compile: bool = False              # torch.compile the model (docs/benchmarks.md: slower end to end on the demo's CPU)
    memory_budget_gb: float = 8.0      # ok images (int16) up to this size live on the training device [GB]
    stream_shards: int = 4             # streaming: store shards shuffled together and held on the device at a time
    stream_readers: int = 1            # streaming: threads reading/decoding shards ahead
    threads: int = 0                   # torch CPU threads (0 = torch's default)
    preprocess: dict[str, Any] = field(default_factory=dict)  # the store's preprocessing, as given (PrepConfig keys)
    n_boot: int = 1000                 # bootstrap resamples (of patients) for the intervals; 0 = none
    ci_level: float = 0.95             # confidence level of every interval
    ci_seed: int = 12345               # seeds the bootstrap: a rerun gives the same intervals
    patient_aggregation: str = "max"   # max | mean | pair (series order: consecutive slices agree)
    calibration_bins: int = 10         # reliability-diagram bins
    calibration_strategy: str = "uniform"  # uniform | quantile bin edges
    operating_points: tuple[dict[str, float], ...] = ()  # e.g. [{sens: 0.9}, {spec: 0.95}]: spec/sens/PPV there (OOF, test)
    gallery_n: int = 6                 # report.html: most confident false positives / false negatives shown
    saliency_method: str = "gradcam"   # gradcam | gradcampp: predict --saliency and the report's saliency gallery (MONAI)
    saliency_layer: str = "layer4"     # layer1..layer4: the ResNet18 stage the map is taken from (layer4: 1/32 of out_size)
    saliency_peak: str = "anywhere"    # anywhere | tissue | brain: where the map's peak (peak_row, peak_col) is looked for
    saliency_locate: str = "centroid"  # centroid | max: the peak is the centre of the half-maximum region round the maximum, or the maximum
    tracking: str = "none"             # none | mlflow (trainer/runs/tracking.py; needs the `tracking` extra)
    tracking_uri: str = ""             # MLflow tracking URI; "" = sqlite file OUT/mlruns/mlflow.db

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.name != "aug" and isinstance(f.default, (bool, int, float)):
                object.__setattr__(self, f.name, _coerce(f.name, getattr(self, f.name), f.default))
        if isinstance(self.aug, Mapping):
            object.__setattr__(self, "aug", _aug(self.aug))
        if isinstance(self.amp, bool) or str(self.amp).lower() in ("true", "false"):  # YAML reads `amp: true` as a bool
            object.__setattr__(self, "amp", str(self.amp).lower())
        PrepConfig.from_dict(self.preprocess, source="config")  # validates the keys
        try:
            object.__setattr__(self, "operating_points", parse_points(self.operating_points))
        except ValueError as e:
            raise ConfigError(f"config key {e}") from None
        object.__setattr__(self, "preprocess", dict(self.preprocess or {}))
        for k, allowed in ALLOWED.items():
            if getattr(self, k) not in allowed:
                raise ConfigError(f"config key {k}={getattr(self, k)!r} is invalid; allowed values: {', '.join(allowed)}")
        _check_ranges(self)
        pw = self.pos_weight
        if isinstance(pw, str) and pw not in ("none", "auto"):
            try:
                object.__setattr__(self, "pos_weight", float(pw))
            except ValueError:
                raise ConfigError(f"config key pos_weight={pw!r} is invalid; allowed: none, auto or a number") from None
        attrs = self.ft_trainable_attrs
        if isinstance(attrs, str):
            attrs = [s.strip() for s in attrs.split(",") if s.strip()]
        object.__setattr__(self, "ft_trainable_attrs", None if attrs is None else tuple(attrs))
        w = self.windows
        if not (isinstance(w, (list, tuple)) and w and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in w)):
            raise ConfigError(f"config key windows={w!r} must be a list of [center, width] pairs in HU")
        object.__setattr__(self, "windows", tuple((float(c), float(wd)) for c, wd in w))

    # -- the one override path -------------------------------------------------------------
    def with_overrides(self, over: Mapping[str, Any]) -> TrainConfig:
        """A new config with ``over`` (a nested mapping of keys to values) applied.

        Raises:
            ConfigError: unknown key, wrong type or value; the message names the key.
        """
        return TrainConfig.from_dict(_merge(self.to_dict(), dict(over)))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """From a plain mapping (e.g. a run's ``effective_config.json``); missing keys take the defaults."""
        merged = _merge(_defaults(), dict(d))
        return cls(**{**merged, "aug": _aug(merged["aug"])})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (lists, not tuples), in field order: ``effective_config.json``."""
        return _listify(dataclasses.asdict(self))

    def stage(self, name: Literal["head", "ft"]) -> StageConfig:
        """Stage ``head`` (A) or ``ft`` (B) settings; warm-up, schedule and trainable modules are stage B's only."""
        if name == "head":
            return StageConfig("head", self.lr_head, self.weight_decay_head, self.epochs_head, self.patience_head,
                               self.min_epochs_head)
        return StageConfig("ft", self.lr_ft, self.weight_decay_ft, self.epochs_ft, self.patience_ft, self.min_epochs_ft,
                           self.warmup_epochs, self.lr_schedule, self.ft_trainable_attrs)

    @property
    def total_epochs(self) -> int:
        """Maximum epochs of both stages."""
        return self.epochs_head + self.epochs_ft

    @property
    def prep(self) -> PrepConfig:
        """The store preprocessing the config expects."""
        return PrepConfig.from_dict(self.preprocess, source="config preprocess")


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(f"config key {msg}")


def _check_ranges(c: TrainConfig) -> None:
    _check(0 < c.test_size < 1, f"test_size={c.test_size} must be in (0, 1)")
    _check(c.k_folds >= 2, f"k_folds={c.k_folds} must be >= 2")
    _check(c.out_size >= 16, f"out_size={c.out_size} must be >= 16 pixels")
    _check(0 <= c.context_slices <= 8 and (c.context_slices == 0 or c.group_by != "none"), f"context_slices="
           f"{c.context_slices} must be 0..8 per side, with group_by patient|study|series (none would leak neighbours)")
    _check(c.stream_readers >= 1, f"stream_readers={c.stream_readers} must be >= 1 (shard reader threads when streaming)")
    _check(c.stream_shards >= 1, f"stream_shards={c.stream_shards} must be >= 1 (shards held on the device when streaming)")
    _check(0 < c.holdout_frac < 1, f"holdout_frac={c.holdout_frac} must be in (0, 1)")
    _check(c.n_boot >= 0, f"n_boot={c.n_boot} must be >= 0 (0 = no bootstrap intervals)")
    _check(0 < c.ci_level < 1, f"ci_level={c.ci_level} must be in (0, 1), e.g. 0.95")
    _check(c.calibration_bins >= 2, f"calibration_bins={c.calibration_bins} must be >= 2")
    _check(c.gallery_n >= 0, f"gallery_n={c.gallery_n} must be >= 0")
    _check(0 <= c.sens_target <= 1, f"sens_target={c.sens_target} must be in [0, 1]")
    _check(0 <= c.sens_confidence < 1, f"sens_confidence={c.sens_confidence} must be in [0, 1) (0 = off; e.g. 0.95)")
    if c.sens_confidence > 0:
        _check(c.threshold_strategy == "sens_target", f"sens_confidence={c.sens_confidence} needs threshold_strategy: "
               f"sens_target (it bounds the sensitivity that sens_target asks for), not {c.threshold_strategy}; set "
               f"threshold_strategy: sens_target or sens_confidence: 0")
        _check(c.threshold_pooling == "pooled", f"sens_confidence={c.sens_confidence} bounds the pooled OOF sensitivity: "
               f"it needs threshold_pooling: pooled, not {c.threshold_pooling}")
        _check(c.n_boot >= 1 and c.sens_target > 0, f"sens_confidence={c.sens_confidence} needs n_boot >= 1 (the "
               f"patient bootstrap; n_boot={c.n_boot}) and sens_target > 0 (sens_target={c.sens_target})")
    for key in ("min_epochs_head", "min_epochs_ft", "warmup_epochs"):
        _check(getattr(c, key) >= 0, f"{key}={getattr(c, key)} must be >= 0 epochs")
    _check(c.min_delta >= 0, f"min_delta={c.min_delta} must be >= 0 (an AUPRC improvement)")
    _check(0 <= c.ema_decay < 1, f"ema_decay={c.ema_decay} must be in [0, 1) (0 = no weight averaging)")
    _check(0 < c.threshold_step <= 0.5, f"threshold_step={c.threshold_step} must be in (0, 0.5]")


def _aug(d: Mapping[str, Any]) -> AugConfig:
    try:
        return AugConfig.from_dict(d)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config key {e}") from None


def _listify(o: Any) -> Any:
    if isinstance(o, dict):
        return {k: _listify(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_listify(v) for v in o]
    return o


def _defaults() -> dict[str, Any]:
    return TrainConfig().to_dict()  # a fresh copy each time (callers merge into it)


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Coerce ``value`` to the type of ``default`` with a message naming the key."""
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() in ("true", "1", "yes", "on"):
                    return True
                if value.lower() in ("false", "0", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if isinstance(default, int) and not isinstance(default, bool):
            f = float(value)
            if f != int(f):
                raise ValueError(value)
            return int(f)
        if isinstance(default, float):
            return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config key {key}={value!r} is invalid; expected a {type(default).__name__}") from None
    return value


def _merge(base: dict[str, Any], over: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``base`` with ``over``'s keys applied (nested mappings merged, ``preprocess`` replaced whole)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        name = f"{prefix}{k}"
        if prefix == "" and k == "preprocess":
            PrepConfig.from_dict(v, source="config")  # validates keys
            out[k] = dict(v or {})
            continue
        if k not in base:
            valid = ", ".join(sorted(base))
            raise ConfigError(f"unknown config key {name!r}; valid keys{' under ' + prefix[:-1] if prefix else ''} are: {valid}")
        if isinstance(base[k], dict):
            if not isinstance(v, dict):
                raise ConfigError(f"config key {name} must be a mapping, got {v!r}")
            out[k] = _merge(base[k], v, prefix=f"{name}.")
        else:
            out[k] = _coerce(name, v, base[k]) if base[k] is not None else v
    return out


DEFAULTS: dict[str, Any] = _defaults()  #: the defaults as a plain dict (effective_config.json with no overrides)


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """``["a=1", "aug.degrees=5"]`` -> nested override dict (values parsed as YAML)."""
    over: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} must look like key=value (e.g. --set lr_ft=1e-4)")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        node = over
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return over


def load_config(
    path: str | Path | None = None,
    *,
    config_json: str | None = None,
    flags: Mapping[str, Any] | None = None,
    sets: list[str] | None = None,
) -> TrainConfig:
    """Resolve the trainer config.

    Order (later wins): the defaults < YAML ``path`` < ``config_json`` (a JSON file or an inline
    JSON object) < ``flags``, the original pipeline's command-line flags (values that are not None) < ``--set`` items. Each layer's keys
    and types are checked as it is applied; the whole is validated once at the end.

    Raises:
        ConfigError: unknown key, wrong type or value; the message names the key.
    """
    d = _defaults()
    if path is not None:
        d = _merge(d, load_yaml(path))
    if config_json:
        p = Path(config_json)
        try:
            data = json.loads(p.read_text()) if p.is_file() else json.loads(config_json)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--config-json {config_json!r} is neither a JSON file nor a JSON object: {e}") from None
        d = _merge(d, data)
    d = _merge(d, {ORIGINAL_FLAGS[k]: v for k, v in (flags or {}).items() if v is not None})
    return TrainConfig.from_dict(_merge(d, parse_set(sets)))


def prep_config(cfg: TrainConfig) -> PrepConfig:
    """The store preprocessing the config expects."""
    return cfg.prep
