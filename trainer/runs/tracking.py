"""Optional experiment tracking: each cv/final run logged to MLflow (config key ``tracking: mlflow``).

What is logged, read back from the finished run folder (:func:`trainer.load_run`):
- params: the effective config, flattened (``aug.degrees``, ``preprocess.size``, ...); a string
  stays as it is, anything else is its JSON text (``0.3``, ``true``, ``[[40.0, 80.0]]``, ``null``);
- metrics: the numeric top-level values of ``cv_metrics.json`` (cv) or ``test_metrics.json`` (final);
- tags: ``neurocache.kind``, ``neurocache.run_folder``, ``neurocache.store_fingerprint``, and for a
  final run ``neurocache.cv_run``; the MLflow run is named like the run folder;
- artifacts: every file of the run folder.

``tracking_uri: ""`` (the default) is a local SQLite file, ``OUT/mlruns/mlflow.db``, with artifacts in
``OUT/mlruns/artifacts`` (``OUT`` = the run's ``--out`` folder): no server. (MLflow 3's plain ``./mlruns``
file store is in maintenance mode and refuses to start unless ``MLFLOW_ALLOW_FILE_STORE=true`` is set;
give ``tracking_uri: file:///...`` with that variable set to use it anyway, or a server's ``http://...``.)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from neurocache.config import ConfigError
from trainer.config import TrainConfig
from trainer.runs.files import MLRUNS
from trainer.runs.folder import Run, load_run

EXPERIMENT = "neurocache"
_BATCH = 100  # MLflow's log_batch limit for params


class TrackingError(ConfigError):
    """``tracking: mlflow`` is set but MLflow (or the local store's SQLAlchemy/Alembic) is not installed."""


def check_tracking(cfg: TrainConfig) -> None:
    """Fail at start-up, before any training, when the config asks for tracking that cannot work.

    Raises:
        TrackingError: ``tracking: mlflow`` without the ``tracking`` extra installed.
    """
    if cfg.tracking != "mlflow":
        return
    needed = ["mlflow"] + ([] if cfg.tracking_uri else ["sqlalchemy", "alembic"])
    for mod in needed:
        try:
            __import__(mod)
        except ImportError:
            raise TrackingError(
                f"config key tracking=mlflow needs the Python package {mod!r}, which is not installed: "
                f"pip install 'neurocache[tracking]' (mlflow-skinny, and SQLAlchemy/Alembic for the default local "
                f"store), or set tracking: none"
            ) from None


def tracking_location(cfg: TrainConfig, out: Path) -> tuple[str, str | None]:
    """(tracking URI, artifact location of a new experiment; None = the server's default)."""
    if cfg.tracking_uri:
        return str(cfg.tracking_uri), None
    root = (Path(out) / MLRUNS).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}", (root / "artifacts").as_uri()


def param_value(v: Any) -> str:
    """How a config value is logged as an MLflow param (a string as is, else its JSON)."""
    return v if isinstance(v, str) else json.dumps(v)


def run_params(run: Run) -> dict[str, str]:
    """The flattened effective config as MLflow params."""
    return {k: param_value(v) for k, v in run.flat_config.items()}


def run_metrics(run: Run) -> dict[str, float]:
    """The numeric top-level values of the run's metrics JSON (booleans and nulls left out)."""
    return {k: float(v) for k, v in (run.metrics or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def log_run(run_dir: str | Path) -> str | None:
    """Log a finished run folder to MLflow when its config says ``tracking: mlflow``.

    Returns:
        The MLflow run id, or None when the run's config does not ask for tracking.
    """
    run = load_run(run_dir)
    cfg = run.train_config
    if cfg.tracking != "mlflow":
        return None
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    uri, artifacts = tracking_location(cfg, run.path.parent)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(EXPERIMENT, artifact_location=artifacts)
    tags = {"neurocache.kind": run.kind, "neurocache.run_folder": str(run.path.resolve()),
            "neurocache.store_fingerprint": str(run.store.get("fingerprint"))}
    if run.cv_run is not None:
        tags["neurocache.cv_run"] = str(run.cv_run.resolve())
    ml = client.create_run(exp_id, run_name=run.name, tags=tags)
    rid = ml.info.run_id
    params = [Param(k, v) for k, v in run_params(run).items()]
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in run_metrics(run).items()]
    for i in range(0, max(len(params), 1), _BATCH):
        client.log_batch(rid, params=params[i : i + _BATCH], metrics=metrics if i == 0 else [],
                         tags=[RunTag("mlflow.source.name", "python -m trainer")] if i == 0 else [])
    client.log_artifacts(rid, str(run.path))
    client.set_terminated(rid)
    return rid


def track(run_dir: Path) -> str | None:
    """:func:`log_run` for the CLI: a logging failure is reported, never fails a run whose results are written."""
    try:
        rid = log_run(run_dir)
    except Exception as e:  # noqa: BLE001 - the run folder is complete; only the copy to MLflow failed
        print(f"warning: MLflow logging of {run_dir} failed ({type(e).__name__}: {e})", file=sys.stderr)
        return None
    if rid:
        print(f"mlflow: run {rid}", file=sys.stderr)
    return rid
