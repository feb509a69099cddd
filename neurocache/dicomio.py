"""Read one DICOM file once (header and pixels) into stored values + header metadata.

Everything that can go wrong becomes a :class:`~neurocache.reasons.Quarantine` naming the tag,
the value and the cause; nothing here writes anything.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from neurocache.config import PrepConfig
from neurocache.reasons import Quarantine


@dataclass
class SliceData:
    """One decoded slice.

    Attributes:
        stored: integer array (rows, columns) of stored pixel values.
        slope, intercept: the modality LUT, HU = stored x slope + intercept.
        meta: header columns for the feature table (no PHI: identifiers are keyed hashes).
    """

    stored: np.ndarray
    slope: float
    intercept: float
    meta: dict[str, Any] = field(default_factory=dict)


def keyed_hash(value: str | None, key: bytes) -> str:
    """HMAC-SHA256 of an identifier, hex, first 16 bytes; empty string for a missing identifier.

    The key lives in the store's attrs, so the same patient maps to the same hash across rebuilds
    of that store while the plaintext identifier is never stored.
    """
    if value is None or str(value) == "":
        return ""
    return hmac.new(key, str(value).encode(), hashlib.sha256).hexdigest()[:32]


def _first(value: Any) -> Any:
    """First item of a multi-valued element, the value itself otherwise."""
    if isinstance(value, (pydicom.multival.MultiValue, list, tuple)):
        return value[0] if len(value) else None
    return value


def _num(ds: pydicom.Dataset, keyword: str, index: int | None = None) -> float:
    """A numeric header value as float, NaN when absent or not a number."""
    v = ds.get(keyword, None)
    if v is None:
        return float("nan")
    try:
        if index is not None:
            v = v[index] if isinstance(v, (pydicom.multival.MultiValue, list, tuple)) else float("nan")
        return float(_first(v))
    except (TypeError, ValueError, IndexError):
        return float("nan")


def header_meta(ds: pydicom.Dataset, key: bytes) -> dict[str, Any]:
    """Feature-table columns read from the header (units: mm for spacing/thickness/position, kV)."""
    tsuid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    return {
        "modality": str(ds.get("Modality", "") or ""),
        "sop_class": str(ds.get("SOPClassUID", "") or ""),
        "transfer_syntax": str(tsuid or ""),
        "rows": int(ds.get("Rows", 0) or 0),
        "cols": int(ds.get("Columns", 0) or 0),
        "spacing_row_mm": _num(ds, "PixelSpacing", 0),
        "spacing_col_mm": _num(ds, "PixelSpacing", 1),
        "thickness_mm": _num(ds, "SliceThickness"),
        "kvp": _num(ds, "KVP"),
        "slope": _num(ds, "RescaleSlope"),
        "intercept": _num(ds, "RescaleIntercept"),
        "window_center": _num(ds, "WindowCenter"),
        "window_width": _num(ds, "WindowWidth"),
        "photometric": str(ds.get("PhotometricInterpretation", "") or ""),
        "bits_allocated": int(ds.get("BitsAllocated", 0) or 0),
        "bits_stored": int(ds.get("BitsStored", 0) or 0),
        "pixel_representation": int(ds.get("PixelRepresentation", 0) or 0),
        "z_mm": _num(ds, "ImagePositionPatient", 2),
        "instance_number": _num(ds, "InstanceNumber"),
        "patient_key": keyed_hash(ds.get("PatientID", None), key),
        "study_key": keyed_hash(ds.get("StudyInstanceUID", None), key),
        "series_key": keyed_hash(ds.get("SeriesInstanceUID", None), key),
    }


def read_slice(path: str | Path, cfg: PrepConfig, key: bytes) -> SliceData:
    """Read header and pixels of one file (one read) and check it is a usable CT slice.

    Raises:
        Quarantine: with the reason code and the tag/value that caused it.
    """
    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as e:
        raise Quarantine("not_dicom", f"{path.name}: {e}") from None
    except Exception as e:  # pydicom raises many types on truncated/corrupt headers
        raise Quarantine("unreadable", f"{path.name}: {type(e).__name__}: {e}") from None

    try:
        meta = header_meta(ds, key)
    except Exception as e:
        raise Quarantine("unreadable", f"{path.name}: header value could not be parsed: {type(e).__name__}: {e}") from None

    modality = meta["modality"].upper()
    if modality not in cfg.allowed_modalities:
        raise Quarantine(
            "modality_not_allowed",
            f"{path.name}: (0008,0060) Modality={meta['modality']!r} not in allowed_modalities={list(cfg.allowed_modalities)}",
            meta,
        )
    if "PixelData" not in ds:
        raise Quarantine("no_pixel_data", f"{path.name}: no (7FE0,0010) Pixel Data element", meta)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise Quarantine("multiframe", f"{path.name}: (0028,0008) NumberOfFrames={frames}; one slice per file is expected", meta)
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1 or not meta["photometric"].startswith("MONOCHROME"):
        raise Quarantine(
            "not_grayscale",
            f"{path.name}: (0028,0004) PhotometricInterpretation={meta['photometric']!r}, "
            f"SamplesPerPixel={ds.get('SamplesPerPixel', None)}",
            meta,
        )
    if "RescaleSlope" not in ds or "RescaleIntercept" not in ds:
        missing = [k for k in ("RescaleIntercept", "RescaleSlope") if k not in ds]
        raise Quarantine("no_rescale", f"{path.name}: missing {', '.join(missing)}", meta)
    slope, intercept = meta["slope"], meta["intercept"]
    if not (np.isfinite(slope) and slope > 0 and np.isfinite(intercept)):
        raise Quarantine("bad_rescale", f"{path.name}: RescaleSlope={slope}, RescaleIntercept={intercept}", meta)

    try:
        stored = ds.pixel_array
    except Exception as e:
        raise Quarantine(
            "decode_error",
            f"{path.name}: transfer syntax {meta['transfer_syntax'] or '?'}: {type(e).__name__}: {e}",
            meta,
        ) from None
    if stored.ndim != 2 or not np.issubdtype(stored.dtype, np.integer):
        raise Quarantine(
            "decode_error", f"{path.name}: decoded pixel array has shape {stored.shape}, dtype {stored.dtype}", meta
        )
    return SliceData(stored=stored, slope=float(slope), intercept=float(intercept), meta=meta)
