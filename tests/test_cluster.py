"""Scale-out on a real dask.distributed cluster on this machine (processes on 127.0.0.1).

One ``LocalCluster`` of two single-threaded worker processes, each offering ``GPU=1``, serves every
test here, so the fold tasks take exactly the code path they take on GPU workers (on CPU).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from _tiny_runs import TINY_PREP, TINY_VAL_FOLD

from trainer.cli import main as trainer_main

distributed = pytest.importorskip("distributed")

# k_folds 2, out_size 32, 1 + 1 epochs, one torch thread everywhere: the client's sequential run and
# the workers' fold tasks then compute the very same floats.
# the 8-patient store is too small for inner holdouts; the distributed path runs the same run_fold
# either way (tests/test_trainer_e2e.py covers inner_holdout)
TINY = TINY_VAL_FOLD


@pytest.fixture(scope="module")
def cluster():
    """``LocalCluster(n_workers=2, threads_per_worker=1, processes=True, resources={"GPU": 1})`` on loopback."""
    from dask.distributed import LocalCluster

    # Loopback only: the scheduler's HTTP server too (it starts one even without a dashboard).
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, resources={"GPU": 1}, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", silence_logs=40) as c:
        yield c


@pytest.fixture(scope="module")
def tiny_cfg(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("cluster_cfg") / "tiny.yaml"
    p.write_text(yaml.safe_dump(TINY))
    return p


def _cv(store: Path | str, cfg: Path, out: Path, *extra: str) -> Path:
    assert trainer_main(["cv", "--store", str(store), "--config", str(cfg), "--out", str(out), "--quiet", *extra]) == 0
    return sorted(out.glob("run_*_cv*"))[-1]


@pytest.fixture(scope="module")
def sequential_cv(synth_store, tiny_cfg, tmp_path_factory) -> Path:
    return _cv(synth_store, tiny_cfg, tmp_path_factory.mktemp("seq_out"))


def _scheduler_file(cluster, folder: Path) -> Path:
    """A scheduler file for ``cluster``, as `dask scheduler --scheduler-file` writes it (its ``address`` is what clients read)."""
    import json

    p = folder / "scheduler.json"
    p.write_text(json.dumps({"type": "Scheduler", "address": cluster.scheduler_address}))
    return p


def _same_cv(a: Path, b: Path) -> None:
    for name in ("split.csv", "cv_oof_predictions.csv", "cv_thresholds_by_fold.csv", "cv_thresholds_summary.csv",
                 "threshold_selection.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    ha, hb = pd.read_csv(a / "cv_histories.csv"), pd.read_csv(b / "cv_histories.csv")
    cols = ["fold", "stage", "epoch", "train_loss", "val_loss", "val_auprc", "val_auc"]
    pd.testing.assert_frame_equal(ha[cols], hb[cols])
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())


def test_fold_parallel_cv_equals_sequential(synth_store, tiny_cfg, sequential_cv, cluster, tmp_path, capsys):
    """`trainer cv --scheduler tcp://…` (one GPU=1 task per fold) == `trainer cv` in turn, same seed."""
    capsys.readouterr()
    run = _cv(synth_store, tiny_cfg, tmp_path / "out", "--scheduler", cluster.scheduler_address,
              "--fold-resources", "GPU=1")
    err = capsys.readouterr().err
    assert "fold task 1/2 done" in err and "fold task 2/2 done" in err  # the folds ran as Dask tasks
    _same_cv(sequential_cv, run)
    import json

    per_fold = json.loads((run / "cv_metrics.json").read_text())["per_fold"]
    assert [f["fold"] for f in per_fold] == [0, 1] and all(f["device"] == "cpu" for f in per_fold)


def test_fold_parallel_cv_scheduler_file(synth_store, tiny_cfg, sequential_cv, cluster, tmp_path):
    """The same through a scheduler file (what `dask scheduler --scheduler-file` writes)."""
    sched = _scheduler_file(cluster, tmp_path)
    run = _cv(synth_store, tiny_cfg, tmp_path / "out", "--scheduler", str(sched))
    _same_cv(sequential_cv, run)


def test_fold_parallel_grid_equals_sequential(synth_store, tiny_cfg, cluster, tmp_path):
    """--run-grid: every candidate x fold is one task; the grid table and the chosen run match the sequential one."""
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"candidates": [{"dropout": 0.3}, {"dropout": 0.5, "lr_head": 1e-2}]}))
    seq = _cv(synth_store, tiny_cfg, tmp_path / "seq", "--run-grid", "--grid", str(grid))
    par = _cv(synth_store, tiny_cfg, tmp_path / "par", "--run-grid", "--grid", str(grid), "--scheduler",
              cluster.scheduler_address)
    _same_cv(seq, par)
    assert (seq / "grid_results.csv").read_bytes() == (par / "grid_results.csv").read_bytes()
    assert (seq / "effective_config.json").read_bytes() == (par / "effective_config.json").read_bytes()


def test_fold_resources_nobody_offers(synth_store, tiny_cfg, cluster, tmp_path, capsys):
    """Asking for a resource no worker has fails at once with a message, instead of waiting forever."""
    rc = trainer_main(["cv", "--store", str(synth_store), "--config", str(tiny_cfg), "--out", str(tmp_path), "--quiet",
                       "--scheduler", cluster.scheduler_address, "--fold-resources", "TPU=1"])
    assert rc == 2
    assert "no worker of the cluster offers the fold resources" in capsys.readouterr().err
    assert not list(tmp_path.glob("run_*"))
    rc = trainer_main(["cv", "--store", str(synth_store), "--config", str(tiny_cfg), "--out", str(tmp_path), "--quiet",
                       "--scheduler", cluster.scheduler_address, "--fold-resources", "GPU"])
    assert rc == 2 and "--fold-resources" in capsys.readouterr().err


# --- distributed build ------------------------------------------------------------------------------

KEY_COLUMNS = ["patient_key", "study_key", "series_key"]


def _store_files(store: Path, member: str) -> dict[str, bytes]:
    root = store / member
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _same_store(a: Path, b: Path, *, keyed: bool = True) -> None:
    """`images` byte for byte (metadata and every shard file), the feature table row for row, quality.json."""
    from neurocache.store import open_store

    assert _store_files(a, "images") == _store_files(b, "images")
    sa, sb = open_store(a), open_store(b)
    assert (sa.images[:] == sb.images[:]).all()
    fa, fb = sa.features, sb.features
    if not keyed:  # two builds with their own random hash keys: same grouping, other key values
        for c in KEY_COLUMNS:
            assert (pd.factorize(fa[c])[0] == pd.factorize(fb[c])[0]).all(), c
        fa, fb = fa.drop(columns=KEY_COLUMNS), fb.drop(columns=KEY_COLUMNS)
    pd.testing.assert_frame_equal(fa, fb)
    if keyed:
        assert (a / "quality.json").read_bytes() == (b / "quality.json").read_bytes()
    for s in (a, b):
        assert not (s / "_staging").exists() and not (s / "_progress").exists()


def test_distributed_build_equals_local(synth_data, synth_store, cluster, tmp_path):
    """build_store(scheduler=tcp://…) == the in-process build (same hash key): images bytes, table rows."""
    from neurocache.build import build_store

    from conftest import HASH_KEY, SMALL_PREP

    res = build_store(synth_data, tmp_path / "dist.zarr", cfg=SMALL_PREP, scheduler=cluster.scheduler_address,
                      progress=False, hash_key=HASH_KEY)
    assert res.attrs["complete"] is True and res.attrs["build"]["scheduler"] == cluster.scheduler_address
    _same_store(synth_store, tmp_path / "dist.zarr")


def test_distributed_build_cli_scheduler_file(synth_data, synth_store, cluster, tmp_path, capsys):
    """`neurocache build --scheduler scheduler.json` (the CLI, a random hash key) == the local build."""
    from neurocache.cli import main as nc_main

    sched = _scheduler_file(cluster, tmp_path)
    cfg = tmp_path / "prep.yaml"
    cfg.write_text(yaml.safe_dump({"preprocess": TINY_PREP}))
    store = tmp_path / "cli.zarr"
    assert nc_main(["build", "--data-root", str(synth_data), "--store", str(store), "--config", str(cfg),
                    "--scheduler", str(sched), "--no-progress"]) == 0
    _same_store(synth_store, store, keyed=False)


def test_worker_killed_mid_build(synth_data, synth_store, cluster, tmp_path):
    """A worker process SIGKILLed while decoding: Dask reruns its task elsewhere, the build completes
    with every row and equals the local build."""

    from dask.distributed import Client

    from neurocache.build import build_store
    from neurocache.store import read_attrs

    from conftest import HASH_KEY, SMALL_PREP

    import cloudpickle

    import faults

    marker = tmp_path / "killed.pid"
    spec = f"file:3:{marker}"  # the first worker to decode its 3rd file dies (once in the whole cluster)
    cloudpickle.register_pickle_by_value(faults)  # the hooks travel with the tasks, importable or not
    with Client(cluster.scheduler_address) as c:
        before = set(c.scheduler_info(n_workers=-1)["workers"])
        try:
            res = build_store(synth_data, tmp_path / "k.zarr", cfg=SMALL_PREP, scheduler=cluster.scheduler_address,
                              progress=False, hash_key=HASH_KEY, hooks=faults.Faults(kill_once=spec))
        finally:
            cloudpickle.unregister_pickle_by_value(faults)
        assert marker.is_file(), "no worker was killed: the test hook did not fire"
        c.wait_for_workers(2, timeout=60)  # the nanny restarted the dead worker
        after = set(c.scheduler_info(n_workers=-1)["workers"])
    assert before != after  # one worker is a new process
    assert read_attrs(tmp_path / "k.zarr")["complete"] is True
    assert res.attrs["counts"]["n_files"] == len(res.features[res.features["file"] != ""])
    _same_store(synth_store, tmp_path / "k.zarr")


def test_worker_preflight_names_what_it_cannot_see(synth_store, tmp_path):
    """Before a distributed build each worker checks it sees the CT folder and the store (same path/URL)."""
    from neurocache.build.run import worker_sees as _worker_sees

    assert _worker_sees(str(tmp_path), str(synth_store)) == ""
    why = _worker_sees(str(tmp_path / "nope"), str(tmp_path / "missing.zarr"))
    assert "no CT folder" in why and "no store at" in why
