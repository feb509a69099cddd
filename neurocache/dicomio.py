"""Read one DICOM file once (header and pixels) into stored values + header metadata.

Everything that can go wrong becomes a :class:`~neurocache.reasons.Quarantine` naming the tag,
the value and the cause; nothing here writes anything.

The checks run in the order of :data:`neurocache.reasons.REASONS` (the one list of reason codes;
the first check that fails names the reason): the file parses as Part-10 DICOM (:func:`_read`),
it is an image of an allowed modality (:func:`_check_object`), its pixel data is there, one frame,
grayscale, of a sane geometry (:func:`_check_pixel_format`), its modality LUT is known
(:func:`_rescale`), and the pixels decode (:func:`_decode_pixels`) with any transfer syntax pydicom
has a plugin for (native, deflated, RLE, JPEG, JPEG-LS, JPEG 2000). The RSNA 12-bit wrap-around is
undone when ``preprocess.fix_12bit_wrap`` (:data:`neurocache.reasons.FIXES`).

Multi-frame files (``NumberOfFrames > 1``, e.g. enhanced CT volumes) are quarantined rather than
split: a label belongs to one file ID, so frames of one file could not carry their own labels. A
single-frame enhanced CT is accepted, with the rescale read from its functional groups.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from neurocache.config import PrepConfig
from neurocache.dicomheader import (
    INVALID,
    header_meta,
    int_value,
    safe_message,
    sop_class_reason,
)
from neurocache.hu import fix_12bit_wrap
from neurocache.reasons import Quarantine

#: Largest accepted Rows/Columns: a corrupted header must not make a decoder allocate gigabytes.
MAX_SIDE = 8192

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
    src = (lambda: io.BytesIO(raw)) if raw is not None else (lambda: path)
    try:
        ds = pydicom.dcmread(src())
    except InvalidDicomError as e:
        try:
            ds = pydicom.dcmread(src(), force=True)
            meta = header_meta(ds, key)
            looks_dicom = meta["sop_class"] not in ("", INVALID) or meta["modality"] not in ("", INVALID)
        except Exception:  # noqa: BLE001 - corrupt DICOM may raise anything
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
    except Exception as e:  # noqa: BLE001 - pydicom raises many types on truncated/corrupt headers
        raise Quarantine("unreadable", f"{path.name}: {safe_message(e)}") from None
    if len(ds) == 0:
        # pydicom gives up on a dataset whose encapsulated pixel data runs past the end of the file
        # and returns it empty; the header alone still parses for the table.
        meta = None
        try:
            meta = header_meta(pydicom.dcmread(src(), stop_before_pixels=True), key)
        except Exception:  # noqa: BLE001, S110 - corrupt DICOM may raise anything
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
            except Exception:  # noqa: BLE001, S112 - corrupt DICOM may raise anything
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
    except Exception as e:  # noqa: BLE001 - corrupt DICOM may raise anything
        raise Quarantine("unreadable", f"{path.name}: header value could not be parsed: {safe_message(e, ds)}") from None
    _check_object(meta, cfg, path.name)
    _check_pixel_format(ds, meta, path, raw)
    slope, intercept, fixes, notes = _rescale(ds, meta, cfg, path.name)
    stored = _decode_pixels(ds, meta, path.name)
    if cfg.fix_12bit_wrap and meta["bits_stored"] == 12 and meta["pixel_representation"] == 0 and intercept > -100:
        stored, intercept_fixed = fix_12bit_wrap(stored)
        fixes.append("rsna_12bit_wrap")
        notes.append(
            f"12-bit wrap-around fixed: stored -> (stored + 1000) mod 4096, RescaleIntercept {intercept:g} -> {intercept_fixed:g}"
        )
        intercept = intercept_fixed
    return SliceData(stored=stored, slope=slope, intercept=intercept, meta=meta, fixes=fixes, notes=notes)


def _check_object(meta: dict[str, Any], cfg: PrepConfig, name: str) -> None:
    """Quarantine a file whose file meta, SOP class or Modality says it is not a CT slice."""
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
    if meta["modality"].upper() not in cfg.allowed_modalities:
        raise Quarantine(
            "modality_not_allowed",
            f"{name}: (0008,0060) Modality={meta['modality']!r} not in allowed_modalities={list(cfg.allowed_modalities)}",
            meta,
        )


def _check_pixel_format(ds: pydicom.Dataset, meta: dict[str, Any], path: Path, raw: bytes | None) -> None:
    """Quarantine a file without (complete) pixel data, with several frames, not grayscale, or with
    an unusable geometry (sides 1..:data:`MAX_SIDE` pixels, 8/16/32 bits allocated)."""
    name = path.name
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
    spp = int_value(ds, "SamplesPerPixel", 1)
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


def _decode_pixels(ds: pydicom.Dataset, meta: dict[str, Any], name: str) -> np.ndarray:
    """The stored values, integer (rows, columns), native byte order; Quarantine ``truncated_pixel_data``
    (uncompressed data shorter than the geometry needs), ``unreadable`` or ``decode_error``."""
    rows, cols = meta["rows"], meta["cols"]
    ts = UID(meta["transfer_syntax"])
    if not ts.is_compressed:
        try:
            n_bytes = len(ds.PixelData)
        except Exception as e:  # noqa: BLE001 - corrupt DICOM may raise anything
            raise Quarantine("unreadable", f"{name}: (7FE0,0010) Pixel Data unreadable: {safe_message(e, ds)}", meta) from None
        need = rows * cols * meta["bits_allocated"] // 8
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
    except BaseException as e:  # noqa: BLE001 - decoder plugins can raise non-Exception errors (a Rust panic in pylibjpeg-rle)
        raise Quarantine("decode_error", f"{name}: transfer syntax {ts.name}: {safe_message(e, ds)}", meta) from None
    if stored.ndim != 2 or not np.issubdtype(stored.dtype, np.integer) or stored.shape != (rows, cols):
        raise Quarantine(
            "decode_error",
            f"{name}: decoded pixel array has shape {stored.shape}, dtype {stored.dtype}; header says {rows}x{cols}",
            meta,
        )
    if not stored.dtype.isnative:
        stored = stored.astype(stored.dtype.newbyteorder("="))  # big endian -> native, same values
    return stored
