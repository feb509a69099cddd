"""The trainer's one config object: YAML -> ``--config-json`` -> seed flags -> ``--set key=value``.

Every key has a default in :data:`DEFAULTS` (the seed's values). An unknown key is an error that
names it and lists the valid ones; values are coerced to the default's type, so ``--set lr_ft=1e-4``
works (YAML alone would read ``1e-4`` as a string). The resolved config is saved as
``effective_config.json`` in every run folder.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

from neurocache.config import ConfigError, PrepConfig, load_yaml

# The seed's defaults. Comments say what each key does; units in brackets.
DEFAULTS: dict[str, Any] = {
    "seed": 42,                     # seeds the split, the model init, batch order and augmentation
    "test_size": 0.2,               # fraction of groups held out for the final test
    "k_folds": 5,                   # cross-validation folds on the training pool
    "group_by": "patient",          # patient | study | series | none: slices of a group never straddle splits
    "batch_size": 32,               # training batch [images]
    "eval_batch_size": 128,         # evaluation batch [images]
    "num_workers": 0,               # kept for the seed's CLI; batches are formed on the device, no workers
    "out_size": 224,                # model input side [pixels]
    "windows": [[40, 80]],          # (center, width) [HU] per channel; one window is repeated to 3 channels
    "aug": {"degrees": 10.0, "translate": 0.05, "scale": [0.9, 1.1], "hflip_p": 0.5},
    "weights": "none",              # none | imagenet | path to a resnet18 state_dict. configs/default.yaml sets
                                    # imagenet (the seed's transfer learning); the built-in fallback is none so a
                                    # config file without the key never starts a download
    "dropout": 0.3,                 # head: Dropout(p) -> Linear(512, 1)
    "optimizer": "adamw",           # adamw | sgd
    "momentum": 0.9,                # sgd only
    "nesterov": True,               # sgd only
    "lr_head": 3e-3,                # stage A: head only, backbone frozen
    "weight_decay_head": 5e-5,
    "epochs_head": 12,
    "patience_head": 2,             # epochs without a better validation AUPRC before stopping
    "min_epochs_head": 0,           # stage A never stops before this many epochs, whatever the patience
    "lr_ft": 1.5e-4,                # stage B: fine-tune
    "weight_decay_ft": 7e-4,
    "epochs_ft": 12,
    "patience_ft": 2,
    "min_epochs_ft": 0,             # stage B never stops before this many epochs (a model still on its plateau
                                    # is not stopped by patience alone)
    "warmup_epochs": 0,             # stage B: learning rate ramps linearly up to lr_ft over this many epochs
    "lr_schedule": "constant",      # constant | cosine: stage B's rate after warm-up (cosine decays to 0 at epochs_ft)
    "min_delta": 0.0,               # an epoch counts as better only if validation AUPRC rises by more than this
    "ft_trainable_attrs": None,     # None = all modules; or e.g. [layer3, layer4, fc]
    "sampler": "weighted",          # weighted (class-balanced sampling with replacement) | uniform
    "pos_weight": "none",           # none | auto (n_neg / n_pos) | a number: BCE positive-class weight
    "holdout_frac": 0.15,           # grouped stratified holdout carved from a model's training rows (final model
                                    # and, with cv_early_stopping: inner_holdout, every fold model): early stopping
                                    # and calibration only
    "cv_early_stopping": "inner_holdout",  # inner_holdout: each fold stops and calibrates on a holdout of its own
                                    # training folds, as final does, and its validation fold is scored once |
                                    # val_fold: the seed's way, stops on the fold it is scored on (optimistic)
    "calibration": "platt",         # platt | temperature | isotonic | none: post-hoc map fitted on that holdout
                                    # (trainer/calibrators.py says why platt is the default)
    "threshold_strategy": "max_f1", # max_f1 | sens_target
    "sens_target": 0.9,             # for sens_target: minimum CV sensitivity
    "threshold_pooling": "pooled",  # pooled: metrics of all OOF rows at once | folds: mean over folds (the seed's)
    "threshold_candidates": "oof",  # oof: midpoints between the pooled OOF scores | grid: 0, step, ..., 1;
                                    # either way, no threshold that puts every OOF slice in one class
    "threshold_step": 0.01,         # grid step (threshold_candidates: grid)
    "prep_plot_n": 4,               # slices per class in preprocessing_examples_label{0,1}.png
    "device": "auto",               # auto | cpu | cuda | cuda:N
    "amp": True,                    # bf16 autocast on CUDA (ignored on CPU)
    "channels_last": True,          # CUDA memory format
    "compile": False,               # torch.compile the model (CUDA)
    "memory_budget_gb": 8.0,        # ok images (int16) up to this size live on the training device; above it they stream
    "stream_shards": 4,             # streaming: store shards shuffled together and held on the device at a time
    "stream_readers": 1,            # streaming: threads reading/decoding shards ahead (one decodes ~1 core's worth)
    "threads": 0,                   # torch CPU threads (0 = torch's default)
    "preprocess": {},               # the store's preprocessing; must match the store's fingerprint
    # evaluation (trainer/evaluation.py): intervals, calibration, patient level, report.html
    "n_boot": 1000,                 # bootstrap resamples (of patients) for the AUC/AUPRC/sens/spec/PPV/NPV intervals; 0 = none
    "ci_level": 0.95,               # confidence level of every interval
    "ci_seed": 12345,               # seeds the bootstrap: a rerun gives the same intervals
    "patient_aggregation": "max",   # max | mean: a patient's score from its slices; its label is positive if any slice is
    "calibration_bins": 10,         # reliability-diagram bins
    "calibration_strategy": "uniform",  # uniform | quantile bin edges
    "gallery_n": 6,                 # report.html: most confident false positives / false negatives shown
    # experiment tracking (trainer/tracking.py): optional, needs `pip install 'neurocache[tracking]'`
    "tracking": "none",             # none | mlflow: log each cv/final run (flattened config, metrics, run folder as artifacts)
    "tracking_uri": "",             # MLflow tracking URI; "" = sqlite file OUT/mlruns/mlflow.db (+ OUT/mlruns/artifacts), no server
}

ALLOWED: dict[str, tuple[str, ...]] = {
    "group_by": ("patient", "study", "series", "none"),
    "optimizer": ("adamw", "sgd"),
    "sampler": ("weighted", "uniform"),
    "threshold_strategy": ("max_f1", "sens_target"),
    "patient_aggregation": ("max", "mean"),
    "calibration_strategy": ("uniform", "quantile"),
    "cv_early_stopping": ("inner_holdout", "val_fold"),
    "calibration": ("platt", "temperature", "isotonic", "none"),
    "threshold_pooling": ("pooled", "folds"),
    "threshold_candidates": ("oof", "grid"),
    "lr_schedule": ("constant", "cosine"),
    "tracking": ("none", "mlflow"),
}

# The seed's command-line flags and the keys they set.
SEED_FLAGS: dict[str, str] = {
    "seed": "seed", "test_size": "test_size", "k_folds": "k_folds", "batch_size": "batch_size",
    "num_workers": "num_workers", "out_size": "out_size", "holdout_frac": "holdout_frac",
    "prep_plot_n": "prep_plot_n", "threshold_strategy": "threshold_strategy", "sens_target": "sens_target",
}


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


def _validate(cfg: dict[str, Any]) -> dict[str, Any]:
    for k, allowed in ALLOWED.items():
        if cfg[k] not in allowed:
            raise ConfigError(f"config key {k}={cfg[k]!r} is invalid; allowed values: {', '.join(allowed)}")
    if not 0 < cfg["test_size"] < 1:
        raise ConfigError(f"config key test_size={cfg['test_size']} must be in (0, 1)")
    if cfg["k_folds"] < 2:
        raise ConfigError(f"config key k_folds={cfg['k_folds']} must be >= 2")
    if cfg["out_size"] < 16:
        raise ConfigError(f"config key out_size={cfg['out_size']} must be >= 16 pixels")
    if cfg["stream_readers"] < 1:
        raise ConfigError(f"config key stream_readers={cfg['stream_readers']} must be >= 1 (shard reader threads when streaming)")
    if cfg["stream_shards"] < 1:
        raise ConfigError(f"config key stream_shards={cfg['stream_shards']} must be >= 1 (shards held on the device when streaming)")
    if not 0 < cfg["holdout_frac"] < 1:
        raise ConfigError(f"config key holdout_frac={cfg['holdout_frac']} must be in (0, 1)")
    if cfg["n_boot"] < 0:
        raise ConfigError(f"config key n_boot={cfg['n_boot']} must be >= 0 (0 = no bootstrap intervals)")
    if not 0 < cfg["ci_level"] < 1:
        raise ConfigError(f"config key ci_level={cfg['ci_level']} must be in (0, 1), e.g. 0.95")
    if cfg["calibration_bins"] < 2:
        raise ConfigError(f"config key calibration_bins={cfg['calibration_bins']} must be >= 2")
    if cfg["gallery_n"] < 0:
        raise ConfigError(f"config key gallery_n={cfg['gallery_n']} must be >= 0")
    if not 0 <= cfg["sens_target"] <= 1:
        raise ConfigError(f"config key sens_target={cfg['sens_target']} must be in [0, 1]")
    for key in ("min_epochs_head", "min_epochs_ft", "warmup_epochs"):
        if cfg[key] < 0:
            raise ConfigError(f"config key {key}={cfg[key]} must be >= 0 epochs")
    if cfg["min_delta"] < 0:
        raise ConfigError(f"config key min_delta={cfg['min_delta']} must be >= 0 (an AUPRC improvement)")
    if not 0 < cfg["threshold_step"] <= 0.5:
        raise ConfigError(f"config key threshold_step={cfg['threshold_step']} must be in (0, 0.5]")
    pw = cfg["pos_weight"]
    if isinstance(pw, str) and pw not in ("none", "auto"):
        try:
            cfg["pos_weight"] = float(pw)
        except ValueError:
            raise ConfigError(f"config key pos_weight={pw!r} is invalid; allowed: none, auto or a number") from None
    if isinstance(cfg["ft_trainable_attrs"], str):
        cfg["ft_trainable_attrs"] = [s.strip() for s in cfg["ft_trainable_attrs"].split(",") if s.strip()]
    w = cfg["windows"]
    if not (isinstance(w, list) and w and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in w)):
        raise ConfigError(f"config key windows={w!r} must be a list of [center, width] pairs in HU")
    cfg["windows"] = [[float(c), float(wd)] for c, wd in w]
    cfg["aug"]["scale"] = [float(s) for s in cfg["aug"]["scale"]]
    return cfg


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
    flags: dict[str, Any] | None = None,
    sets: list[str] | None = None,
) -> dict[str, Any]:
    """Resolve the trainer config.

    Order (later wins): :data:`DEFAULTS` < YAML ``path`` < ``config_json`` (a JSON file or an inline
    JSON object) < seed ``flags`` (values that are not None) < ``--set`` items.

    Raises:
        ConfigError: unknown key, wrong type or value; the message names the key.
    """
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        cfg = _merge(cfg, load_yaml(path))
    if config_json:
        p = Path(config_json)
        try:
            data = json.loads(p.read_text()) if p.is_file() else json.loads(config_json)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--config-json {config_json!r} is neither a JSON file nor a JSON object: {e}") from None
        cfg = _merge(cfg, data)
    if flags:
        cfg = _merge(cfg, {SEED_FLAGS[k]: v for k, v in flags.items() if v is not None})
    if sets:
        cfg = _merge(cfg, parse_set(sets))
    return _validate(cfg)


def prep_config(cfg: dict[str, Any]) -> PrepConfig:
    """The store preprocessing the config expects."""
    return PrepConfig.from_dict(cfg.get("preprocess"), source="config preprocess")
