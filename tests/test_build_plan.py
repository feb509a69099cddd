"""The build's decision (neurocache.build.plan): fresh / resume / incremental / no-op, from attrs and
the manifest alone, no disk."""

from __future__ import annotations

import pytest

from neurocache import SCHEMA_VERSION, __version__
from neurocache.build import BuildPlan, StoreFacts, plan
from neurocache.store import StoreError

FP, MANIFEST, KEY, NEW_KEY = "f" * 64, "m" * 64, "ab" * 16, "cd" * 16


def attrs(**over) -> dict:
    a = {"fingerprint": FP, "hash_key": KEY, "package_version": __version__, "schema_version": SCHEMA_VERSION,
         "complete": True, "reuse_source_valid": False, "source": {"manifest": MANIFEST},
         "build": {"batch_files": 4}, "preprocess": {"size": 64}}
    a.update(over)
    return a


def decide(facts: StoreFacts, **over) -> BuildPlan:
    kw = {"store": "s.zarr", "manifest": MANIFEST, "fingerprint": FP, "params": {"size": 64}, "n_files": 48,
          "workers": 1, "shard_size": 16, "new_key_hex": NEW_KEY}
    kw.update(over)
    return plan(facts, **kw)


def test_no_store_is_a_fresh_build_with_a_new_key():
    p = decide(StoreFacts(attrs=None))
    assert p == BuildPlan("fresh", NEW_KEY, 8, reuse=False, replace=False)
    assert decide(StoreFacts(attrs=None), hash_key_hex=KEY).key_hex == KEY


def test_a_foreign_path_is_refused():
    with pytest.raises(StoreError, match="is not a neurocache store"):
        decide(StoreFacts(attrs=None, foreign=True))


def test_complete_and_same_manifest_is_a_noop():
    assert decide(StoreFacts(attrs=attrs(), reuse_files=True)).action == "noop"


def test_other_parameters_are_refused_or_replaced_with_force():
    old = attrs(fingerprint="0" * 64, preprocess={"size": 128})
    with pytest.raises(StoreError, match="size: 128 -> 64"):
        decide(StoreFacts(attrs=old, reuse_files=True))
    p = decide(StoreFacts(attrs=old, reuse_files=True, has_staging=True, has_progress=True), force=True)
    assert p.action == "fresh" and p.replace and not p.reuse and p.key_hex == NEW_KEY


@pytest.mark.parametrize("complete", [True, False])
def test_a_store_of_another_schema_is_refused_or_replaced_with_force(complete):
    """A schema-3 store (sha256 content hashes) with the same fingerprint and inputs: not up to date,
    not resumable, not a reuse source; --force rebuilds it from scratch."""
    old = StoreFacts(attrs=attrs(schema_version=3, complete=complete), has_staging=True, has_progress=True, reuse_files=True)
    with pytest.raises(StoreError, match="has schema 3; this neurocache writes schema .*BLAKE3.*--force"):
        decide(old)
    assert decide(old, force=True) == BuildPlan("fresh", KEY, 8, reuse=False, replace=True)  # the store's key kept


def test_changed_inputs_of_a_complete_store_build_incrementally():
    p = decide(StoreFacts(attrs=attrs(), reuse_files=True), manifest="n" * 64)
    assert p == BuildPlan("incremental", KEY, 8, reuse=True)
    # no reuse without the old members, when asked not to, or with another key / package version
    assert decide(StoreFacts(attrs=attrs()), manifest="n" * 64).action == "fresh"
    assert decide(StoreFacts(attrs=attrs(), reuse_files=True), manifest="n" * 64, incremental=False).action == "fresh"
    assert decide(StoreFacts(attrs=attrs(), reuse_files=True), manifest="n" * 64, hash_key_hex=NEW_KEY).action == "fresh"
    assert decide(StoreFacts(attrs=attrs(package_version="0.0.0"), reuse_files=True), manifest="n" * 64).action == "fresh"


def test_an_interrupted_build_of_the_same_inputs_resumes():
    facts = StoreFacts(attrs=attrs(complete=False), has_staging=True, has_progress=True)
    p = decide(facts, workers=4)
    assert p == BuildPlan("resume", KEY, 4, reuse=False)  # its own batch size, not a new one
    # an interrupted incremental build resumes with its reuse source while that is still valid
    both = StoreFacts(attrs=attrs(complete=False, reuse_source_valid=True), has_staging=True, has_progress=True,
                      reuse_files=True)
    assert decide(both).reuse is True
    assert decide(StoreFacts(attrs=attrs(complete=False), has_staging=True, has_progress=True, reuse_files=True)).reuse is False


@pytest.mark.parametrize("change", [
    {"manifest": "n" * 64},  # the inputs changed since
    {"hash_key_hex": NEW_KEY},  # another key: finished batches hashed with the old one
    {"staging": False},  # the staging array is gone
    {"progress": False},
    {"batch_files": None},  # an attrs without the batch size
])
def test_an_interrupted_build_that_cannot_resume_starts_afresh(change):
    old = attrs(complete=False, build={"batch_files": change.get("batch_files", 4)} if "batch_files" in change else {"batch_files": 4})
    facts = StoreFacts(attrs=old, has_staging=change.get("staging", True), has_progress=change.get("progress", True))
    kw = {k: v for k, v in change.items() if k in ("manifest", "hash_key_hex")}
    p = decide(facts, **kw)
    assert p.action == "fresh" and p.batch_files == 8
