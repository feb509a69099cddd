"""Writing a run folder: a new folder (named as :mod:`trainer.runs.files` says), its JSON, the environment."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from trainer.runs.files import EFFECTIVE_CONFIG, STAMP_FORMAT, run_dir_name


def new_run_dir(out: str | Path, kind: str) -> Path:
    """``out/run_YYYYMMDD_HHMMSS_<kind>``; a suffix ``_2``, ``_3``… when that name is taken."""
    stamp = _dt.datetime.now().strftime(STAMP_FORMAT)
    base = Path(out) / run_dir_name(stamp, kind)
    path, i = base, 2
    while path.exists():
        path = base.with_name(f"{base.name}_{i}")
        i += 1
    path.mkdir(parents=True)
    return path


def _default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return None if np.isnan(o) else float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _clean(o: Any) -> Any:
    """NaN -> None, recursively (JSON has no NaN); a dataclass becomes its ``to_dict()`` (or ``asdict``)."""
    if isinstance(o, float) and math.isnan(o):
        return None
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return _clean(o.to_dict() if hasattr(o, "to_dict") else dataclasses.asdict(o))
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def write_json(path: Path, obj: Any) -> None:
    """``obj`` as indented JSON (NaN -> null, numpy scalars/arrays, paths and dataclasses converted) plus a newline."""
    path.write_text(json.dumps(_clean(obj), indent=2, default=_default) + "\n")


def write_config(run: Path, cfg: Any) -> None:
    """``effective_config.json``: the resolved config (:meth:`trainer.config.TrainConfig.to_dict`)."""
    write_json(Path(run) / EFFECTIVE_CONFIG, cfg)


def environment(device: Any) -> dict[str, Any]:
    """Package versions, Python, platform and device, for the run's provenance."""
    pkgs = {}
    for name in ("neurocache", "torch", "torchvision", "numpy", "pandas", "scikit-learn", "zarr", "pydicom", "dask"):
        try:
            pkgs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pkgs[name] = None
    env = {"python": sys.version.split()[0], "platform": platform.platform(), "packages": pkgs, "device": str(device)}
    try:
        import torch

        env["torch_threads"] = torch.get_num_threads()
        if str(device).startswith("cuda"):
            env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    except Exception:
        pass
    return env
