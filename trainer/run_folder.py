"""Reading a run folder back: :func:`load_run` -> :class:`Run` (what ``trainer.load_run`` is).

One reader for every consumer: ``trainer final`` (the cv run it continues), ``report.html``,
``trainer runs``, MLflow tracking and notebooks. A cv run and a final run share ``run_args.json``,
``effective_config.json`` and ``store.json``; a cv run adds its split, OOF predictions, threshold
selection and ``cv_metrics.json``; a final run adds its test predictions, ``test_metrics.json`` and
``model_card.json``, and names its cv run in ``run_args.json`` (whose split and CV metrics it shares).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

if TYPE_CHECKING:
    from trainer.config import TrainConfig

Kind = Literal["cv", "final"]

#: Files without which a run of that kind is not complete (the default of ``load_run(require=...)``).
REQUIRED: dict[str, tuple[str, ...]] = {
    "cv": ("run_args.json", "effective_config.json", "store.json", "split.csv", "cv_oof_predictions.csv",
           "threshold_selection.json", "cv_metrics.json"),
    "final": ("run_args.json", "effective_config.json", "store.json", "test_predictions.csv", "test_metrics.json",
              "model_card.json"),
}

_NAME = re.compile(r"^run_(\d{8}_\d{6})_(cv|final)(?:_\d+)?$")
_ID_DTYPES = {"ID": str, "group": str}


class RunError(RuntimeError):
    """A run folder is missing files, is not a run folder, or does not match the store."""


@dataclass(frozen=True)
class Run:
    """A cv or final run folder, read back.

    Attributes:
        path: the run folder.
        kind: ``"cv"`` or ``"final"``.
        created: from the folder name ``run_YYYYMMDD_HHMMSS_<kind>`` (else the folder's mtime).
        config: ``effective_config.json``.
        run_args: ``run_args.json`` (the command line).
        store: ``store.json`` (path, fingerprint, environment).
        metrics: ``cv_metrics.json`` (cv) or ``test_metrics.json`` (final).
        threshold: the decision threshold (a final run's model card; else the cv run's selection).
        selection: ``threshold_selection.json`` of the run (cv) or of its cv run (final).
        split: ``split.csv`` of the run (cv) or of its cv run (final); None when absent.
        oof: ``cv_oof_predictions.csv`` (cv; a final run's cv run's); None when absent.
        test: ``test_predictions.csv`` (final); None for a cv run.
        cv_metrics: ``cv_metrics.json`` of the run (cv) or of its cv run (final); None when absent.
        model_card: ``model_card.json`` (final); None for a cv run.
        cv_run: a final run's cv run folder (None for a cv run, or when it cannot be found).
    """

    path: Path
    kind: Kind
    created: datetime
    config: dict[str, Any]
    run_args: dict[str, Any]
    store: dict[str, Any]
    metrics: dict[str, Any] | None
    threshold: float | None
    selection: dict[str, Any] | None
    split: pd.DataFrame | None
    oof: pd.DataFrame | None
    test: pd.DataFrame | None
    cv_metrics: dict[str, Any] | None
    model_card: dict[str, Any] | None
    cv_run: Path | None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def train_config(self) -> TrainConfig:
        """``effective_config.json`` as a validated :class:`~trainer.config.TrainConfig`."""
        from trainer.config import TrainConfig

        return TrainConfig.from_dict(self.config)

    @property
    def flat_config(self) -> dict[str, Any]:
        """The config with nested keys joined by dots (``aug.degrees``, ``preprocess.size``)."""
        return flatten(self.config)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> ``{"aug.degrees": 10.0, ...}``; lists stay lists."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, prefix=f"{name}."))
        else:
            out[name] = v
    return out


def run_kind(path: str | Path) -> Kind:
    """``cv`` or ``final`` from the folder name, else from the files in it.

    Raises:
        RunError: neither (not a run folder).
    """
    p = Path(path)
    m = _NAME.match(p.name)
    if m:
        return m.group(2)  # type: ignore[return-value]
    if (p / "model_card.json").is_file() or (p / "test_metrics.json").is_file():
        return "final"
    if (p / "cv_metrics.json").is_file() or (p / "split.csv").is_file():
        return "cv"
    raise RunError(f"{p} is not a run folder (no run_YYYYMMDD_HHMMSS_<cv|final> name, no cv or final result files)")


def find_cv_run(final_dir: Path, run_args: dict[str, Any]) -> Path | None:
    """A final run's cv run: ``run_args.json["cv_run"]`` as given, else a sibling folder of that name."""
    c = run_args.get("cv_run")
    if not c:
        return None
    for cand in (Path(c), final_dir.parent / Path(c).name):
        if cand.is_dir():
            return cand
    return None


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError as e:
        raise RunError(f"{path} is not valid JSON ({e}): a half-written run?") from None


def _csv(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path, dtype=_ID_DTYPES) if path.is_file() else None


def _created(path: Path) -> datetime:
    m = _NAME.match(path.name)
    if m:
        return datetime.strptime(m.group(1), "%Y%m%d_%H%M%S")
    return datetime.fromtimestamp(path.stat().st_mtime)


def load_run(path: str | Path, *, require: Sequence[str] | None = None) -> Run:
    """Read a cv or final run folder.

    Args:
        path: the run folder (``outputs/run_YYYYMMDD_HHMMSS_cv`` or ``..._final``).
        require: files that must exist (default: :data:`REQUIRED` of the run's kind); ``()`` reads
            whatever is there and leaves the rest None (``report.html`` of a partial run).

    Raises:
        RunError: not a folder or not a run folder; a required file is missing (named); invalid JSON.
    """
    p = Path(path)
    if not p.is_dir():
        raise RunError(f"run folder {p} does not exist")
    kind = run_kind(p)
    need = REQUIRED[kind] if require is None else tuple(require)
    missing = [f for f in need if not (p / f).is_file()]
    if missing:
        raise RunError(f"{p} is not a complete {kind} run (missing {', '.join(missing)}); "
                       f"run `python -m trainer {kind}` {'first' if kind == 'cv' else 'again'}")
    run_args = _json(p / "run_args.json") or {}
    cv_dir = p if kind == "cv" else find_cv_run(p, run_args)
    card = _json(p / "model_card.json") if kind == "final" else None
    selection = _json(cv_dir / "threshold_selection.json") if cv_dir else None
    threshold = (card or {}).get("threshold", (selection or {}).get("threshold"))
    cv_metrics = _json(cv_dir / "cv_metrics.json") if cv_dir else None
    return Run(
        path=p, kind=kind, created=_created(p),
        config=_json(p / "effective_config.json") or {},
        run_args=run_args,
        store=_json(p / "store.json") or {},
        metrics=cv_metrics if kind == "cv" else _json(p / "test_metrics.json"),
        threshold=None if threshold is None else float(threshold),
        selection=selection,
        split=_csv(cv_dir / "split.csv") if cv_dir else None,
        oof=_csv(cv_dir / "cv_oof_predictions.csv") if cv_dir else None,
        test=_csv(p / "test_predictions.csv") if kind == "final" else None,
        cv_metrics=cv_metrics,
        model_card=card,
        cv_run=None if kind == "cv" else cv_dir,
    )
