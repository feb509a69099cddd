"""The fast build path: shard files made without Zarr are Zarr's byte for byte; compaction by copying
encoded slices (linked whole shards, assembled shards) gives the store a re-encoding build gives;
a resume across a codec change re-encodes; histogram moments; batch sizes; an fsspec URL store."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

from neurocache.build import BuildHooks, build_store
from neurocache.build.plan import batch_size as _batch_size
from neurocache.build.tasks import suspects as _suspects
from neurocache.config import PrepConfig
from neurocache.features import histogram_moments
from neurocache.hu import stored_histogram
from neurocache.remote import StoreLocation
from neurocache.shards import ShardLayout
from neurocache.store import create_image_array, open_store

from conftest import HASH_KEY, SMALL_PREP
from faults import cli_command


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("shard, n", [(16, 16), (16, 40), (12, 30), (5, 5), (1, 3)])
def test_shard_encode_equals_zarr(tmp_path, shard, n):
    cfg = PrepConfig(size=32, shard_size=shard)
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    arr = create_image_array(group, "a", n, cfg)
    rng = np.random.default_rng(shard * 100 + n)
    data = np.full((n, 32, 32), cfg.pad_hu, dtype=np.int16)
    data[:, 4:28, 6:26] = rng.integers(-200, 1500, size=(n, 24, 20))
    data[min(1, n - 1)] = cfg.pad_hu  # a quarantined slot: all fill value, not stored by Zarr
    arr[:] = data
    layout = ShardLayout.of((tmp_path / "s.zarr" / "a" / "zarr.json").read_bytes())
    assert layout is not None and layout.shard == shard
    for j, start in enumerate(range(0, n, shard)):
        path = tmp_path / "s.zarr" / "a" / layout.key(j)
        mine = layout.encode(data[start : start + shard])
        if path.exists():
            assert mine == path.read_bytes()
        else:
            assert mine is None
    assert layout.encode(np.full((min(2, shard), 32, 32), cfg.pad_hu, dtype=np.int16)) is None


def test_shard_layout_refuses_other_layouts(tmp_path):
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    create_image_array(group, "a", 4, SMALL_PREP)
    meta = json.loads((tmp_path / "s.zarr" / "a" / "zarr.json").read_text())
    assert ShardLayout.of(meta) is not None
    for change in (
        lambda m: m["codecs"][0]["configuration"].__setitem__("index_location", "start"),
        lambda m: m.__setitem__("data_type", "float32"),
        lambda m: m["codecs"][0]["configuration"]["codecs"].append({"name": "crc32c"}),
        lambda m: m["chunk_key_encoding"].__setitem__("name", "v2"),
        lambda m: m.__setitem__("codecs", m["codecs"][0]["configuration"]["codecs"]),
    ):
        other = json.loads(json.dumps(meta))
        change(other)
        assert ShardLayout.of(other) is None
    plain = group.create_array("p", shape=(4, 8, 8), dtype="int16", chunks=(1, 8, 8))
    assert ShardLayout.of((tmp_path / "s.zarr" / "p" / "zarr.json").read_bytes()) is None
    assert plain.shape == (4, 8, 8)


@pytest.fixture
def data_with_gap(data_copy) -> Path:
    """The synthetic data plus a non-DICOM file (with a label) sorting between the 20th and 21st file:
    the ok rows before it map onto staging rows one to one, those after it are shifted by one."""
    files = sorted((data_copy / "CTs").glob("*.dcm"))
    junk = files[19].stem + "a"
    (data_copy / "CTs" / f"{junk}.dcm").write_bytes(b"not a DICOM file")
    labels = pd.read_csv(data_copy / "labels1.csv")
    pd.concat([labels, pd.DataFrame({"ID": [junk], "Label": [0]})]).to_csv(data_copy / "labels1.csv", index=False)
    return data_copy


@pytest.mark.parametrize("shard", [8, 16])
def test_compaction_by_copy_equals_reencoding(data_with_gap, tmp_path, monkeypatch, shard):
    """Linked and assembled `images` shards are the files a build through Zarr writes."""
    cfg = PrepConfig(size=64, shard_size=shard)
    copied: list[str] = []
    real_copy = StoreLocation.copy
    with monkeypatch.context() as m:
        m.setattr(StoreLocation, "copy", lambda self, src, dst: (copied.append(dst), real_copy(self, src, dst)))
        fast = build_store(data_with_gap, tmp_path / "fast.zarr", cfg=cfg, workers=1, progress=False, hash_key=HASH_KEY)
    assert fast.attrs["counts"]["n_quarantined"] == 1 and fast.attrs["build"]["batch_files"] == 8
    # shards of 8: the two before the gap are staging shards as they are; shards of 16 are assembled
    assert copied == (["images/c/0/0/0", "images/c/1/0/0"] if shard == 8 else [])
    with monkeypatch.context() as m:  # no known layout: staging and images go through Zarr
        m.setattr(ShardLayout, "of", classmethod(lambda cls, doc: None))
        build_store(data_with_gap, tmp_path / "zarr.zarr", cfg=cfg, workers=1, progress=False, hash_key=HASH_KEY)
    assert _files(tmp_path / "fast.zarr" / "images") == _files(tmp_path / "zarr.zarr" / "images")
    a, b = open_store(tmp_path / "fast.zarr"), open_store(tmp_path / "zarr.zarr")
    pd.testing.assert_frame_equal(a.features, b.features)
    assert a.images.shape[0] == 48 and (a.images[:] == b.images[:]).all()


def test_resume_across_a_codec_change_reencodes(synth_data, tmp_path):
    """A build killed with one codec and resumed with another (layout only, same fingerprint): the
    finished staging shards keep their codec, `images` gets the new one, the values are the same."""
    old_cfg, new_cfg = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old_cfg.write_text("preprocess:\n  size: 64\n  shard_size: 16\n  compression_level: 5\n  shuffle: bitshuffle\n")
    new_cfg.write_text("preprocess:\n  size: 64\n  shard_size: 16\n")
    store = tmp_path / "r.zarr"

    def cli(cfg: Path, kill: str | None = None) -> subprocess.CompletedProcess:
        cmd = cli_command("build", "--data-root", str(synth_data), "--store", str(store),
                          "--config", str(cfg), "--workers", "1", "--no-progress", kill=kill)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300)

    assert cli(old_cfg, kill="batch:3").returncode < 0
    staging = json.loads((store / "_staging" / "zarr.json").read_text())
    assert "bitshuffle" in json.dumps(staging)
    r = cli(new_cfg)
    assert r.returncode == 0, r.stderr[-2000:]
    s = open_store(store)
    assert s.attrs["build"]["resumed_batches"] == 3
    codec = json.loads((store / "images" / "zarr.json").read_text())["codecs"][0]["configuration"]["codecs"][1]
    assert codec["configuration"]["clevel"] == 1 and codec["configuration"]["shuffle"] == "shuffle"
    ref = build_store(synth_data, tmp_path / "ref.zarr", cfg=SMALL_PREP, workers=1, progress=False,
                      hash_key=bytes.fromhex(s.attrs["hash_key"]))
    assert ref.attrs["complete"]
    np.testing.assert_array_equal(s.images[:], open_store(tmp_path / "ref.zarr").images[:])
    pd.testing.assert_frame_equal(s.features, open_store(tmp_path / "ref.zarr").features)


def test_url_store_equals_local(synth_data, synth_store):
    """An fsspec URL store (memory://): staging shards written, whole shards copied, assembled ones put."""
    ref = open_store(synth_store)
    for i, cfg in enumerate((SMALL_PREP, PrepConfig(size=64, shard_size=8))):  # assembled, then copied shards
        url = f"memory://nc-fast-build-{i}/s.zarr"
        try:
            res = build_store(synth_data, url, cfg=cfg, workers=1, progress=False, hash_key=HASH_KEY)
            s = open_store(url)
            np.testing.assert_array_equal(s.images[:], ref.images[:])
            pd.testing.assert_frame_equal(s.features, ref.features)
            assert res.attrs["layout"]["shard_size"] == cfg.shard_size and res.attrs["build"]["batch_files"] == 8
            assert not StoreLocation(url).exists("_staging") and not StoreLocation(url).exists("_progress")
        finally:
            StoreLocation(f"memory://nc-fast-build-{i}").rm()


def test_histogram_moments_match_numpy():
    rng = np.random.default_rng(3)
    arrays = [
        rng.integers(0, 4096, size=(64, 64)).astype(np.uint16),
        rng.integers(-2000, 3000, size=(128, 96)).astype(np.int16),
        rng.integers(-(2**20), 2**20, size=(50, 50)).astype(np.int32),
        np.full((16, 16), 7, dtype=np.uint16),
        np.array([[0, 65535]], dtype=np.uint16),
    ]
    for a in arrays:
        offset, cum = stored_histogram(a)
        mean, std = histogram_moments(offset, cum)
        assert mean == float(a.mean(dtype=np.float64))  # the same correctly rounded sum / n
        assert std == pytest.approx(float(a.std(dtype=np.float64)), rel=1e-13, abs=0.0)
    assert histogram_moments(*stored_histogram(arrays[3]))[1] == 0.0


def test_batch_size_divides_the_shard():
    assert _batch_size(48, 1, 16) == 8  # 6 tasks (tests/test_resume.py's kill points)
    assert _batch_size(960, 1, 256) == 64 and _batch_size(960, 2, 256) == 32
    assert _batch_size(100_000, 16, 256) == 256  # large inputs: whole shards, linked at compaction
    assert _batch_size(10, 4, 4) == 4 and _batch_size(5, 1, 1) == 1 and _batch_size(3, 2, 17) == 17
    for n in (1, 7, 48, 1000, 12345):
        for w in (1, 2, 3, 16):
            for shard in (1, 3, 8, 16, 100, 256):
                b = _batch_size(n, w, shard)
                assert shard % b == 0 and b >= min(8, shard)


def test_journal_names_the_first_line(tmp_path):
    loc = StoreLocation(tmp_path)
    (tmp_path / "_progress").mkdir()
    (tmp_path / "_progress" / "inflight_000003.txt").write_text("ID_b.dcm\nID_longer_name.dcm")
    assert _suspects(loc, 3) == ["ID_b.dcm"] and _suspects(loc, 4) == []
    shutil.rmtree(tmp_path / "_progress")


class _KeepStaging(BuildHooks):
    """Copies ``_staging`` aside when the build marks the store complete (just before it is removed)."""

    def __init__(self, store: Path, keep: Path) -> None:
        self.store, self.keep = store, keep

    def reached(self, point: str) -> None:
        if point == "complete":
            shutil.copytree(self.store / "_staging", self.keep)


@pytest.mark.parametrize("shard", [8, 16])
def test_every_shard_written_without_zarr_reads_back_through_zarr(data_with_gap, tmp_path, monkeypatch, shard):
    """The fast path's guard: every shard file it wrote (``_staging`` by :func:`write_staging`, ``images``
    by compaction) read back through Zarr holds the values of the store Zarr's API wrote."""
    cfg = PrepConfig(size=64, shard_size=shard)
    arrays = {}
    for name in ("fast", "zarr"):
        store = tmp_path / f"{name}.zarr"
        with monkeypatch.context() as m:
            if name == "zarr":
                m.setattr(ShardLayout, "of", classmethod(lambda cls, doc: None))
            build_store(data_with_gap, store, cfg=cfg, workers=1, progress=False, hash_key=HASH_KEY,
                        hooks=_KeepStaging(store, tmp_path / f"{name}_staging"))
        arrays[name] = {"_staging": zarr.open_array(str(tmp_path / f"{name}_staging"), mode="r"),
                        "images": zarr.open_array(str(store / "images"), mode="r")}
    for member in ("_staging", "images"):
        fast, ref = arrays["fast"][member], arrays["zarr"][member]
        assert fast.shape == ref.shape and fast.shards == ref.shards
        rows = fast.shards[0]
        for s in range(-(-fast.shape[0] // rows)):  # every shard, through Zarr's own reader
            np.testing.assert_array_equal(fast[s * rows : (s + 1) * rows], ref[s * rows : (s + 1) * rows])
        shard_files = [{str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != "zarr.json"}
                       for root in (Path(fast.store.root), Path(ref.store.root))]
        assert shard_files[0] == shard_files[1] and shard_files[0]
