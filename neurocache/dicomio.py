"""Read one DICOM file once (header and pixels) into stored values + header metadata.

Everything that can go wrong becomes a :class:`~neurocache.reasons.Quarantine` naming the tag,
the value and the cause; nothing here writes anything.

Checks, in order (the first that fails names the reason, see :mod:`neurocache.reasons`):

1. the file parses as Part-10 DICOM (``not_dicom``, ``unreadable``, ``no_file_meta``);
2. the SOP class is an image and not a derived object (``secondary_capture``, ``segmentation``,
   ``structured_report``, ``rt_object``, ``sop_class_not_image``), the Modality is allowed
   (``modality_not_allowed``);
3. pixel data is there and complete (``no_pixel_data``, ``truncated_pixel_data``), one frame
   (``multiframe``), grayscale (``not_grayscale``), a sane geometry (``bad_pixel_format``);
4. the modality LUT is known (``no_rescale``/``bad_rescale``, or ``preprocess.assume_rescale``);
5. the pixels decode (``decode_error``) with any transfer syntax pydicom has a plugin for: native
   little/big endian, deflated, RLE, JPEG baseline/extended/lossless (pylibjpeg-libjpeg, Pillow),
   JPEG-LS (pyjpegls), JPEG 2000 (pylibjpeg-openjpeg);
6. the RSNA 12-bit wrap-around is undone when ``preprocess.fix_12bit_wrap`` (``fixes``).

Multi-frame files (``NumberOfFrames > 1``, e.g. enhanced CT volumes) are quarantined rather than
split: a label belongs to one file ID, so frames of one file could not carry their own labels. A
single-frame enhanced CT is accepted, with the rescale read from its functional groups.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from neurocache.config import PrepConfig
from neurocache.hu import fix_12bit_wrap
from neurocache.reasons import Quarantine

#: Table value of a header string that is not a valid code string / UID (never copied: may hold PHI).
INVALID = "<invalid>"
#: Identifying attributes: only ever stored as keyed hashes (patient/study/series) or not at all.
_PHI_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "OtherPatientNames", "PatientAddress",
    "AccessionNumber", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID",
    "InstitutionName", "ReferringPhysicianName", "StudyID", "StudyDate", "SeriesDate", "AcquisitionDate",
    "ContentDate",
)

#: Largest accepted Rows/Columns: a corrupted header must not make a decoder allocate gigabytes.
MAX_SIDE = 8192

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
_PIXEL_TAGS = (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10")  # (7FE0,0010) little / big endian


@dataclass
class SliceData:
    """One decoded slice.

    Attributes:
        stored: integer array (rows, columns) of stored pixel values, native byte order (after the
            12-bit fix when it applied).
        slope, intercept: the modality LUT, HU = stored x slope + intercept.
        meta: header columns for the feature table (no PHI: identifiers are keyed hashes).
        fixes: codes of :data:`neurocache.reasons.FIXES` applied to this slice.
        notes: human-readable notes on the fixes (go to ``detail``).
    """

    stored: np.ndarray
    slope: float
    intercept: float
    meta: dict[str, Any] = field(default_factory=dict)
    fixes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


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
    except Exception:
        return None


def _num(ds: pydicom.Dataset, keyword: str, index: int | None = None) -> float:
    """A numeric header value as float, NaN when absent or not a number."""
    v = _get(ds, keyword)
    if v is None:
        return float("nan")
    try:
        if index is not None:
            v = v[index] if isinstance(v, (pydicom.multival.MultiValue, list, tuple)) else float("nan")
        return float(_first(v))
    except (TypeError, ValueError, IndexError, OverflowError):
        return float("nan")


def _int(ds: pydicom.Dataset, keyword: str, default: int = 0) -> int:
    """An integer header value; ``default`` when absent, -1 when present but not an integer."""
    v = _get(ds, keyword)
    if v is None or v == "":
        return default
    try:
        f = float(_first(v))
        return int(f) if f.is_integer() else -1
    except (TypeError, ValueError, OverflowError):
        return -1


def _str(ds: pydicom.Dataset, keyword: str) -> str:
    v = _get(ds, keyword)
    try:
        return str(_first(v) if isinstance(v, pydicom.multival.MultiValue) else v or "").strip()
    except Exception:
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
    # Quoted values, bytes literals, UIDs, dates and person names a parser may echo: never copied.
    msg = _QUOTED.sub("<value>", msg)
    msg = _UIDLIKE.sub("<uid>", msg)
    msg = _DATELIKE.sub("<number>", msg)
    msg = _PNLIKE.sub("<value>", msg)
    msg = _ADDRESS.sub("", msg)
    msg = f"{type(e).__name__}: " + " ".join(msg.split())
    if ds is not None:
        for kw in _PHI_KEYWORDS:
            v = _str(ds, kw)
            if len(v) >= 4:
                msg = msg.replace(v, "<redacted>")
    return msg[:300]


def header_meta(ds: pydicom.Dataset, key: bytes) -> dict[str, Any]:
    """Feature-table columns read from the header (units: mm for spacing/thickness/position, kV).

    Never raises: an unparsable value reads as NaN / -1 / "". Patient, study and series
    identifiers appear only as keyed hashes; names, dates and UIDs are never copied.
    """
    fm = getattr(ds, "file_meta", None)
    return {
        "modality": _cs(ds, "Modality"),
        "sop_class": _uid(ds, "SOPClassUID"),
        "transfer_syntax": _uid(fm, "TransferSyntaxUID"),
        "rows": _int(ds, "Rows"),
        "cols": _int(ds, "Columns"),
        "n_frames": _int(ds, "NumberOfFrames", 1),
        "spacing_row_mm": _num(ds, "PixelSpacing", 0),
        "spacing_col_mm": _num(ds, "PixelSpacing", 1),
        "thickness_mm": _num(ds, "SliceThickness"),
        "kvp": _num(ds, "KVP"),
        "slope": _num(ds, "RescaleSlope"),
        "intercept": _num(ds, "RescaleIntercept"),
        "window_center": _num(ds, "WindowCenter"),
        "window_width": _num(ds, "WindowWidth"),
        "photometric": _cs(ds, "PhotometricInterpretation"),
        "bits_allocated": _int(ds, "BitsAllocated"),
        "bits_stored": _int(ds, "BitsStored"),
        "pixel_representation": _int(ds, "PixelRepresentation"),
        "z_mm": _num(ds, "ImagePositionPatient", 2),
        "instance_number": _num(ds, "InstanceNumber"),
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


def _has_pixel_tag(path: Path, raw: bytes | None = None) -> bool:
    """True when the raw bytes hold the (7FE0,0010) tag: the element began but did not parse."""
    if raw is not None:
        return any(t in raw for t in _PIXEL_TAGS)
    tail = b""
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            buf = tail + block
            if any(t in buf for t in _PIXEL_TAGS):
                return True
            tail = buf[-3:]
    return False


def _read(path: Path, key: bytes, raw: bytes | None = None) -> pydicom.Dataset:
    """dcmread (of ``raw``, the file's bytes, when given) with the reasons for files that are not
    (Part-10) DICOM or that end too early."""
    src = (lambda: io.BytesIO(raw)) if raw is not None else (lambda: path)  # noqa: E731 - a fresh source per parse
    try:
        ds = pydicom.dcmread(src())
    except InvalidDicomError as e:
        try:
            ds = pydicom.dcmread(src(), force=True)
            meta = header_meta(ds, key)
            looks_dicom = meta["sop_class"] not in ("", INVALID) or meta["modality"] not in ("", INVALID)
        except Exception:
            looks_dicom, meta = False, None
        if looks_dicom:
            raise Quarantine(
                "no_file_meta",
                f"{path.name}: no DICM prefix / file meta information, but a dataset parses "
                f"(SOPClassUID={meta['sop_class'] or '?'}, Modality={meta['modality'] or '?'}); "
                f"its encoding cannot be trusted",
                meta,
            ) from None
        raise Quarantine("not_dicom", f"{path.name}: {safe_message(e)}") from None
    except Exception as e:  # pydicom raises many types on truncated/corrupt headers
        raise Quarantine("unreadable", f"{path.name}: {safe_message(e)}") from None
    if len(ds) == 0:
        # pydicom gives up on a dataset whose encapsulated pixel data runs past the end of the file
        # and returns it empty; the header alone still parses for the table.
        meta = None
        try:
            meta = header_meta(pydicom.dcmread(src(), stop_before_pixels=True), key)
        except Exception:
            pass
        if _has_pixel_tag(path, raw):
            raise Quarantine("truncated_pixel_data", f"{path.name}: the file ends inside (7FE0,0010) Pixel Data", meta)
        raise Quarantine("unreadable", f"{path.name}: no data element could be parsed after the file meta", meta)
    return ds


def _rescale(ds: pydicom.Dataset, meta: dict[str, Any], cfg: PrepConfig, name: str) -> tuple[float, float, list[str], list[str]]:
    """(slope, intercept, fixes, notes) of the modality LUT, or Quarantine ``no_rescale``/``bad_rescale``."""
    fixes: list[str] = []
    notes: list[str] = []
    slope, intercept = meta["slope"], meta["intercept"]
    has_slope, has_intercept = "RescaleSlope" in ds, "RescaleIntercept" in ds
    if not (has_slope and has_intercept):
        # Enhanced (functional-group) encoding: per-frame first, then shared.
        for seq_kw in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
            try:
                item = ds[seq_kw][0]
                pvt = item.PixelValueTransformationSequence[0]
                s, i = float(pvt.RescaleSlope), float(pvt.RescaleIntercept)
            except Exception:
                continue
            slope, intercept, has_slope, has_intercept = s, i, True, True
            fixes.append("enhanced_rescale")
            notes.append(f"rescale from {seq_kw}: slope {s:g}, intercept {i:g}")
            break
    if not (has_slope and has_intercept):
        missing = [k for k, has in (("RescaleIntercept", has_intercept), ("RescaleSlope", has_slope)) if not has]
        if cfg.assume_rescale is None:
            raise Quarantine(
                "no_rescale",
                f"{name}: missing {', '.join(missing)}; pydicom would return raw stored values, not HU. "
                f"Set preprocess.assume_rescale: [slope, intercept] to accept such files",
                meta,
            )
        if not has_slope:
            slope = float(cfg.assume_rescale[0])
        if not has_intercept:
            intercept = float(cfg.assume_rescale[1])
        fixes.append("assumed_rescale")
        notes.append(f"assumed {', '.join(missing)} from preprocess.assume_rescale: slope {slope:g}, intercept {intercept:g}")
    if not (np.isfinite(slope) and slope > 0 and np.isfinite(intercept)):
        raise Quarantine("bad_rescale", f"{name}: RescaleSlope={slope}, RescaleIntercept={intercept}", meta)
    return float(slope), float(intercept), fixes, notes


def read_slice(path: str | Path, cfg: PrepConfig, key: bytes, raw: bytes | None = None) -> SliceData:
    """Read header and pixels of one file (one parse) and check it is a usable CT slice.

    ``raw``: the file's content when the caller has read it already (the file is then not opened;
    ``path`` only names it in messages).

    Raises:
        Quarantine: with the reason code and the tag/value that caused it.
    """
    path = Path(path)
    with quiet_pydicom(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _read_slice(path, cfg, key, raw)


@contextlib.contextmanager
def quiet_pydicom() -> Iterator[None]:
    """pydicom's logger at ERROR for the duration: it logs a warning for every oddity, and the
    quarantine reasons say what matters. Nested uses cost nothing (``Logger.setLevel`` clears
    every logger's cache, so the build holds it once per batch rather than once per file)."""
    log = logging.getLogger("pydicom")
    level = log.level
    if level >= logging.ERROR:
        yield
        return
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


#: Uncompressed little-endian transfer syntaxes whose Pixel Data is the array's bytes as they are.
_NATIVE_LE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}


def native_pixels(ds: pydicom.Dataset, meta: dict[str, Any]) -> np.ndarray | None:
    """The stored values of a one-frame, 16-bit, uncompressed little-endian slice straight from its
    Pixel Data bytes, or None for any other kind (the caller then uses ``ds.pixel_array``).

    The same array as pydicom's ``pixel_array`` (dtype, values; ``tests/test_native_pixels.py``):
    ``<u2`` / ``<i2`` by PixelRepresentation, and with BitsStored < 16 the unused high bits cleared
    (unsigned) or sign-extended (signed) by a left then right shift, as pydicom does. It skips
    pydicom's pixel-handler machinery (about a quarter millisecond per slice). The array is read-only.
    """
    rows, cols, bs = meta["rows"], meta["cols"], meta["bits_stored"]
    if (meta["transfer_syntax"] not in _NATIVE_LE or meta["bits_allocated"] != 16 or meta["n_frames"] > 1
            or meta["pixel_representation"] not in (0, 1) or not 0 < bs <= 16):
        return None
    data = ds.PixelData
    if not isinstance(data, bytes) or len(data) < rows * cols * 2:
        return None
    arr = np.frombuffer(data, dtype="<i2" if meta["pixel_representation"] else "<u2", count=rows * cols).reshape(rows, cols)
    if bs < 16:
        arr = np.left_shift(arr, 16 - bs)
        np.right_shift(arr, 16 - bs, out=arr)
    return arr


def _read_slice(path: Path, cfg: PrepConfig, key: bytes, raw: bytes | None = None) -> SliceData:
    ds = _read(path, key, raw)
    try:
        meta = header_meta(ds, key)
    except Exception as e:
        raise Quarantine("unreadable", f"{path.name}: header value could not be parsed: {safe_message(e, ds)}") from None
    name = path.name

    if not meta["transfer_syntax"]:
        raise Quarantine("no_file_meta", f"{name}: the file meta has no (0002,0010) TransferSyntaxUID", meta)
    if meta["transfer_syntax"] == INVALID:
        raise Quarantine("unreadable", f"{name}: (0002,0010) TransferSyntaxUID is not a valid UID (corrupt file meta)", meta)
    sop_reason = sop_class_reason(meta["sop_class"]) if meta["sop_class"] != INVALID else None
    if sop_reason is not None:
        raise Quarantine(
            sop_reason,
            f"{name}: (0008,0016) SOPClassUID={meta['sop_class']} ({UID(meta['sop_class']).name}), Modality={meta['modality']!r}",
            meta,
        )
    modality = meta["modality"].upper()
    if modality not in cfg.allowed_modalities:
        raise Quarantine(
            "modality_not_allowed",
            f"{name}: (0008,0060) Modality={meta['modality']!r} not in allowed_modalities={list(cfg.allowed_modalities)}",
            meta,
        )
    if "PixelData" not in ds:
        if _has_pixel_tag(path, raw):
            raise Quarantine("truncated_pixel_data", f"{name}: the file ends inside (7FE0,0010) Pixel Data", meta)
        raise Quarantine("no_pixel_data", f"{name}: no (7FE0,0010) Pixel Data element", meta)
    frames = meta["n_frames"]
    if frames > 1:
        raise Quarantine(
            "multiframe",
            f"{name}: (0028,0008) NumberOfFrames={frames}; one slice per file (and one label per ID) is expected — "
            f"split the volume into single-frame files",
            meta,
        )
    spp = _int(ds, "SamplesPerPixel", 1)
    if spp != 1 or not meta["photometric"].startswith("MONOCHROME"):
        raise Quarantine(
            "not_grayscale",
            f"{name}: (0028,0004) PhotometricInterpretation={meta['photometric']!r}, SamplesPerPixel={spp}",
            meta,
        )
    rows, cols, ba, bs = meta["rows"], meta["cols"], meta["bits_allocated"], meta["bits_stored"]
    if (
        not (0 < rows <= MAX_SIDE and 0 < cols <= MAX_SIDE)
        or frames < 1
        or ba not in (8, 16, 32)
        or not (0 < bs <= ba)
        or meta["pixel_representation"] not in (0, 1)
    ):
        raise Quarantine(
            "bad_pixel_format",
            f"{name}: Rows={rows}, Columns={cols}, NumberOfFrames={frames}, BitsAllocated={ba}, BitsStored={bs}, "
            f"PixelRepresentation={meta['pixel_representation']} (sides must be 1..{MAX_SIDE}, bits 8/16/32)",
            meta,
        )
    slope, intercept, fixes, notes = _rescale(ds, meta, cfg, name)

    ts = UID(meta["transfer_syntax"])
    if not ts.is_compressed:
        try:
            n_bytes = len(ds.PixelData)
        except Exception as e:
            raise Quarantine("unreadable", f"{name}: (7FE0,0010) Pixel Data unreadable: {safe_message(e, ds)}", meta) from None
        need = rows * cols * ba // 8
        if n_bytes < need:
            raise Quarantine(
                "truncated_pixel_data",
                f"{name}: (7FE0,0010) Pixel Data has {n_bytes} bytes, Rows x Columns x BitsAllocated/8 = {need}",
                meta,
            )
    try:
        stored = native_pixels(ds, meta) if not ts.is_compressed else None
        if stored is None:
            stored = ds.pixel_array
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # decoder plugins can raise non-Exception errors (a Rust panic in pylibjpeg-rle)
        raise Quarantine("decode_error", f"{name}: transfer syntax {ts.name}: {safe_message(e, ds)}", meta) from None
    if stored.ndim != 2 or not np.issubdtype(stored.dtype, np.integer) or stored.shape != (rows, cols):
        raise Quarantine(
            "decode_error",
            f"{name}: decoded pixel array has shape {stored.shape}, dtype {stored.dtype}; header says {rows}x{cols}",
            meta,
        )
    if not stored.dtype.isnative:
        stored = stored.astype(stored.dtype.newbyteorder("="))  # big endian -> native, same values
    if cfg.fix_12bit_wrap and bs == 12 and meta["pixel_representation"] == 0 and intercept > -100:
        stored, intercept_fixed = fix_12bit_wrap(stored)
        fixes.append("rsna_12bit_wrap")
        notes.append(
            f"12-bit wrap-around fixed: stored -> (stored + 1000) mod 4096, RescaleIntercept {intercept:g} -> {intercept_fixed:g}"
        )
        intercept = intercept_fixed
    return SliceData(stored=stored, slope=slope, intercept=intercept, meta=meta, fixes=fixes, notes=notes)
