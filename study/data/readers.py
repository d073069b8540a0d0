"""The one registry of dataset readers, and layout detection."""

from __future__ import annotations

import os
from pathlib import Path

from study.data.base import DatasetReader
from study.data.brats import BratsReader
from study.data.dicom import DicomReader
from study.data.nih import NihReader

# Order matters: the NIH and BraTS layouts are checked before the catch-all DICOM walk.
READERS: tuple[type[DatasetReader], ...] = (NihReader, BratsReader, DicomReader)


def list_formats() -> list[str]:
    return [r.format for r in READERS]


def detect_reader(root: str | os.PathLike) -> DatasetReader:
    """The reader for the layout under root; a clear error when none fits."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder (give the dataset's root folder)")
    if not any(p for p in root.iterdir() if not p.name.startswith(".")):
        raise ValueError(f"dataset folder {root} is empty")
    for reader in READERS:
        if reader.detect(root):
            return reader()
    raise ValueError(
        f"cannot find a suitable reader for {root}; the registered readers are "
        f"{', '.join(list_formats())} (NIH: Data_Entry_2017*.csv + images/; DICOM: *.dcm at any depth; "
        f"BraTS: <case>/<case>_t1.nii.gz ...)"
    )
