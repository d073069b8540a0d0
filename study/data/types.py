"""Fixed-field results shared by the readers, partitions and loaders."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# The 14 NIH ChestX-ray14 findings, in the fixed order of the multi-hot targets.
FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NO_FINDING = "No Finding"
MRI_REGIONS: tuple[str, ...] = ("ET", "TC", "WT")
MRI_MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")

PathLike = str | os.PathLike


@dataclass(frozen=True)
class ImageSet:
    """Decoded, resized images of one split, with their targets.

    images: (N, C, H, W) uint8 or uint16 at the study's image size; `bits` is the
    meaningful bit depth (12-bit data lives in uint16). targets: x-ray (N, 14)
    float32 multi-hot in FINDINGS order; MRI (N, 3, H, W) uint8 masks ET, TC, WT.
    """

    images: np.ndarray
    bits: int
    targets: np.ndarray
    patient_ids: tuple[str, ...]
    modality: str

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass(frozen=True)
class SiteShard:
    """One site's data: training part and a held-out part (split by patient)."""

    train: ImageSet
    test: ImageSet


@dataclass(frozen=True)
class Record:
    """One readable item found by a scan: an x-ray image or a BraTS case."""

    key: str  # unique within the dataset: image file name, relative path or subject id
    paths: tuple[str, ...]  # files it is read from (BraTS: t1, t1ce, t2, flair[, seg])
    patient_id: str
    labels: tuple[str, ...]  # x-ray findings (empty = No Finding); MRI regions present
    institution: str | None = None
    meta: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Skip:
    """A file the scan could not use, and why."""

    path: str
    reason: str


@dataclass
class Scan:
    """What a reader found under a dataset root."""

    format: str  # "nih-cxr14" | "dicom" | "brats"
    modality: str  # "xray" | "mri"
    root: Path
    records: list[Record]
    skipped: list[Skip]
    partitions: dict[str, str] | None = None  # patient id -> partition id (natural split)
    test_patients: frozenset[str] | None = None  # official test list (server holdout)
    # NIH ChestX-ray14 with the full CSV: {archive part: {images, found, missing}}
    archives: dict[str, dict[str, int]] | None = None

    @property
    def patients(self) -> list[str]:
        return sorted({r.patient_id for r in self.records})


def dtype_for_bits(bits: int) -> np.dtype:
    """uint8 for up to 8 bits, uint16 up to 16."""
    if not 1 <= bits <= 16:
        raise ValueError(f"bit depth {bits} is outside 1..16")
    return np.dtype(np.uint8) if bits <= 8 else np.dtype(np.uint16)


def empty_imageset(modality: str, channels: int, size: int, bits: int) -> ImageSet:
    """A zero-length ImageSet with the right shapes (for sites or splits with no patients)."""
    dtype = dtype_for_bits(bits)
    if modality == "xray":
        targets = np.zeros((0, len(FINDINGS)), np.float32)
    else:
        targets = np.zeros((0, len(MRI_REGIONS), size, size), np.uint8)
    return ImageSet(np.zeros((0, channels, size, size), dtype), bits, targets, (), modality)
