"""Resumable and incremental builds: SIGKILL at precise points of a real `neurocache build` process,
rerun, and compare with an uninterrupted build; incremental reuse by content hash; parameter changes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import zarr

from neurocache.build import build_store
from neurocache.config import PrepConfig
from neurocache.store import StoreError, open_store, read_attrs
from neurocache.synth import generate_dataset

from conftest import HASH_KEY, SMALL_PREP
from faults import cli_command

CONFIG = "preprocess:\n  size: 64\n  shard_size: 16\n"


def assert_same_store(a: Path, b: Path) -> None:
    """Two complete stores hold the same images, feature table and quality report."""
    sa, sb = open_store(a), open_store(b)
    assert sa.images.shape == sb.images.shape
    np.testing.assert_array_equal(sa.images[:], sb.images[:])
    pd.testing.assert_frame_equal(sa.features, sb.features)
    assert sa.quality == sb.quality
    assert sa.fingerprint == sb.fingerprint and sa.attrs["hash_key"] == sb.attrs["hash_key"]
    for s in (a, b):
        assert not (s / "_staging").exists() and not (s / "_progress").exists()


def _cli_build(data: Path, store: Path, cfg: Path, *extra: str, kill: str | None = None, workers: int = 1):
    cmd = cli_command("build", "--data-root", str(data), "--store", str(store),
                      "--config", str(cfg), "--workers", str(workers), "--no-progress", *extra, kill=kill)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def cfg_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("cfg") / "small.yaml"
    p.write_text(CONFIG)
    return p


# 48 files, 8 per batch with --workers 1 -> 6 batches; 3 compaction shards of 16.
KILL_POINTS = [
    "file:3",  # inside the first batch, before anything is committed
    "batch_images:2",  # batch 2's images written, its commit record not
    "batch:4",  # after 4 committed batches
    "compact_start:1",  # all batches done, the reuse source declared invalid
    "compact:2",  # half of `images` written
    "features:1",  # images + features.parquet + quality.json written, `complete` not yet
    "complete:1",  # `complete: true` written, staging not yet removed
]


@pytest.mark.parametrize("point", KILL_POINTS)
def test_sigkill_then_rerun_equals_uninterrupted(point, synth_data, cfg_file, tmp_path):
    store = tmp_path / "k.zarr"
    r = _cli_build(synth_data, store, cfg_file, kill=point)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-2000:])
    attrs = read_attrs(store)
    if point != "complete:1":
        # Killed before the end: readers refuse the store, `info` says so.
        assert attrs is None or attrs.get("complete") is not True
        with pytest.raises(StoreError):
            open_store(store)
    r2 = _cli_build(synth_data, store, cfg_file, "--json")
    assert r2.returncode == 0, r2.stderr[-2000:]
    info = json.loads(r2.stdout)
    assert info["complete"] is True and info["n_ok"] == 48
    key = bytes.fromhex(read_attrs(store)["hash_key"])
    ref = tmp_path / "ref.zarr"
    build_store(synth_data, ref, cfg=SMALL_PREP, workers=1, progress=False, hash_key=key)
    assert_same_store(store, ref)
    b = read_attrs(store)["build"]
    if point.startswith(("batch", "compact", "features")):
        assert b["resumed_batches"] > 0  # finished shards were kept, not recomputed


def test_sigkill_at_random_times_with_dask_workers(synth_data, cfg_file, tmp_path):
    """A real kill of the whole process group (client + Dask workers) at an arbitrary moment."""
    store = tmp_path / "d.zarr"
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "neurocache", "build", "--data-root", str(synth_data), "--store", str(store),
           "--config", str(cfg_file), "--workers", "2", "--no-progress"]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    # Wait until the workers have committed a first batch, then kill everything at once.
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None and not any((store / "_progress").glob("batch_*.parquet")):
        time.sleep(0.02)
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
    p.wait(timeout=60)
    assert p.returncode == -signal.SIGKILL
    n_done = len(list((store / "_progress").glob("batch_*.parquet")))
    assert 1 <= n_done < 6  # killed mid-decode
    r2 = _cli_build(synth_data, store, cfg_file, workers=1)  # resumes with the first run's batches
    assert r2.returncode == 0, r2.stderr[-2000:]
    assert read_attrs(store)["build"]["resumed_batches"] == n_done
    ref = tmp_path / "ref.zarr"
    build_store(synth_data, ref, cfg=SMALL_PREP, workers=1, progress=False,
                hash_key=bytes.fromhex(read_attrs(store)["hash_key"]))
    assert_same_store(store, ref)


def _change_pixels(path: Path) -> None:
    ds = pydicom.dcmread(path)
    a = ds.pixel_array.copy()
    a[40:60, 40:60] = a[40:60, 40:60] + 30  # a "lesion": same size, new content
    ds.PixelData = a.tobytes()
    ds.save_as(path)


def test_incremental_build_decodes_only_new_and_changed_files(data_copy, tmp_path):
    store = tmp_path / "inc.zarr"
    r1 = build_store(data_copy, store, cfg=SMALL_PREP, workers=1, progress=False, hash_key=HASH_KEY)
    n0 = r1.attrs["counts"]["n_files"]
    assert r1.attrs["build"]["decoded"] == n0 and r1.attrs["build"]["reused"] == 0

    # 3 new files (another patient set), 1 changed file, 1 removed file (+ its label), labels edited.
    extra = tmp_path / "extra"
    new = generate_dataset(extra, patients=1, slices_per_patient=3, size=128, seed=99)
    for i in new["ID"]:
        shutil.copy(extra / "CTs" / f"{i}.dcm", data_copy / "CTs" / f"{i}.dcm")
    labels = pd.read_csv(data_copy / "labels1.csv")
    files = sorted((data_copy / "CTs").glob("*.dcm"))
    changed, removed = files[5], files[9]
    _change_pixels(changed)
    removed.unlink()
    labels = labels[labels["ID"] != removed.stem]
    labels = pd.concat([labels, new[["ID", "Label"]]], ignore_index=True)
    labels.to_csv(data_copy / "labels1.csv", index=False)

    r2 = build_store(data_copy, store, cfg=SMALL_PREP, workers=1, progress=False)
    b = r2.attrs["build"]
    assert not r2.skipped and b["incremental"] is True
    assert b["decoded"] == 4 and b["reused"] == n0 - 2  # 3 new + 1 changed decoded
    fresh = tmp_path / "fresh.zarr"
    build_store(data_copy, fresh, cfg=SMALL_PREP, workers=1, progress=False, hash_key=HASH_KEY)
    assert_same_store(store, fresh)
    assert open_store(store).attrs["hash_key"] == HASH_KEY.hex()  # grouping hashes stay stable

    # Touching files (new mtime, same content) and flipping a label: nothing is decoded again.
    for p in list((data_copy / "CTs").glob("*.dcm"))[:5]:
        os.utime(p, ns=(time.time_ns(), time.time_ns()))
    labels.loc[labels.index[0], "Label"] = 1 - labels.loc[labels.index[0], "Label"]
    labels.to_csv(data_copy / "labels1.csv", index=False)
    r3 = build_store(data_copy, store, cfg=SMALL_PREP, workers=1, progress=False)
    assert r3.attrs["build"]["decoded"] == 0 and r3.attrs["build"]["reused"] == r3.attrs["counts"]["n_files"]
    fresh2 = tmp_path / "fresh2.zarr"
    build_store(data_copy, fresh2, cfg=SMALL_PREP, workers=1, progress=False, hash_key=HASH_KEY)
    assert_same_store(store, fresh2)


def test_incremental_build_with_dask_and_quarantined_rows(data_copy, tmp_path):
    """Quarantined rows are reused too; files without a label are decoded again once labelled."""
    cts = data_copy / "CTs"
    (cts / "ID_junk.dcm").write_bytes(b"not dicom at all")
    shutil.copy(sorted(cts.glob("ID_*.dcm"))[0], cts / "ID_zz_unlabelled.dcm")
    store = tmp_path / "q.zarr"
    build_store(data_copy, store, cfg=SMALL_PREP, workers=1, progress=False, hash_key=HASH_KEY)
    labels = pd.read_csv(data_copy / "labels1.csv")
    pd.concat([labels, pd.DataFrame({"ID": ["ID_zz_unlabelled"], "Label": [1]})]).to_csv(
        data_copy / "labels1.csv", index=False
    )
    r = build_store(data_copy, store, cfg=SMALL_PREP, workers=2, progress=False)
    assert r.attrs["build"]["decoded"] == 1  # only the newly labelled file; ID_junk's row is reused
    f = r.features.set_index("ID")
    assert f.loc["ID_junk", "reason"] == "not_dicom" and f.loc["ID_zz_unlabelled", "status"] == "ok"
    fresh = tmp_path / "fresh.zarr"
    build_store(data_copy, fresh, cfg=SMALL_PREP, workers=1, progress=False, hash_key=HASH_KEY)
    assert_same_store(store, fresh)


def test_kill_during_incremental_build_then_rerun(data_copy, cfg_file, tmp_path):
    store = tmp_path / "ki.zarr"
    assert _cli_build(data_copy, store, cfg_file).returncode == 0
    extra = tmp_path / "extra"
    new = generate_dataset(extra, patients=2, slices_per_patient=4, size=128, seed=5)
    for i in new["ID"]:
        shutil.copy(extra / "CTs" / f"{i}.dcm", data_copy / "CTs" / f"{i}.dcm")
    labels = pd.concat([pd.read_csv(data_copy / "labels1.csv"), new[["ID", "Label"]]], ignore_index=True)
    labels.to_csv(data_copy / "labels1.csv", index=False)
    r = _cli_build(data_copy, store, cfg_file, kill="batch:2")
    assert r.returncode == -signal.SIGKILL
    with pytest.raises(StoreError, match="not complete"):
        open_store(store)
    r = _cli_build(data_copy, store, cfg_file, "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    attrs = read_attrs(store)
    assert attrs["build"]["incremental"] is True and attrs["build"]["reused"] == 48
    assert json.loads(r.stdout)["files_reused"] == 48 and json.loads(r.stdout)["files_decoded"] == 8
    fresh = tmp_path / "fresh.zarr"
    build_store(data_copy, fresh, cfg=SMALL_PREP, workers=1, progress=False, hash_key=bytes.fromhex(attrs["hash_key"]))
    assert_same_store(store, fresh)


def test_changed_parameters_refused_unless_force_or_new_path(synth_data, synth_store, tmp_path):
    store = tmp_path / "p.zarr"
    shutil.copytree(synth_store, store)
    before = {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()}
    other = PrepConfig(size=64, shard_size=16, fix_12bit_wrap=False, min_std_hu=2.0)
    with pytest.raises(StoreError) as e:
        build_store(synth_data, store, cfg=other, workers=1, progress=False)
    msg = str(e.value)
    assert "fix_12bit_wrap: True -> False" in msg and "min_std_hu: 1.0 -> 2.0" in msg and "--force" in msg
    assert "size" not in msg.replace("min_std_hu", "")  # only the differing parameters are named
    after = {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()}
    assert before == after  # the existing store was not touched
    # A new path is fine; --force replaces.
    build_store(synth_data, tmp_path / "new.zarr", cfg=other, workers=1, progress=False)
    r = build_store(synth_data, store, cfg=other, workers=1, progress=False, force=True)
    assert r.attrs["preprocess"]["fix_12bit_wrap"] is False and open_store(store, expect=other)
    # The CLI names the parameters too and exits 2.
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG + "  assume_rescale: [1, -1024]\n")
    r = _cli_build(synth_data, store, cfg)
    assert r.returncode == 2 and "assume_rescale: None -> [1.0, -1024.0]" in r.stderr


def test_remains_of_an_interrupted_removal_are_rebuilt(synth_data, tmp_path):
    store = tmp_path / "rem.zarr"
    build_store(synth_data, store, cfg=SMALL_PREP, workers=1, progress=False)
    # `remove_store` deletes zarr.json first; simulate a kill right after that.
    (store / "zarr.json").unlink()
    shutil.rmtree(store / "images" / "c", ignore_errors=True)
    r = build_store(synth_data, store, cfg=SMALL_PREP, workers=1, progress=False)
    assert not r.skipped and open_store(store).images.shape[0] == 48
    # A folder with foreign content is never deleted.
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(StoreError, match="not a neurocache store"):
        build_store(synth_data, foreign, cfg=SMALL_PREP, workers=1, progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_reader_refuses_incomplete_store_from_strict_build(data_copy, tmp_path):
    (data_copy / "CTs" / "ID_bad.dcm").write_bytes(b"\0" * 300)
    from neurocache.build import BuildError

    with pytest.raises(BuildError):
        build_store(data_copy, tmp_path / "s.zarr", cfg=SMALL_PREP, workers=1, progress=False, strict=True)
    assert read_attrs(tmp_path / "s.zarr")["complete"] is False
    with pytest.raises(StoreError, match="not complete"):
        open_store(tmp_path / "s.zarr")
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    assert "images" not in g  # nothing half-made is exposed
