"""The build's own members of a store: names, commit records, the reuse source, and the facts
:func:`neurocache.build.plan.plan` decides from."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from neurocache.build.plan import StoreFacts
from neurocache.errors import UserError
from neurocache.names import shown_name
from neurocache.preprocess import ROW_COLUMNS
from neurocache.reasons import OK, QUARANTINED, TABLE_REASONS
from neurocache.remote import StoreLocation, StoreURL
from neurocache.store import FEATURES_FILE, QUALITY_FILE, read_attrs

STAGING = "_staging"
PROGRESS = "_progress"

#: Names the build creates inside a store folder: a folder holding only these (e.g. the remains of a
#: killed ``--force`` removal) may be rebuilt; anything else is refused as "not a neurocache store".
STORE_MEMBERS = {"zarr.json", "images", STAGING, PROGRESS, FEATURES_FILE, QUALITY_FILE}

#: Columns of a staged (per-task) feature row: the per-file columns, the escaped file name, the
#: file's position in the sorted input and whether the row was copied from the reuse source.
STAGED_COLUMNS = [*ROW_COLUMNS, "file", "input_index", "_reused"]


class BuildError(UserError, RuntimeError):
    """The build cannot go on (``--strict`` with quarantined files, an unusable store path)."""

    exit_code = 1


@dataclass
class BuildResult:
    """What a build did: the store path, its summary attrs and whether anything was (re)computed."""

    store: Path | StoreURL
    attrs: dict[str, Any]
    features: pd.DataFrame
    skipped: bool  # True when the store was already complete with the same inputs and parameters


def store_facts(loc: StoreLocation) -> StoreFacts:
    """Read what :func:`neurocache.build.plan.plan` needs from the store at ``loc``."""
    attrs = read_attrs(loc)
    foreign = attrs is None and loc.exists() and (not loc.isdir() or bool(loc.listdir() and not _is_remnant(loc)))
    reuse_files = (
        attrs is not None
        and loc.isfile("images/zarr.json")
        and loc.isfile(FEATURES_FILE)
        and _has_columns(loc, FEATURES_FILE, [*ROW_COLUMNS, "row", "file"])
    )
    return StoreFacts(
        attrs=attrs,
        foreign=foreign,
        has_staging=attrs is not None and loc.isfile(f"{STAGING}/zarr.json"),
        has_progress=attrs is not None and (loc.isdir(PROGRESS) or loc.path is None),  # an object store has no empty folders
        reuse_files=reuse_files,
    )


def _is_remnant(loc: StoreLocation) -> bool:
    """True when the store holds only names a build creates (a store whose removal was interrupted)."""
    return all(name in STORE_MEMBERS or name.endswith((".tmp", ".partial")) for name in loc.listdir())


def _has_columns(loc: StoreLocation, name: str, columns: list[str]) -> bool:
    try:
        return set(columns) <= set(loc.parquet_schema_names(name))
    except Exception:  # noqa: BLE001 - an unreadable or foreign table is simply not a reuse source
        return False


def remove_staging(loc: StoreLocation) -> None:
    """Delete ``_staging`` and ``_progress`` (the decode phase's scratch data); a Zarr v3 array is
    just its folder/prefix, so removing that removes the array."""
    loc.rm(PROGRESS)
    loc.rm(STAGING)


def batch_name(index: int) -> str:
    """The commit record of batch ``index``, relative to the store."""
    return f"{PROGRESS}/batch_{index:06d}.parquet"


_BATCH_RE = re.compile(r"^batch_(\d+)\.parquet$")


def done_batches(loc: StoreLocation) -> set[int]:
    """Batches whose commit record exists."""
    return {int(m.group(1)) for m in map(_BATCH_RE.match, loc.listdir(PROGRESS)) if m}


def reuse_rows(loc: StoreLocation, files: list[Path]) -> tuple[pd.DataFrame, Any]:
    """The old feature rows a rebuild may copy (per-file columns, ``file``, ``row``) and, for each of
    ``files``, its position among them (-1: decode it). One read of the old table and one vectorised
    lookup, so the client's cost is linear in files and each task is sent only its own rows.

    Rows whose status was set by the label join (``no_label``, ``duplicate_file``) are left out: the
    table does not hold their decode result, so such files are decoded again.
    """
    old = loc.read_parquet(FEATURES_FILE, columns=[*ROW_COLUMNS, "row", "file"])
    keep = (old["file"].astype(str) != "") & (old["content_hash"].astype(str) != "")
    keep &= (old["status"] == OK) | ((old["status"] == QUARANTINED) & ~old["reason"].isin(list(TABLE_REASONS)))
    old = old[keep].drop_duplicates("file", keep="last").reset_index(drop=True)
    pos = pd.Index(old["file"].astype(str)).get_indexer([shown_name(p.name) for p in files])  # as the table holds them
    return old, pos


def rows_bytes(frame: pd.DataFrame) -> bytes:
    """``frame`` as Parquet bytes (no index)."""
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return buf.getvalue()
