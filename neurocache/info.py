"""``neurocache info``: a store's summary (the design's JSON contract)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from neurocache.names import shown_name
from neurocache.remote import StoreLocation
from neurocache.store import Store, StoreError, dir_bytes, open_store, read_attrs


def store_info(path: str | Path | Store) -> dict[str, Any]:
    """Summary of a store; works on an incomplete store too (``complete: false``, no counts).

    ``path``: a store folder or URL, or a :class:`~neurocache.store.Store` already open (``Store.info()``).

    Keys: n_files, n_ok, n_quarantined, n_missing_file, shape, dtype, fingerprint, complete,
    bytes_on_disk, source_bytes, images_bytes, compression_ratio, by_reason, preprocess, created.
    """
    opened = path if isinstance(path, Store) else None
    if opened is not None:
        path = opened.path
    loc = StoreLocation(path)  # a folder or an fsspec URL
    attrs = opened.attrs if opened is not None else read_attrs(loc)
    if attrs is None:
        raise StoreError(f"no neurocache store at {path}: run `neurocache build --store {path} ...` first")
    info: dict[str, Any] = {
        "store": str(path),
        "complete": bool(attrs.get("complete")),
        "fingerprint": attrs.get("fingerprint"),
        "schema_version": attrs.get("schema_version"),
        "package_version": attrs.get("package_version"),
        "preprocess": attrs.get("preprocess"),
        "created": attrs.get("created"),
        "source_bytes": attrs.get("source", {}).get("bytes"),
        "source_root": _shown(attrs.get("source", {}).get("data_root")),
        "bytes_on_disk": dir_bytes(loc),
        "n_files": attrs.get("source", {}).get("n_files"),
    }
    if info["complete"]:
        # the counts need two columns, not the whole table
        s = opened if opened is not None else open_store(loc, columns=["status", "reason"])
        counts = attrs.get("counts", {})
        images_bytes = loc.size("images")
        raw = int(s.images.size) * 2
        info.update(
            {
                "n_ok": counts.get("n_ok"),
                "n_quarantined": counts.get("n_quarantined"),
                "n_missing_file": counts.get("n_missing_file"),
                "shape": list(s.images.shape),
                "dtype": str(s.images.dtype),
                "shards": list(s.images.shards or s.images.chunks),
                "images_bytes": images_bytes,
                "compression_ratio": round(raw / images_bytes, 3) if images_bytes else None,
                "by_reason": s.features.loc[s.features["status"] != "ok", "reason"].value_counts().to_dict(),
                "build_seconds": attrs.get("build", {}).get("seconds"),
                "files_decoded": attrs.get("build", {}).get("decoded"),
                "files_reused": attrs.get("build", {}).get("reused"),
            }
        )
    else:
        info.update({"n_ok": None, "n_quarantined": None, "shape": None, "dtype": "int16"})
    return info


def _shown(path: str | None) -> str | None:
    """A path for output: bytes of it that are not valid UTF-8 escaped (:func:`shown_name`)."""
    return shown_name(path) if isinstance(path, str) else path


def format_info(info: dict[str, Any]) -> str:
    """Human-readable text of :func:`store_info`."""
    lines = [f"Store {info['store']}  ({'complete' if info['complete'] else 'INCOMPLETE: rerun the build to resume'})"]
    lines.append(f"  fingerprint   {info['fingerprint']}")
    lines.append(f"  source        {info['source_root']}: {info['n_files']} files, {info['source_bytes']} bytes")
    if info["complete"]:
        lines.append(f"  images        {info['shape']} {info['dtype']}, shards {info['shards']}")
        lines.append(f"  rows          ok {info['n_ok']}, quarantined {info['n_quarantined']}, missing file {info['n_missing_file']}")
        for r, c in info["by_reason"].items():
            lines.append(f"    {r:22s} {c}")
        lines.append(f"  on disk       {info['bytes_on_disk']} bytes (images compressed {info['compression_ratio']}x)")
        if info.get("files_reused"):
            lines.append(f"  last build    {info['files_decoded']} file(s) decoded, {info['files_reused']} reused unchanged")
    lines.append(f"  preprocess    {info['preprocess']}")
    return "\n".join(lines)
