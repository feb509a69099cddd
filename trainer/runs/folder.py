"""Reading a run folder back: :func:`load_run` -> :class:`Run` (what ``trainer.load_run`` is).

One reader for every consumer: ``trainer final`` (the cv run it continues), ``report.html``,
``trainer runs``, MLflow tracking and notebooks. A cv run and a final run share ``run_args.json``,
``effective_config.json`` and ``store.json``; a cv run adds its split, OOF predictions, threshold
selection and ``cv_metrics.json``; a final run adds its test predictions, ``test_metrics.json`` and
``model_card.json``, and names its cv run in ``run_args.json`` (whose split and CV metrics it shares).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from neurocache.errors import UserError
from trainer.runs import files as F
from trainer.runs.files import REQUIRED, RUN_NAME, STAMP_FORMAT

if TYPE_CHECKING:
    from trainer.config import TrainConfig

__all__ = ["REQUIRED", "Run", "RunError", "RunNotFoundError", "find_cv_run", "flatten", "load_run", "read_json", "run_kind"]

Kind = Literal["cv", "final"]

_ID_DTYPES = {"ID": str, "group": str}


class RunError(UserError, RuntimeError):
    """A run folder is missing files, is not a run folder, or does not match the store (a user error:
    the command line prints its message in one line)."""


class RunNotFoundError(RunError, FileNotFoundError):
    """A run folder, or the outputs folder that holds them, does not exist."""


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
    m = RUN_NAME.match(p.name)
    if m:
        return m.group(2)  # type: ignore[return-value]
    if (p / F.MODEL_CARD).is_file() or (p / F.TEST_METRICS).is_file():
        return "final"
    if (p / F.CV_METRICS).is_file() or (p / F.SPLIT).is_file():
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


def read_json(path: str | Path) -> Any:
    """The JSON value in ``path`` (a file that must exist)."""
    return json.loads(Path(path).read_text())


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError as e:
        raise RunError(f"{path} is not valid JSON ({e}): a half-written run?") from None


def _csv(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path, dtype=_ID_DTYPES) if path.is_file() else None


def _created(path: Path) -> datetime:
    m = RUN_NAME.match(path.name)
    if m:
        return datetime.strptime(m.group(1), STAMP_FORMAT)
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
        raise RunNotFoundError(f"run folder {p} does not exist")
    kind = run_kind(p)
    need = REQUIRED[kind] if require is None else tuple(require)
    missing = [f for f in need if not (p / f).is_file()]
    if missing:
        raise RunError(f"{p} is not a complete {kind} run (missing {', '.join(missing)}); "
                       f"run `python -m trainer {kind}` {'first' if kind == 'cv' else 'again'}")
    run_args = _json(p / F.RUN_ARGS) or {}
    cv_dir = p if kind == "cv" else find_cv_run(p, run_args)
    card = _json(p / F.MODEL_CARD) if kind == "final" else None
    selection = _json(cv_dir / F.THRESHOLD_SELECTION) if cv_dir else None
    threshold = (card or {}).get("threshold", (selection or {}).get("threshold"))
    cv_metrics = _json(cv_dir / F.CV_METRICS) if cv_dir else None
    return Run(
        path=p, kind=kind, created=_created(p),
        config=_json(p / F.EFFECTIVE_CONFIG) or {},
        run_args=run_args,
        store=_json(p / F.STORE) or {},
        metrics=cv_metrics if kind == "cv" else _json(p / F.TEST_METRICS),
        threshold=None if threshold is None else float(threshold),
        selection=selection,
        split=_csv(cv_dir / F.SPLIT) if cv_dir else None,
        oof=_csv(cv_dir / F.CV_OOF_PREDICTIONS) if cv_dir else None,
        test=_csv(p / F.TEST_PREDICTIONS) if kind == "final" else None,
        cv_metrics=cv_metrics,
        model_card=card,
        cv_run=None if kind == "cv" else cv_dir,
    )
