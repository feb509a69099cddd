"""neurocache: brain CT DICOM slices -> a validated, chunked Zarr cache of HU arrays + a feature table.

The build path imports numpy, pydicom and zarr (dask.distributed only with a cluster), never torch,
so caching stays cheap.

Python API (what ``neurocache info``, the trainer and the notebook use)::

    store = neurocache.open_store("store.zarr")   # refuses an incomplete store or another schema
    store.features, store.quality, store.images   # DataFrame, dict, lazy int16 HU (N, S, S)
    store.image("ID_0a1b2c"), store.info()        # one HU slice by ID; the `neurocache info --json` summary

``neurocache.UserError`` is the base of every error that means bad input, config, store or run
(:mod:`neurocache.errors`); anything else is a bug.
"""
from __future__ import annotations

from typing import Any

from neurocache.errors import UserError

__version__ = "0.1.0"
SCHEMA_VERSION = 4  # 2: fixes/n_frames columns, new reason codes, incremental-build attrs; 3: series geometry columns
#: What the last schema change was, for the messages that refuse a store of another schema.
SCHEMA_CHANGE = "schema 4 hashes file contents with BLAKE3 (column content_hash) instead of sha256"
#: The version of the preprocessing that :meth:`neurocache.config.PrepConfig.fingerprint` covers: the
#: schema version up to 3. Bump it (with SCHEMA_VERSION) only when images or computed values change;
#: schema 4 changed the content-hash column alone, so stores and trained models keep their fingerprints.
PREPROCESS_VERSION = 3

__all__ = ["PREPROCESS_VERSION", "SCHEMA_CHANGE", "SCHEMA_VERSION", "UserError", "__version__", "open_store"]


def __getattr__(name: str) -> Any:
    # ``neurocache.open_store`` without importing zarr/pandas on ``import neurocache``
    if name == "open_store":
        from neurocache.store import open_store

        return open_store
    raise AttributeError(f"module 'neurocache' has no attribute {name!r}")
