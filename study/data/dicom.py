"""DICOM X-ray folders (CR/DX, any depth of subfolders) through pydicom.

Pixel values: the modality LUT (RescaleSlope/Intercept) is applied; when the
result leaves [0, 2^BitsStored - 1] it is shifted by the lowest value the
rescale can produce and the bit depth grows as needed (up to 16).
MONOCHROME1 is inverted so that bright always means dense. 8- to 16-bit data
keep their depth (12-bit lives in uint16 with bits=12).

Labels come from labels.csv at the root (File or SOPInstanceUID, and Finding
Labels) or, failing that, from a tag holding NIH-style label text
(ImageComments by default). Images with neither are scanned as unlabelled.

Hostile files: only regular files inside the folder are opened (safety.py).
Rows x Columns x NumberOfFrames x SamplesPerPixel is read from the header
(stop_before_pixels) and checked against max-image-pixels before pixel data
are read or decoded, for native and every compressed transfer syntax alike; a
deflated dataset is first inflated in a counting stream with a bound, because
pydicom inflates it whole before any header can be seen.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import warnings
import zlib
from datetime import date
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid

from study.data.base import (
    DatasetReader,
    LoadOptions,
    normalise_patient_id,
    read_partition_csv,
    record_meta,
    rel,
)
from study.data.preprocess import multi_hot, parse_findings, resize_plane
from study.data.safety import (
    DEFAULT_MAX_IMAGE_PIXELS,
    MAX_HEADER_BYTES,
    file_problem,
    inventory,
    open_regular,
    open_text,
    read_head,
    too_large,
)
from study.data.types import Record, Scan, Skip, dtype_for_bits

LABELS_CSV = "labels.csv"
PARTITION_CSV = "partitioning.csv"
SIDECARS = (LABELS_CSV, PARTITION_CSV)
CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage, For Presentation


def has_preamble(path: Path) -> bool:
    """True for a regular file with the 128-byte preamble and 'DICM' (FIFOs are never opened)."""
    try:
        head = read_head(path, 132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


class DicomRefused(ValueError):
    """A DICOM file refused before its pixel data are read or decoded, with the reason."""


def _deflate_problem(fh: BinaryIO, max_pixels: int) -> str | None:
    """For Deflated Explicit VR Little Endian: None if the dataset inflates within bounds.

    pydicom inflates a deflated dataset whole, before any header can be
    checked, so a small file could inflate to gigabytes: count the inflated
    bytes here (1 MiB at a time, nothing kept) against what an image within
    max_pixels needs (2 bytes a sample) plus MAX_HEADER_BYTES of other elements.
    """
    start = fh.tell()
    try:
        pydicom.filereader.read_preamble(fh, False)
        meta = pydicom.filereader._read_file_meta_info(fh)  # stable since pydicom 1.x
    except Exception:  # noqa: BLE001 - not our concern here: dcmread words the error
        fh.seek(start)
        return None
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        fh.seek(start)
        return None
    bound = 2 * max_pixels + MAX_HEADER_BYTES
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    try:
        while total <= bound and not inflater.eof:
            chunk = inflater.unconsumed_tail or fh.read(1 << 16)
            if not chunk:
                break
            total += len(inflater.decompress(chunk, min(1 << 20, bound + 1 - total)))
    except zlib.error as exc:
        return f"corrupt deflated dataset: {exc}"
    fh.seek(start)
    if total > bound:
        return (
            f"image too large: deflated dataset inflates to more than {bound} bytes "
            f"(2 bytes x max-image-pixels {max_pixels} + {MAX_HEADER_BYTES} header bytes); "
            "skipped before inflating it"
        )
    return None


def pixel_limit_problem(ds: Dataset, max_pixels: int) -> str | None:
    """Rows x Columns x NumberOfFrames x SamplesPerPixel from the header against max_pixels."""
    if "Rows" not in ds and "Columns" not in ds:
        return None  # no image claimed (reports, plans): the pixel-data check decides
    try:
        dims = (
            int(ds.get("Rows") or 0),
            int(ds.get("Columns") or 0),
            int(ds.get("NumberOfFrames") or 1),
            int(ds.get("SamplesPerPixel") or 1),
        )
    except (TypeError, ValueError) as exc:
        return f"unreadable image size in the header: {exc}"
    if min(dims) < 1:
        return (
            f"header claims an empty or negative image size {dims} (rows, columns, frames, samples)"
        )
    return too_large(dims, max_pixels, detail=" (rows x columns x frames x samples per pixel)")


def read_dicom_header(fh: BinaryIO, max_pixels: int) -> Dataset:
    """The dataset up to its pixel data (stop_before_pixels), after the size checks.

    Raises DicomRefused (a deflated dataset too large to inflate, or an image
    larger than max_pixels), whatever the transfer syntax; pydicom's own
    errors for a damaged file pass through. fh is left at its start.
    """
    start = fh.tell()
    problem = _deflate_problem(fh, max_pixels)
    if problem:
        raise DicomRefused(problem)
    ds = pydicom.dcmread(fh, stop_before_pixels=True)
    fh.seek(start)
    problem = pixel_limit_problem(ds, max_pixels)
    if problem:
        raise DicomRefused(problem)
    return ds


def missing_plugin_message(transfer_syntax) -> str | None:
    """None when pydicom can decode this transfer syntax, else what to install."""
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(transfer_syntax)
    except NotImplementedError:
        return f"transfer syntax {transfer_syntax} ({getattr(transfer_syntax, 'name', '?')}) has no pydicom decoder"
    if decoder.is_available:
        return None
    plugins = "; ".join(decoder.missing_dependencies) or "a decoder plugin"
    return f"compressed pixel data ({transfer_syntax.name}) needs a pydicom decoder plugin; install one of: {plugins}"


def _spacing(ds: Dataset) -> list[float] | None:
    for keyword in ("ImagerPixelSpacing", "PixelSpacing"):
        value = ds.get(keyword)
        if value is not None and len(value) == 2:
            return [float(value[1]), float(value[0])]  # (x, y) as NIH writes it
    return None


def pixels_to_unsigned(ds: Dataset, arr: np.ndarray) -> tuple[np.ndarray, int]:
    """Apply rescale and MONOCHROME1 inversion; returns (uint8|uint16 plane, bits)."""
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    values = arr.astype(np.float64) * slope + intercept
    stored_lo, stored_hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    lo = min(stored_lo * slope + intercept, stored_hi * slope + intercept)
    hi = max(stored_lo * slope + intercept, stored_hi * slope + intercept)
    if values.min(initial=0) < 0 or values.max(initial=0) > 2**bits - 1:
        span = hi - lo
        bits = min(16, max(bits, math.ceil(math.log2(span + 1))))
        values = values - lo
        if span > 2**bits - 1:
            values = values * ((2**bits - 1) / span)
    if bits > 16:
        raise ValueError(f"BitsStored {bits} is over 16 (x-ray folders hold 8- to 16-bit images)")
    maxv = 2**bits - 1
    out = np.clip(np.rint(values), 0, maxv)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        out = maxv - out
    if bits < 8:  # 1- to 7-bit data (masks, old scanners) are stretched to 8 bits
        out = np.rint(out * (255 / maxv))
        bits = 8
    return out.astype(dtype_for_bits(bits)), bits


def read_dicom_plane(
    path: Path, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> tuple[np.ndarray, int, Dataset]:
    """Decode one single-frame greyscale DICOM image -> (plane, bits, dataset).

    The header is checked against max_pixels (and the frame count against one)
    before pixel data are read, for native and every compressed transfer syntax.
    """
    try:
        with open_regular(path) as fh:
            header = read_dicom_header(fh, max_pixels)
            frames = int(header.get("NumberOfFrames") or 1)
            samples = int(header.get("SamplesPerPixel") or 1)
            if frames != 1 or samples != 1:
                raise DicomRefused(
                    f"expected one greyscale frame, header claims {frames} frame(s) of "
                    f"{samples} sample(s) per pixel"
                )
            ds = pydicom.dcmread(fh)
    except InvalidDicomError as exc:
        raise ValueError(f"{path}: not a DICOM file (no 'DICM' preamble): {exc}") from exc
    except DicomRefused as exc:
        raise ValueError(f"{path}: {exc}") from exc
    if "PixelData" not in ds:
        raise ValueError(f"{path}: no pixel data ({_sop_name(ds)})")
    tsyntax = ds.file_meta.get("TransferSyntaxUID")
    if tsyntax is not None and tsyntax.is_compressed:
        problem = missing_plugin_message(tsyntax)
        if problem:
            raise RuntimeError(f"{path}: {problem}")
    try:
        arr = ds.pixel_array
    except Exception as exc:  # pydicom raises several types for damaged pixel data
        raise ValueError(f"{path}: cannot decode pixel data: {type(exc).__name__}: {exc}") from exc
    if arr.ndim != 2:
        raise ValueError(
            f"{path}: expected one greyscale frame, got pixel array of shape {arr.shape}"
        )
    plane, bits = pixels_to_unsigned(ds, arr)
    return plane, bits, ds


def _sop_name(ds: Dataset) -> str:
    sop = ds.get("SOPClassUID")
    name = getattr(sop, "name", str(sop)) if sop is not None else "unknown SOP class"
    return f"{name}, modality {ds.get('Modality', '?')}"


class DicomReader(DatasetReader):
    format = "dicom"
    modality = "xray"
    channels = 1

    def __init__(self, label_tag: str = "ImageComments") -> None:
        self.label_tag = label_tag

    @classmethod
    def detect(cls, root: Path) -> bool:
        root_real = os.path.realpath(root)
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                path = Path(dirpath) / name
                if name.lower().endswith(".dcm") or name == "DICOMDIR":
                    return True
                if file_problem(path, root, root_real=root_real) is None and has_preamble(path):
                    return True
        return False

    def scan(self, root: Path, *, deep: bool = False, options: LoadOptions | None = None) -> Scan:
        root = Path(root)
        max_pixels = (options or LoadOptions()).max_image_pixels
        found = inventory(root)
        skipped: list[Skip] = list(found.skipped)
        csv_labels = self._read_labels_csv(root, skipped)
        records: list[Record] = []
        used_rows: set[str] = set()
        for path in found.files:
            where = rel(path, root)
            if path.parent == root and path.name in SIDECARS:
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter(
                        "ignore"
                    )  # pydicom warns on every odd value; we report per file
                    record_or_reason = self._scan_file(
                        path, root, csv_labels, used_rows, deep, max_pixels
                    )
            except Exception as exc:  # noqa: BLE001 - one bad file must not stop the scan
                record_or_reason = f"unreadable DICOM: {type(exc).__name__}: {exc}"
            if isinstance(record_or_reason, str):
                skipped.append(Skip(where, record_or_reason))
            else:
                records.append(record_or_reason)
        if csv_labels is not None:
            for key in sorted(set(csv_labels) - used_rows):
                if not key.startswith("uid:"):
                    skipped.append(
                        Skip(key, f"listed in {LABELS_CSV} but the file is missing or unreadable")
                    )
        partitions = None
        if (root / PARTITION_CSV).is_file():
            partitions, more = read_partition_csv(
                root / PARTITION_CSV, {r.patient_id for r in records}, root
            )
            skipped.extend(more)
        return Scan(self.format, self.modality, root, records, skipped, partitions, None)

    def _read_labels_csv(
        self, root: Path, skipped: list[Skip]
    ) -> dict[str, tuple[str, ...]] | None:
        path = root / LABELS_CSV
        if not os.path.lexists(path):
            return None
        problem = file_problem(path, root)
        if problem:
            skipped.append(Skip(LABELS_CSV, problem))
            return None
        out: dict[str, tuple[str, ...]] = {}
        with open_text(path) as fh:
            reader = csv.DictReader(fh)
            fields = [f.strip() for f in reader.fieldnames or []]
            key_col = next(
                (c for c in ("File", "SOPInstanceUID", "Image Index") if c in fields), None
            )
            if key_col is None or "Finding Labels" not in fields:
                raise ValueError(
                    f"{path}: missing column(s): needs Finding Labels and one of File, SOPInstanceUID, "
                    f"Image Index; found {fields}"
                )
            for line, row in enumerate(reader, start=2):
                row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
                try:
                    labels = parse_findings(row["Finding Labels"], source=f"{LABELS_CSV}:{line}")
                except ValueError as exc:
                    skipped.append(Skip(f"{LABELS_CSV}:{line}", str(exc)))
                    continue
                key = row[key_col]
                out[f"uid:{key}" if key_col == "SOPInstanceUID" else key] = labels
        return out

    def _scan_file(
        self, path: Path, root: Path, csv_labels, used_rows: set[str], deep: bool, max_pixels: int
    ):
        where = rel(path, root)
        if not has_preamble(path):
            return "not a DICOM Part 10 file (no 128-byte preamble with 'DICM')"
        try:
            with open_regular(path) as fh:
                ds = read_dicom_header(fh, max_pixels)
                full = self._deferred(fh)
        except DicomRefused as exc:
            return str(exc)
        except Exception as exc:  # noqa: BLE001 - corrupt headers raise many exception types
            return f"corrupt DICOM header: {type(exc).__name__}: {exc}"
        if full is None or "PixelData" not in full:
            if full is None and "Rows" in ds:
                return "truncated or damaged pixel data (the file ends inside its elements)"
            return f"no pixel data ({_sop_name(ds)})"
        photometric = str(ds.get("PhotometricInterpretation", "")).upper()
        if photometric not in ("MONOCHROME1", "MONOCHROME2"):
            return f"not a greyscale image (PhotometricInterpretation {photometric or 'missing'})"
        stored_bits = int(ds.get("BitsStored", 0) or 0)
        if stored_bits > 16:
            return f"BitsStored {stored_bits} is over 16 (x-ray folders hold 8- to 16-bit images)"
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames != 1:
            return f"multi-frame image ({frames} frames); x-ray folders hold one frame per file"
        tsyntax = ds.file_meta.get("TransferSyntaxUID")
        if tsyntax is not None and tsyntax.is_compressed:
            problem = missing_plugin_message(tsyntax)
            if problem:
                return problem
        elif not self._native_length_ok(path, ds, full):
            return "truncated pixel data (file shorter than Rows x Columns x BitsAllocated)"
        if deep:
            try:
                read_dicom_plane(path, max_pixels=max_pixels)
            except Exception as exc:  # noqa: BLE001 - every decode failure becomes a skip
                return str(exc).replace(f"{path}: ", "")
        labels, labelled = (), False
        uid = str(ds.get("SOPInstanceUID", ""))
        if csv_labels is not None:
            for key in (path.relative_to(root).as_posix(), f"uid:{uid}", path.name):
                if key in csv_labels:
                    labels, labelled = csv_labels[key], True
                    used_rows.add(key)
                    break
        if not labelled and self.label_tag and ds.get(self.label_tag):
            # free text in the tag is not a label: the image stays unlabelled
            with contextlib.suppress(ValueError):
                labels, labelled = parse_findings(str(ds.get(self.label_tag)), source=where), True
        patient = normalise_patient_id(str(ds.get("PatientID", "")).strip()) or f"anon:{where}"
        institution = str(ds.get("InstitutionName", "")).strip() or None
        meta = {
            "labelled": labelled,
            "bits": int(ds.get("BitsStored", 0) or 0),
            "spacing": _spacing(ds),
            "modality": str(ds.get("Modality", "")),
            "photometric": photometric,
            "transfer_syntax": str(tsyntax) if tsyntax else None,
            "sop_instance_uid": uid,
            "size": [int(ds.get("Columns", 0)), int(ds.get("Rows", 0))],
        }
        return Record(where, (str(path),), patient, labels, institution, meta)

    @staticmethod
    def _deferred(fh: BinaryIO) -> Dataset | None:
        """The whole dataset with values over 1 KB left unread (their length and offset kept).

        stop_before_pixels drops the PixelData element itself; this read finds it
        and its length without loading native pixel data. None when it fails.
        """
        try:
            return pydicom.dcmread(fh, defer_size=1024)
        except Exception:  # noqa: BLE001
            return None

    @staticmethod
    def _native_length_ok(path: Path, ds: Dataset, full: Dataset) -> bool:
        """Uncompressed pixel data must hold Rows x Columns x BitsAllocated and fit in the file."""
        try:
            elem = full.get_item("PixelData", keep_deferred=True)
            expected = (
                int(ds.Rows)
                * int(ds.Columns)
                * int(ds.get("SamplesPerPixel", 1))
                * int(ds.BitsAllocated)
                // 8
            )
        except Exception:  # noqa: BLE001
            return False
        value = getattr(elem, "value", None)
        if value is not None:  # read already (small element): its real length
            return len(value) >= expected
        length, tell = getattr(elem, "length", None), getattr(elem, "value_tell", None)
        if length is None or tell is None:
            return True
        return length >= expected and tell + length <= os.path.getsize(path)

    def read(self, record: Record):
        plane, bits, _ = read_dicom_plane(Path(record.paths[0]))
        return plane, record_meta(record, bits=bits)

    def load(self, record: Record, *, image_size: int, options: LoadOptions):
        plane, bits, _ = read_dicom_plane(
            Path(record.paths[0]), max_pixels=options.max_image_pixels
        )
        image = resize_plane(plane, image_size, bits=bits)[None, None]
        return image, multi_hot(record.labels)[None], bits


def write_xray_dicom(
    path: Path,
    value: np.ndarray,
    *,
    bits: int,
    monochrome1: bool = False,
    intercept: int = 0,
    modality: str = "DX",
    patient_id: str = "00000001",
    institution: str = "Hospital-A",
    spacing_mm: float = 0.2,
    uid_seed: str = "0",
    age: int = 50,
    sex: str = "O",
    view: str = "PA",
    comments: str = "",
) -> None:
    """Write a valid CR/DX object from a [0, 1] image (bright = dense), deterministic UIDs."""
    # With a negative intercept, stored = shown - intercept needs headroom at the top of
    # the stored range: values use 2^bits - 1 - |intercept| levels (offset upwards when
    # MONOCHROME1 flips them), so every stored value fits in BitsStored.
    headroom = max(0, -intercept)
    full = 2**bits - 1
    shown = np.rint(np.clip(value, 0, 1) * (full - headroom)).astype(np.int64)
    if monochrome1:
        shown = full - (shown + headroom)  # the reader inverts over the full range
    stored = shown - intercept  # the reader's stored * 1 + intercept gives `shown` back
    dtype = np.uint8 if bits <= 8 else np.uint16
    sop_class = CR_STORAGE if modality == "CR" else DX_STORAGE
    uid = lambda part: generate_uid(entropy_srcs=[uid_seed, part])  # noqa: E731
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = uid("sop")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = uid("study")
    ds.SeriesInstanceUID = uid("series")
    ds.Modality = modality
    ds.PatientID = patient_id
    ds.PatientName = f"Phantom^{patient_id}"
    ds.PatientAge = f"{age:03d}Y"
    ds.PatientSex = sex
    ds.StudyDate = date(2020, 1, 1).strftime("%Y%m%d")
    ds.InstitutionName = institution
    ds.Manufacturer = "medfed phantom"
    ds.ViewPosition = view
    ds.BodyPartExamined = "CHEST"
    ds.ImageComments = comments
    ds.ImagerPixelSpacing = [f"{spacing_mm:.4f}", f"{spacing_mm:.4f}"]
    ds.PixelSpacing = [f"{spacing_mm:.4f}", f"{spacing_mm:.4f}"]
    ds.Rows, ds.Columns = value.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.RescaleSlope = "1"
    ds.RescaleIntercept = str(intercept)
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "INVERSE" if monochrome1 else "IDENTITY"
    ds.PixelData = stored.astype(dtype).tobytes()
    ds.save_as(path, enforce_file_format=True)
