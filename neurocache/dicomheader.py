"""DICOM header values for the feature table, read so that no identifying value is ever copied.

:func:`header_meta` gives the table's header columns (never raises: an unparsable value reads as
NaN / -1 / ""); identifiers appear only as keyed hashes (:func:`keyed_hash`); :func:`safe_message`
makes an exception's text safe for ``detail``; :func:`sop_class_reason` maps a SOP class to its
quarantine reason (:data:`neurocache.reasons.REASONS`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any

import pydicom
from pydicom import config as _pydicom_config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.hooks import hooks as _pydicom_hooks
from pydicom.hooks import raw_element_value as _default_value_hook
from pydicom.hooks import raw_element_vr as _default_vr_hook
from pydicom.uid import UID
from pydicom.values import convert_value

#: Table value of a header string that is not a valid code string / UID (never copied: may hold PHI).
INVALID = "<invalid>"
#: Identifying attributes: only ever stored as keyed hashes (patient/study/series) or not at all.
_PHI_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "OtherPatientNames", "PatientAddress",
    "AccessionNumber", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID",
    "InstitutionName", "ReferringPhysicianName", "StudyID", "StudyDate", "SeriesDate", "AcquisitionDate",
    "ContentDate",
)

_SC_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
    "1.2.840.10008.5.1.4.1.1.7.1",  # Multi-frame Single Bit SC
    "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte SC
    "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word SC
    "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color SC
}
_SEG_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation Storage
    "1.2.840.10008.5.1.4.1.1.66.5",  # Surface Segmentation Storage
    "1.2.840.10008.5.1.4.1.1.66.6",  # Tractography Results Storage
    "1.2.840.10008.5.1.4.1.1.66.7",  # Label Map Segmentation Storage
    "1.2.840.10008.5.1.4.1.1.66.8",  # Height Map Segmentation Storage
}
_SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
_RT_PREFIXES = ("1.2.840.10008.5.1.4.1.1.481.", "1.2.840.10008.5.1.4.34.")

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


def _get(ds: pydicom.Dataset, keyword: str) -> Any:
    """``ds.get(keyword)`` that never raises (a corrupt value reads as None)."""
    try:
        return ds.get(keyword, None)
    except Exception:  # noqa: BLE001 - a corrupt value may raise anything
        return None


#: Header keywords read by :func:`_value` straight from their raw element: (tag, VR), for the VRs
#: whose decoding does not depend on the character set.
_RAW_READ = {
    kw: (tag_for_keyword(kw), dictionary_VR(kw))
    for kw in ("Modality", "SOPClassUID", "Rows", "Columns", "NumberOfFrames", "PixelSpacing", "SliceThickness", "KVP",
               "RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth", "PhotometricInterpretation",
               "BitsAllocated", "BitsStored", "PixelRepresentation", "ImagePositionPatient", "InstanceNumber",
               "ImageOrientationPatient", "SliceLocation", "StudyInstanceUID", "SeriesInstanceUID", "SamplesPerPixel")
}
assert {vr for _, vr in _RAW_READ.values()} <= {"US", "IS", "DS", "CS", "UI"}


def _default_conversion() -> bool:
    """Whether pydicom converts raw elements its default way (no hook or callback registered)."""
    return (_pydicom_config.data_element_callback is None and not _pydicom_hooks.raw_element_kwargs
            and _pydicom_hooks.raw_element_vr is _default_vr_hook and _pydicom_hooks.raw_element_value is _default_value_hook)


def _value(ds: pydicom.Dataset | None, keyword: str) -> Any:
    """``_get(ds, keyword)``, for a keyword of :data:`_RAW_READ` decoded by pydicom's own VR converter
    (``pydicom.values.convert_value``, what ``ds.get`` runs for a raw element) without building the
    DataElement and without storing it in ``ds``: about a fifth of the cost. Anything else (a VR in
    the file other than the dictionary's, a converted or deferred element, a conversion that fails,
    hooks registered in pydicom) takes ``ds.get``'s own path, so the value is always ``ds.get``'s.
    ``tests/test_header.py`` compares the two on every pydicom test file."""
    entry = _RAW_READ.get(keyword)
    if ds is None or entry is None or not _default_conversion():
        return _get(ds, keyword) if ds is not None else None
    tag, vr = entry
    try:
        elem = ds.get_item(tag)
    except Exception:  # noqa: BLE001 - a corrupt dataset may raise anything
        return _get(ds, keyword)
    if elem is None:
        return None
    if isinstance(elem, RawDataElement) and elem.value is not None and (elem.VR or vr) == vr:
        try:
            return convert_value(vr, elem)
        except Exception:  # noqa: BLE001, S110 - ds.get's path below decides what a bad value reads as
            pass
    return _get(ds, keyword)


def _number(v: Any, index: int | None = None) -> float:
    """A header value (as :func:`_get` returns it) as float, NaN when absent or not a number;
    ``index``: the item of a multi-valued element (NaN for a single value)."""
    if v is None:
        return float("nan")
    try:
        if index is not None:
            v = v[index] if isinstance(v, (pydicom.multival.MultiValue, list, tuple)) else float("nan")
        return float(_first(v))
    except (TypeError, ValueError, IndexError, OverflowError):
        return float("nan")


def _num(ds: pydicom.Dataset, keyword: str, index: int | None = None) -> float:
    """A numeric header value as float, NaN when absent or not a number."""
    return _number(_value(ds, keyword), index)


def int_value(ds: pydicom.Dataset, keyword: str, default: int = 0) -> int:
    """An integer header value; ``default`` when absent, -1 when present but not an integer."""
    v = _value(ds, keyword)
    if v is None or v == "":
        return default
    try:
        f = float(_first(v))
        return int(f) if f.is_integer() else -1
    except (TypeError, ValueError, OverflowError):
        return -1


def _str(ds: pydicom.Dataset, keyword: str) -> str:
    v = _value(ds, keyword)
    try:
        return str(_first(v) if isinstance(v, pydicom.multival.MultiValue) else v or "").strip()
    except Exception:  # noqa: BLE001 - a corrupt value may raise anything
        return ""


_CS = re.compile(r"[A-Z0-9_ ]{1,16}")
_QUOTED = re.compile(r"""b?'[^']*'?|b?"[^"]*"?""")
_UIDLIKE = re.compile(r"\d+(?:\.\d+){3,}")
_DATELIKE = re.compile(r"\d{6,}")
_PNLIKE = re.compile(r"\S*\^\S*")
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")  # "<_io.BytesIO object at 0x7f...>": differs run to run
_UID_RE = re.compile(r"[0-9]+(\.[0-9]+)*")


def _cs(ds: pydicom.Dataset | None, keyword: str) -> str:
    """A code-string value (Modality, PhotometricInterpretation), "" when absent, ``<invalid>`` when not a CS.

    Only values that look like a DICOM code string are copied into the table: a corrupt header can
    make an element swallow its neighbours (names, dates), and those must never reach the store.
    """
    v = _str(ds, keyword) if ds is not None else ""
    if v == "":
        return ""
    return v if _CS.fullmatch(v) else INVALID


def _uid(ds: pydicom.Dataset | None, keyword: str) -> str:
    """A UID value, "" when absent, ``<invalid>`` when it is not a syntactically valid UID (<= 64 chars)."""
    v = _str(ds, keyword) if ds is not None else ""
    if v == "":
        return ""
    return v if len(v) <= 64 and _UID_RE.fullmatch(v) else INVALID


def safe_message(e: BaseException, ds: pydicom.Dataset | None = None) -> str:
    """An exception's text for ``detail``: one line, printable ASCII, at most 300 characters, and with
    the dataset's identifying values (names, IDs, dates, UIDs) redacted should a decoder echo them."""
    msg = "".join(ch if 32 <= ord(ch) < 127 else " " for ch in str(e))
    # An object's address first: one with 6 digits in a row would otherwise become "<number>" and
    # the rest of it stay, so the same file's detail would differ from build to build.
    msg = _ADDRESS.sub("", msg)
    # Quoted values, bytes literals, UIDs, dates and person names a parser may echo: never copied.
    msg = _QUOTED.sub("<value>", msg)
    msg = _UIDLIKE.sub("<uid>", msg)
    msg = _DATELIKE.sub("<number>", msg)
    msg = _PNLIKE.sub("<value>", msg)
    msg = f"{type(e).__name__}: " + " ".join(msg.split())
    if ds is not None:
        for kw in _PHI_KEYWORDS:
            v = _str(ds, kw)
            if len(v) >= 4:
                msg = msg.replace(v, "<redacted>")
    return msg[:300]


#: ImageOrientationPatient's six direction cosines as feature-table columns (row x, y, z; column x, y, z).
ORIENTATION_COLUMNS = ("iop_rx", "iop_ry", "iop_rz", "iop_cx", "iop_cy", "iop_cz")


def header_meta(ds: pydicom.Dataset, key: bytes) -> dict[str, Any]:
    """Feature-table columns read from the header (units: mm for spacing/thickness/position, kV).

    Never raises: an unparsable value reads as NaN / -1 / "". Patient, study and series
    identifiers appear only as keyed hashes; names, dates and UIDs are never copied.
    """
    fm = getattr(ds, "file_meta", None)
    spacing, position, orientation = (_value(ds, kw) for kw in ("PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient"))
    return {
        "modality": _cs(ds, "Modality"),
        "sop_class": _uid(ds, "SOPClassUID"),
        "transfer_syntax": _uid(fm, "TransferSyntaxUID"),
        "rows": int_value(ds, "Rows"),
        "cols": int_value(ds, "Columns"),
        "n_frames": int_value(ds, "NumberOfFrames", 1),
        "spacing_row_mm": _number(spacing, 0),
        "spacing_col_mm": _number(spacing, 1),
        "thickness_mm": _num(ds, "SliceThickness"),
        "kvp": _num(ds, "KVP"),
        "slope": _num(ds, "RescaleSlope"),
        "intercept": _num(ds, "RescaleIntercept"),
        "window_center": _num(ds, "WindowCenter"),
        "window_width": _num(ds, "WindowWidth"),
        "photometric": _cs(ds, "PhotometricInterpretation"),
        "bits_allocated": int_value(ds, "BitsAllocated"),
        "bits_stored": int_value(ds, "BitsStored"),
        "pixel_representation": int_value(ds, "PixelRepresentation"),
        "z_mm": _number(position, 2),
        "instance_number": _num(ds, "InstanceNumber"),
        "x_mm": _number(position, 0),
        "y_mm": _number(position, 1),
        **{col: _number(orientation, i) for i, col in enumerate(ORIENTATION_COLUMNS)},
        "slice_location_mm": _num(ds, "SliceLocation"),
        "patient_key": keyed_hash(_str(ds, "PatientID") or None, key),
        "study_key": keyed_hash(_str(ds, "StudyInstanceUID") or None, key),
        "series_key": keyed_hash(_str(ds, "SeriesInstanceUID") or None, key),
    }


def sop_class_reason(sop_class: str) -> str | None:
    """The quarantine reason a SOP class implies on its own (None for image storage classes)."""
    if not sop_class:
        return None
    if sop_class in _SC_CLASSES:
        return "secondary_capture"
    if sop_class in _SEG_CLASSES:
        return "segmentation"
    if sop_class.startswith(_SR_PREFIX):
        return "structured_report"
    if sop_class.startswith(_RT_PREFIXES):
        return "rt_object"
    uid = UID(sop_class)
    if uid.type == "SOP Class" and "Image" not in uid.name:
        return "sop_class_not_image"
    return None
