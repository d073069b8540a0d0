"""The one scan of a data folder, shared by `medfed data inspect`, load_site and load_holdout.

`open_dataset` detects the layout, takes the folder's inventory
(safety.inventory: regular files inside it; every other entry is a skip with
its reason), lets the reader scan (each header checked against
max-image-pixels before anything is decoded), then applies the file rules
once more to the result, whatever the reader did: no record may use a path
that is not a regular file inside the folder, and every refused entry is
listed in `skipped` (the inventory's reason wins over a reader's vaguer one).
Inspect, the study's sites and the server's holdout all call it, so what
inspect reports usable is what a study uses.

With a cache_dir the result is cached as JSON (plain data, never pickle),
keyed on every file's stamp, the layout, the folder, `deep` and the pixel
limit; a cached entry whose content does not parse as a scan, or names a
file that is no longer a regular file inside the folder, is rebuilt.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

from study.data import cache
from study.data.base import DatasetReader, LoadOptions, rel
from study.data.readers import detect_reader
from study.data.safety import Inventory, file_problem, inventory
from study.data.types import PathLike, Record, Scan, Skip

_SCAN_FIELDS = {f.name for f in dataclasses.fields(Scan)}
_RECORD_KEYS = {"key", "paths", "patient_id", "labels", "institution", "meta"}


def open_dataset(
    root: PathLike,
    *,
    cache_dir: PathLike | None = None,
    deep: bool = False,
    options: LoadOptions | None = None,
) -> tuple[DatasetReader, Scan]:
    """Detect the layout and scan it (deep=True also decodes every image).

    options.max_image_pixels is the only option a scan depends on.
    """
    root = Path(root)
    options = options or LoadOptions()
    reader = detect_reader(root)
    found = inventory(root)
    if cache_dir is None:
        return reader, _scan(reader, root, found, deep, options)
    key = cache.fingerprint(
        found.files,
        "scan",
        reader.format,
        str(root.resolve()),
        deep,
        options.max_image_pixels,
        [(s.path, s.reason) for s in found.skipped],
    )
    name = f"scan-{reader.format}"
    scan = None
    value = cache.load_json(cache_dir, name, key)
    if value is not None:
        try:
            scan = scan_from_json(value, root, reader)
        except (ValueError, TypeError, KeyError, AttributeError):
            scan = None  # damaged or crafted: scan again
    if scan is None:
        scan = _scan(reader, root, found, deep, options)
        try:
            cache.store_json(cache_dir, name, key, scan_to_json(scan))
        except (TypeError, ValueError, OSError) as exc:
            warnings.warn(f"scan of {root} not cached: {exc}", RuntimeWarning, stacklevel=2)
    return reader, scan


def _scan(
    reader: DatasetReader, root: Path, found: Inventory, deep: bool, options: LoadOptions
) -> Scan:
    return enforce_file_rules(reader.scan(root, deep=deep, options=options), root, found)


def enforce_file_rules(scan: Scan, root: Path, found: Inventory) -> Scan:
    """Drop records that use a refused path; list every refused entry in skipped once."""
    root_real = os.path.realpath(root)
    refused = {s.path: s.reason for s in found.skipped}
    records: list[Record] = []
    dropped: list[Skip] = []
    for record in scan.records:
        problem = None
        for path in record.paths:
            reason = file_problem(path, root, root_real=root_real)
            if reason:
                problem = Skip(rel(path, root), reason)
                break
        if problem:
            dropped.append(problem)
        else:
            records.append(record)
    skipped: list[Skip] = []
    seen: set[tuple[str, str]] = set()
    for skip in [*scan.skipped, *dropped, *found.skipped]:
        item = Skip(skip.path, refused.get(skip.path, skip.reason))
        if (item.path, item.reason) not in seen:
            seen.add((item.path, item.reason))
            skipped.append(item)
    return dataclasses.replace(scan, records=records, skipped=skipped)


# ------------------------------------------------------------------ JSON form
def _is_plain(value: object) -> bool:
    """JSON-native data only: dict with str keys, list, str, int, float, bool, None."""
    if value is None or isinstance(value, (str, bool, int)):
        return True
    if isinstance(value, float):
        return True  # NaN and inf too: Python's json writes and reads them back
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return False


def scan_to_json(scan: Scan) -> dict:
    """A Scan as plain JSON data (tuples become lists, the frozenset a sorted list)."""
    out: dict = {
        "format": scan.format,
        "modality": scan.modality,
        "records": [
            {
                "key": r.key,
                "paths": list(r.paths),
                "patient_id": r.patient_id,
                "labels": list(r.labels),
                "institution": r.institution,
                "meta": r.meta,
            }
            for r in scan.records
        ],
        "skipped": [[s.path, s.reason] for s in scan.skipped],
        "partitions": scan.partitions,
        "test_patients": sorted(scan.test_patients) if scan.test_patients is not None else None,
    }
    for name in sorted(_SCAN_FIELDS - {"root", *out}):
        out[name] = getattr(scan, name)  # fields a reader adds (plain data, checked below)
    if not _is_plain(out):
        raise TypeError("scan holds values that are not plain JSON data")
    return out


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {type(value).__name__}")
    return value


def _texts(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    return tuple(_text(v) for v in value)


def scan_from_json(value: object, root: Path, reader: DatasetReader) -> Scan:
    """The Scan stored by scan_to_json; ValueError/TypeError for anything else.

    Every record path must still be a regular file inside root.
    """
    if not isinstance(value, dict) or set(value) != (_SCAN_FIELDS - {"root"}):
        raise ValueError("not a stored scan")
    if value["format"] != reader.format or value["modality"] != reader.modality:
        raise ValueError("stored scan is of another layout")
    root_real = os.path.realpath(root)
    records = []
    for item in value["records"]:
        if not isinstance(item, dict) or set(item) != _RECORD_KEYS:
            raise ValueError("not a stored record")
        meta = item["meta"]
        institution = item["institution"]
        if not isinstance(meta, dict) or not _is_plain(meta):
            raise TypeError("record meta is not plain data")
        if institution is not None:
            _text(institution)
        paths = _texts(item["paths"])
        if not paths or any(file_problem(p, root, root_real=root_real) for p in paths):
            raise ValueError("stored record names a file that is not usable now")
        records.append(
            Record(
                _text(item["key"]),
                paths,
                _text(item["patient_id"]),
                _texts(item["labels"]),
                institution,
                meta,
            )
        )
    skipped = []
    for item in value["skipped"]:
        path, reason = _texts(item)
        skipped.append(Skip(path, reason))
    partitions = value["partitions"]
    if partitions is not None:
        if not isinstance(partitions, dict):
            raise TypeError("partitions is not a mapping")
        partitions = {_text(k): _text(v) for k, v in partitions.items()}
    test_patients = value["test_patients"]
    if test_patients is not None:
        test_patients = frozenset(_texts(test_patients))
    extra = {}
    for name in _SCAN_FIELDS - {"root", "records", "skipped", "partitions", "test_patients"}:
        if name in ("format", "modality"):
            continue
        if not _is_plain(value[name]):
            raise TypeError(f"{name} is not plain data")
        extra[name] = value[name]
    return Scan(
        reader.format,
        reader.modality,
        root,
        records,
        skipped,
        partitions,
        test_patients,
        **extra,
    )
