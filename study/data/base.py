"""One reader per dataset layout behind one base class (after MONAI's image readers).

A reader `detect`s its layout under a root folder, `scan`s it into Records and
Skips (never stopping at the first bad file, never dropping one silently) and
`load`s one Record as task-ready arrays at the study's image size.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from study.data.safety import DEFAULT_MAX_IMAGE_PIXELS, check_limit, file_problem, open_text
from study.data.types import Record, Scan


@dataclass(frozen=True)
class LoadOptions:
    """How files become task samples.

    max_slices_per_subject, tumour_only: MRI slice selection (ignored for x-rays).
    max_image_pixels: the study key `max-image-pixels`, default 2**27 = 134217728:
    the largest image a reader decodes, in pixels of an x-ray plane (rows x
    columns x frames x samples for DICOM) or voxels of an MRI volume. Every
    file's header is checked against it before anything is allocated; a file
    claiming more is skipped with a reason naming both numbers.
    """

    max_slices_per_subject: int | None = 8
    tumour_only: bool = False
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS

    def __post_init__(self) -> None:
        check_limit(self.max_image_pixels)


class DatasetReader(ABC):
    """Base of the readers: NIH ChestX-ray14, DICOM folders, BraTS."""

    format: ClassVar[str]
    modality: ClassVar[str]
    channels: ClassVar[int]

    @classmethod
    @abstractmethod
    def detect(cls, root: Path) -> bool:
        """True when root looks like this reader's layout (cheap: names and headers only)."""

    @abstractmethod
    def scan(self, root: Path, *, deep: bool = False, options: LoadOptions | None = None) -> Scan:
        """Find every record under root; deep=True also decodes all pixel data.

        Only files that pass safety.file_problem are opened, and every header is
        checked against options.max_image_pixels before any pixel is decoded.
        """

    @abstractmethod
    def load(
        self, record: Record, *, image_size: int, options: LoadOptions
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """(images (k, C, S, S), targets, bits) for one record; k = 1 for x-rays."""


def record_meta(record: Record, **extra) -> dict:
    """The metadata every reader returns with its pixels."""
    return {
        "patient": record.patient_id,
        "labels": list(record.labels),
        "institution": record.institution,
        **record.meta,
        **extra,
    }


def rel(path: Path | str, root: Path) -> str:
    """Path relative to root when possible (for messages and skip lists)."""
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def normalise_patient_id(value: str) -> str:
    """'00012' and '12' name the same NIH patient; other ids are kept as written."""
    text = str(value).strip()
    return str(int(text)) if text.isdigit() else text


def read_partition_csv(path: Path, known_subjects: set[str], root: Path):
    """FeTS-style Partition_ID,Subject_ID -> ({subject: partition}, [Skip...])."""
    import csv

    from study.data.types import Skip

    mapping: dict[str, str] = {}
    skipped: list[Skip] = []
    problem = file_problem(path, root)
    if problem:
        return None, [Skip(rel(path, root), problem)]
    with open_text(path) as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip() for f in (reader.fieldnames or [])]
        missing = [c for c in ("Partition_ID", "Subject_ID") if c not in fields]
        if missing:
            return None, [Skip(rel(path, root), f"missing column(s) {missing}; found {fields}")]
        for line, row in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            subject = normalise_patient_id(row["Subject_ID"])
            if subject not in known_subjects:
                skipped.append(
                    Skip(
                        f"{rel(path, root)}:{line}", f"names unknown subject {row['Subject_ID']!r}"
                    )
                )
                continue
            mapping[subject] = row["Partition_ID"]
    return mapping, skipped
