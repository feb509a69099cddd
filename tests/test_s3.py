"""Stores on object storage, for real: a local S3-compatible server (moto's server mode on 127.0.0.1)
and a Dask cluster started with the `dask scheduler` / `dask worker` commands of docs/cluster.md ("Running on a cluster").

Credentials reach every process the usual way only (AWS_* environment variables); the tests check
that the secret never lands in the store, a run folder, or any output or log.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from _tiny_runs import TINY_PREP, TINY_VAL_FOLD
from conftest import HASH_KEY, SMALL_PREP

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

BUCKET = "neurocache-test"
SECRET = "moto-secret-9f3e6c1d7a"  # the AWS secret key: must never show up anywhere
KEY_ID = "AKIATESTNEUROCACHE01"
KEY_COLUMNS = ["patient_key", "study_key", "series_key"]
TINY = TINY_VAL_FOLD  # the 8-patient store is too small for inner holdouts (tests/test_trainer_e2e.py covers them)


def _clear_fsspec_cache() -> None:
    import fsspec

    fsspec.AbstractFileSystem.clear_instance_cache()
    try:
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
    except ImportError:
        pass


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on 127.0.0.1 (a free port), the AWS_* environment pointing at it, one bucket."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ACCESS_KEY_ID": KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    with pytest.MonkeyPatch.context() as mp:
        for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
            mp.delenv(k, raising=False)
        mp.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")  # no profile of this machine interferes
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
        for k, v in env.items():
            mp.setenv(k, v)
        _clear_fsspec_cache()
        import boto3

        boto3.client("s3").create_bucket(Bucket=BUCKET)
        try:
            yield {"endpoint": env["AWS_ENDPOINT_URL"], "bucket": BUCKET}
        finally:
            _clear_fsspec_cache()
            server.stop()


def _dask_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "dask"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "dask"]


@pytest.fixture(scope="module")
def dask_cluster(s3, tmp_path_factory):
    """`dask scheduler` + `dask worker --nworkers 2 --nthreads 1 --resources "GPU=1"` on 127.0.0.1,
    started as commands (as in docs/cluster.md, "Running on a cluster") with the AWS_* environment, stopped afterwards."""
    from dask.distributed import Client

    d = tmp_path_factory.mktemp("dask")
    sched_file = d / "scheduler.json"
    logs = {"scheduler": d / "scheduler.log", "worker": d / "worker.log"}
    procs: list[subprocess.Popen] = []

    def start(cmd: list[str], log: Path) -> None:
        f = log.open("wb")
        procs.append(subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=dict(os.environ), cwd=str(d),
                                      start_new_session=True))
        f.close()

    try:
        start(_dask_cmd() + ["scheduler", "--host", "127.0.0.1", "--port", "0", "--scheduler-file", str(sched_file),
                             "--no-dashboard", "--dashboard-address", "127.0.0.1:0"], logs["scheduler"])
        deadline = time.time() + 60
        while not sched_file.is_file() and time.time() < deadline:
            if procs[0].poll() is not None:
                raise RuntimeError(f"dask scheduler exited: {logs['scheduler'].read_text()[-2000:]}")
            time.sleep(0.2)
        address = json.loads(sched_file.read_text())["address"]
        start(_dask_cmd() + ["worker", address, "--host", "127.0.0.1", "--nworkers", "2", "--nthreads", "1",
                             "--resources", "GPU=1", "--no-dashboard", "--dashboard-address", "127.0.0.1:0"], logs["worker"])
        with Client(address, timeout=60) as c:
            c.wait_for_workers(2, timeout=120)
        yield {"address": address, "scheduler_file": sched_file, "logs": logs}
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)  # the group this fixture created for the command
        for p in reversed(procs):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)


def _objects(prefix: str) -> dict[str, bytes]:
    """Every object under ``s3://prefix`` -> its bytes, keyed by the path relative to ``prefix``."""
    import fsspec

    fs = fsspec.filesystem("s3", use_listings_cache=False)
    return {k[len(prefix) + 1:]: fs.cat_file(k) for k in fs.find(prefix)}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _assert_no_secret(blobs: dict[str, bytes], where: str) -> None:
    bad = [k for k, v in blobs.items() if SECRET.encode() in v or KEY_ID.encode() in v]
    assert not bad, f"credentials found in {where}: {bad}"


def test_build_to_s3_equals_local_and_info(synth_data, synth_store, s3, capsys):
    """build_store(..., "s3://…", workers=1) == the local build byte for byte; a rerun is a no-op; `neurocache info`."""
    from neurocache.build import build_store
    from neurocache.cli import main as nc_main
    from neurocache.store import open_store

    url = f"s3://{BUCKET}/inproc.zarr"
    res = build_store(synth_data, url, cfg=SMALL_PREP, workers=1, progress=False, hash_key=HASH_KEY)
    assert res.attrs["complete"] is True and str(res.store) == url
    objs = _objects(f"{BUCKET}/inproc.zarr")
    local = _files(synth_store)
    assert {k: v for k, v in objs.items() if k.startswith("images/")} == {k: v for k, v in local.items() if k.startswith("images/")}
    assert objs["quality.json"] == local["quality.json"]
    assert not [k for k in objs if k.startswith(("_staging", "_progress"))]
    pd.testing.assert_frame_equal(open_store(url).features, open_store(synth_store).features)
    assert (open_store(url).images[:] == open_store(synth_store).images[:]).all()

    again = build_store(synth_data, url, cfg=SMALL_PREP, workers=1, progress=False)
    assert again.skipped

    capsys.readouterr()
    assert nc_main(["info", url, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["complete"] is True and info["n_ok"] == res.attrs["counts"]["n_ok"] and info["store"] == url
    assert info["bytes_on_disk"] == sum(len(v) for v in objs.values()) and info["images_bytes"] > 0
    _assert_no_secret(objs, "the store")


def test_cluster_build_and_train_from_s3(synth_data, synth_store, s3, dask_cluster, tmp_path, capfd):
    """docs/cluster.md ("Running on a cluster"), run as written: a distributed build into s3://, `neurocache info`, a fold-parallel
    `trainer cv` (== the sequential one on the same store) and `trainer final`, all reading s3://."""
    from neurocache.cli import main as nc_main
    from neurocache.store import open_store
    from trainer.cli import main as trainer_main

    url = f"s3://{BUCKET}/store.zarr"
    prep = tmp_path / "prep.yaml"
    prep.write_text(yaml.safe_dump({"preprocess": TINY_PREP}))
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "outputs"

    # neurocache build --data-root DATA --store s3://bucket/store.zarr --scheduler tcp://HOST:8786
    assert nc_main(["build", "--data-root", str(synth_data), "--store", url, "--config", str(prep),
                    "--scheduler", dask_cluster["address"], "--no-progress"]) == 0
    s, ref = open_store(url), open_store(synth_store)
    assert s.attrs["build"]["scheduler"] == dask_cluster["address"]
    assert (s.images[:] == ref.images[:]).all()
    objs = _objects(f"{BUCKET}/store.zarr")
    assert {k: v for k, v in objs.items() if k.startswith("images/")} == \
        {k: v for k, v in _files(synth_store).items() if k.startswith("images/")}
    pd.testing.assert_frame_equal(s.features.drop(columns=KEY_COLUMNS), ref.features.drop(columns=KEY_COLUMNS))
    assert nc_main(["info", url]) == 0

    # python -m trainer cv --store s3://… --scheduler scheduler.json  (each fold a GPU=1 task on a worker)
    assert trainer_main(["cv", "--store", url, "--config", str(tiny), "--out", str(out / "par"), "--quiet",
                         "--scheduler", str(dask_cluster["scheduler_file"])]) == 0
    par = sorted((out / "par").glob("run_*_cv*"))[-1]
    assert "fold task 2/2 done" in capfd.readouterr().err
    # ... and in turn, in this process, from the same store
    assert trainer_main(["cv", "--store", url, "--config", str(tiny), "--out", str(out / "seq"), "--quiet"]) == 0
    seq = sorted((out / "seq").glob("run_*_cv*"))[-1]
    for name in ("split.csv", "cv_oof_predictions.csv", "cv_thresholds_summary.csv", "threshold_selection.json"):
        assert (par / name).read_bytes() == (seq / name).read_bytes(), name
    assert json.loads((par / "store.json").read_text())["path"] == url
    assert "could not be opened" not in (par / "report.html").read_text()  # the report reads the store from s3:// too

    # python -m trainer final --cv-run RUN --store s3://…
    assert trainer_main(["final", "--cv-run", str(par), "--store", url, "--out", str(out / "par"), "--quiet"]) == 0
    final = sorted((out / "par").glob("run_*_final*"))[-1]
    assert (final / "test_metrics.json").is_file() and (final / "final_model.pt").is_file()
    assert json.loads((final / "store.json").read_text())["path"] == url

    captured = capfd.readouterr()
    _assert_no_secret(_objects(f"{BUCKET}/store.zarr"), "the store")
    _assert_no_secret(_files(out), "the run folders")
    _assert_no_secret({"stdout": captured.out.encode(), "stderr": captured.err.encode()}, "the commands' output")
    _assert_no_secret({k: p.read_bytes() for k, p in dask_cluster["logs"].items()}, "the scheduler/worker logs")


def test_credentials_in_url_refused(s3, tmp_path, capsys):
    """A URL with credentials in it is refused without echoing them; a missing store is named clearly."""
    from neurocache.cli import main as nc_main
    from trainer.cli import main as trainer_main

    bad = f"s3://{KEY_ID}:{SECRET}@{BUCKET}/x.zarr"
    assert nc_main(["info", bad]) == 2
    assert trainer_main(["cv", "--store", bad, "--out", str(tmp_path), "--quiet"]) == 2
    captured = capsys.readouterr()
    assert "credentials in a store URL are refused" in captured.err
    assert SECRET not in captured.out + captured.err
    assert not any(SECRET.encode() in p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())

    assert nc_main(["info", f"s3://{BUCKET}/nothing.zarr"]) == 2
    assert f"no neurocache store at s3://{BUCKET}/nothing.zarr" in capsys.readouterr().err


def test_s3_build_killed_then_resumed(synth_data, s3, tmp_path):
    """A `neurocache build --store s3://…` process SIGKILLed after two committed batches resumes on
    rerun from its commit records in the bucket, and equals an uninterrupted build."""
    from neurocache.build import build_store
    from neurocache.store import StoreError, open_store, read_attrs

    url = f"s3://{BUCKET}/resume.zarr"
    cfg = tmp_path / "prep.yaml"
    cfg.write_text(yaml.safe_dump({"preprocess": TINY_PREP}))
    from faults import cli_command

    args = ("build", "--data-root", str(synth_data), "--store", url, "--config", str(cfg), "--workers", "1", "--no-progress")
    env = dict(os.environ)
    r = subprocess.run(cli_command(*args, kill="batch:2"), capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    with pytest.raises(StoreError, match="not complete"):
        open_store(url)
    r = subprocess.run(cli_command(*args), capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    attrs = read_attrs(url)
    assert attrs["complete"] is True and attrs["build"]["resumed_batches"] == 2
    ref = tmp_path / "ref.zarr"
    build_store(synth_data, ref, cfg=SMALL_PREP, workers=1, progress=False, hash_key=bytes.fromhex(attrs["hash_key"]))
    pd.testing.assert_frame_equal(open_store(url).features, open_store(ref).features)
    objs = _objects(f"{BUCKET}/resume.zarr")
    assert {k: v for k, v in objs.items() if k.startswith("images/")} == {k: v for k, v in _files(ref).items() if k.startswith("images/")}
    assert not [k for k in objs if k.startswith(("_staging", "_progress"))]
