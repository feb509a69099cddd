"""What a build must do, decided from the store's attrs and the input manifest alone (no disk).

:func:`plan` is pure: :func:`neurocache.build.state.store_facts` reads what it needs from the store
(attrs, which members exist) and it returns a :class:`BuildPlan`: ``noop`` (complete and up to
date), ``resume`` (an interrupted build of the same inputs), ``incremental`` (a complete store of the
same parameters, inputs changed: unchanged files are copied, not decoded) or ``fresh``.
"""

from __future__ import annotations

import hashlib
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from neurocache import SCHEMA_CHANGE, SCHEMA_VERSION, __version__
from neurocache.inputs import Inputs
from neurocache.store import StoreError, param_diff

Action = Literal["noop", "resume", "incremental", "fresh"]


@dataclass(frozen=True)
class StoreFacts:
    """What :func:`plan` needs to know about the store on disk.

    Attributes:
        attrs: the store's ``neurocache`` attrs; None when there is no readable store.
        foreign: the path exists and holds something a build did not make (not a neurocache store).
        has_staging: ``_staging/zarr.json`` exists (the decode phase's array).
        has_progress: ``_progress`` exists (always True on an object store, which has no empty folders).
        reuse_files: ``images/zarr.json`` and a ``features.parquet`` with the per-file columns exist.
    """

    attrs: dict[str, Any] | None
    foreign: bool = False
    has_staging: bool = False
    has_progress: bool = False
    reuse_files: bool = False


@dataclass(frozen=True)
class BuildPlan:
    """The decision of :func:`plan`.

    Attributes:
        action: ``noop``, ``resume``, ``incremental`` or ``fresh``.
        key_hex: the hash key (hex) for patient/study/series hashes.
        batch_files: files per task (a divisor of ``shard_size``; a resumed build keeps its own).
        reuse: the old ``images`` + ``features.parquet`` serve as a reuse source.
        replace: the store holds other preprocessing and is removed first (``force``).
    """

    action: Action
    key_hex: str = ""
    batch_files: int = 0
    reuse: bool = False
    replace: bool = False


def plan(
    facts: StoreFacts,
    *,
    store: str,
    manifest: str,
    fingerprint: str,
    params: dict[str, Any],
    n_files: int,
    workers: int,
    shard_size: int,
    new_key_hex: str,
    hash_key_hex: str | None = None,
    force: bool = False,
    incremental: bool = True,
) -> BuildPlan:
    """Decide fresh / resume / incremental / no-op.

    Args:
        facts: the store as found (:class:`StoreFacts`).
        store: the store's name, for messages.
        manifest: :func:`manifest_digest` of the inputs.
        fingerprint, params: the requested preprocessing's fingerprint and value parameters.
        n_files, workers, shard_size: size the batches (:func:`batch_size`).
        new_key_hex: the hash key to use when neither ``hash_key_hex`` nor the store has one.
        hash_key_hex: the caller's hash key, if any.
        force: replace a store built with other parameters.
        incremental: reuse unchanged files of a previous complete build.

    Raises:
        StoreError: the path is not a neurocache store, or holds another schema or other preprocessing
            and not ``force``.
    """
    old, replace, kept_key = _kept_attrs(facts, store=store, fingerprint=fingerprint, params=params, force=force)
    if old is not None and old.get("complete") is True and old.get("source", {}).get("manifest") == manifest:
        return BuildPlan("noop")
    key_hex = hash_key_hex or (old or {}).get("hash_key") or kept_key or new_key_hex
    reuse = incremental and facts.reuse_files and _reusable(old, fingerprint, key_hex)
    if old is not None and _resumable(old, facts, manifest, key_hex):
        return BuildPlan("resume", key_hex, int(old["build"]["batch_files"]),
                         reuse=reuse and old.get("reuse_source_valid") is True)
    return BuildPlan("incremental" if reuse else "fresh", key_hex, batch_size(n_files, workers, shard_size),
                     reuse=reuse, replace=replace)


def _kept_attrs(
    facts: StoreFacts, *, store: str, fingerprint: str, params: dict[str, Any], force: bool,
) -> tuple[dict[str, Any] | None, bool, str | None]:
    """The store's attrs that the build may go on from, or a refusal.

    Returns:
        (the attrs, None when there are none or the store is replaced; whether the store is replaced
        (``force`` over another schema or other parameters); the hash key kept from a store of
        another schema, else None).

    Raises:
        StoreError: the path is not a neurocache store, or holds another schema or other
            preprocessing and not ``force``.
    """
    old = facts.attrs
    if old is None and facts.foreign:
        raise StoreError(f"{store} exists and is not a neurocache store; choose another --store path or remove it")
    replace, kept_key = False, None
    if old is not None and old.get("schema_version") != SCHEMA_VERSION:
        # Another table layout: neither up to date, nor resumable, nor a reuse source (same fingerprint or
        # not). Its hash key is kept, so the rebuilt store's patient/study/series keys are the same.
        if not force:
            raise StoreError(
                f"store {store} has schema {old.get('schema_version')!r}; this neurocache writes schema {SCHEMA_VERSION} "
                f"({SCHEMA_CHANGE}). Use --force to rebuild it, or build into a new --store path."
            )
        kept_key = old.get("hash_key")
        old, replace = None, True
    if old is not None and old.get("fingerprint") != fingerprint:
        if not force:
            diff = param_diff(old.get("preprocess", {}), params)
            raise StoreError(
                f"store {store} was built with other preprocessing parameters: {'; '.join(diff) or 'schema/code version'}. "
                f"Use --force to replace it, or build into a new --store path."
            )
        old, replace = None, True
    return old, replace, kept_key


def _resumable(old: dict[str, Any], facts: StoreFacts, manifest: str, key_hex: str) -> bool:
    """An interrupted build of the same inputs whose finished batches hashed with ``key_hex``."""
    return (
        old.get("complete") is not True
        and old.get("source", {}).get("manifest") == manifest
        and old.get("hash_key") == key_hex
        and isinstance(old.get("build", {}).get("batch_files"), int)
        and facts.has_staging
        and facts.has_progress
    )


def _reusable(old: dict[str, Any] | None, fingerprint: str, key_hex: str) -> bool:
    """Whether the store's current ``images`` + ``features.parquet`` may serve as a reuse source."""
    return bool(
        old is not None
        and old.get("fingerprint") == fingerprint
        and old.get("hash_key") == key_hex
        and old.get("package_version") == __version__
        and old.get("schema_version") == SCHEMA_VERSION
        and (old.get("complete") is True or old.get("reuse_source_valid") is True)
    )


def batch_size(n_files: int, workers: int, shard_size: int) -> int:
    """Files per task: a divisor of ``shard_size`` (so ``images`` shards are made of whole staging
    shards), the largest one that still gives 8 tasks per worker for load balance, and at least
    ``min(8, shard_size)`` files. Large inputs get whole shards (``shard_size`` files per task), which
    compaction then links into ``images`` without reading them."""
    want = math.ceil(n_files / (8 * max(1, workers)))
    divisors = [d for d in range(min(8, shard_size), shard_size + 1) if shard_size % d == 0]
    fits = [d for d in divisors if d <= want]
    return max(fits) if fits else divisors[0]


def manifest_digest(inputs: Inputs) -> str:
    """sha256 over (name, bytes, mtime) of every CT-folder entry and the labels CSV's content.

    Cheap to compute (no file is read but the CSV; symlinks are not followed); it decides whether a
    complete store is up to date and whether an interrupted build may be resumed. Names are hashed
    as their bytes, so a name that is not valid UTF-8 counts too.
    """
    h = hashlib.sha256()
    lines = []
    for p in inputs.files:
        st = os.lstat(p)
        lines.append(os.fsencode(p.name) + f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    h.update(b"".join(lines))  # the same bytes as one update per file, hashed in one call
    h.update(inputs.labels_path.read_bytes())
    return h.hexdigest()


def regular_bytes(paths: list[Path]) -> int:
    """Total size in bytes of the regular files among ``paths`` (from ``lstat``: folders, symlinks
    and special files count 0, as they are never read)."""
    sizes = (os.lstat(p) for p in paths)
    return int(sum(st.st_size for st in sizes if stat.S_ISREG(st.st_mode)))
