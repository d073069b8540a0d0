"""`sample_images`: image batches for the encryption benchmarks, from phantoms, a folder or package samples."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np

from study.data.base import LoadOptions
from study.data.preprocess import normalise_volume, rescale_bits, resize_stack
from study.data.types import dtype_for_bits

SOURCES = (
    "phantom-xray",
    "phantom-xray-dicom",
    "phantom-mri",
    "pydicom-samples",
    "nibabel-samples",
)


def pydicom_sample_files() -> list[Path]:
    """The DICOM test files installed inside pydicom (listed locally: no downloads)."""
    import pydicom.data

    folder = Path(pydicom.data.__file__).parent / "test_files"
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and (p.suffix.lower() == ".dcm" or p.suffix == "")
    )


def nibabel_sample_files() -> list[Path]:
    """The NIfTI test files installed inside nibabel."""
    import nibabel

    folder = Path(nibabel.__file__).parent / "tests" / "data"
    return sorted(p for p in folder.glob("*.nii*") if p.is_file())


def _common_bits(planes: list[tuple[np.ndarray, int]]) -> tuple[np.ndarray, int]:
    bits = max(b for _, b in planes)
    return np.stack([rescale_bits(p, b, bits) for p, b in planes]).astype(
        dtype_for_bits(bits)
    ), bits


def _from_pydicom(n: int, size: int) -> tuple[np.ndarray, int]:
    from study.data.dicom import read_dicom_plane

    planes = []
    for path in pydicom_sample_files():
        if len(planes) >= n:
            break
        try:
            plane, bits, _ = read_dicom_plane(path)
        except Exception:  # noqa: BLE001 - many samples are deliberately odd; keep the images only
            continue
        if min(plane.shape) < 8:
            continue
        planes.append((resize_stack(plane[None], size, bits=bits)[0], bits))
    if not planes:
        raise ValueError("no readable single-frame greyscale image among pydicom's sample files")
    images, bits = _common_bits(planes)
    return images[:, None], bits


def _from_nibabel(n: int, size: int) -> tuple[np.ndarray, int]:
    """4 channels per image: 4 adjacent axial slices (3D) or 4 volumes' middle slice (4D)."""
    import nibabel as nib

    items = []
    for path in nibabel_sample_files():
        try:
            data = np.asanyarray(nib.load(path).dataobj)
        except Exception:  # noqa: BLE001
            continue
        if data.ndim == 4 and data.shape[3] >= 4:
            planes = [data[:, :, data.shape[2] // 2, t] for t in range(4)]
        elif data.ndim == 3 and data.shape[2] >= 4 and min(data.shape[:2]) >= 8:
            mid = data.shape[2] // 2
            planes = [data[:, :, z] for z in range(mid - 2, mid + 2)]
        else:
            continue
        bits = 8 if data.dtype in (np.uint8, np.int8) else 16
        stack = normalise_volume(
            np.stack(planes).astype(np.float32) - float(np.min(planes)) + 1, bits
        )
        items.append(
            (
                resize_stack(np.ascontiguousarray(np.transpose(stack, (0, 2, 1))), size, bits=bits),
                bits,
            )
        )
        if len(items) >= n:
            break
    if not items:
        raise ValueError("no usable volume among nibabel's sample files")
    return _common_bits(items)


def _from_folder(root: Path, n: int, size: int, seed: int) -> tuple[np.ndarray, int]:
    from study.data.api import build_imageset, open_dataset

    reader, scan = open_dataset(root)
    records = list(scan.records)
    rng = np.random.default_rng([seed, 5])
    records = [records[i] for i in rng.permutation(len(records))]
    # x-ray: one image per record; MRI: up to 8 slices per subject
    keep = n if reader.modality == "xray" else max(1, math.ceil(n / 8))
    records = records[:keep]
    result = build_imageset(reader, records, image_size=size, options=LoadOptions(8))
    if len(result) == 0:
        raise ValueError(f"{root}: no readable images")
    return result.images[:n], result.bits


def sample_images(source: str, n: int, size: int, seed: int = 0) -> tuple[np.ndarray, int]:
    """(N, C, size, size) uint8/uint16 images and their bit depth, N <= n.

    source: "phantom-xray" (8-bit NIH PNG phantoms), "phantom-xray-dicom"
    (12-bit DICOM phantoms), "phantom-mri" (BraTS phantoms, C=4), a dataset
    folder of any supported layout, or "pydicom-samples" / "nibabel-samples"
    (the sample files installed with those packages; N is at most the number
    of readable images there). Images of mixed bit depth are brought to the
    highest one.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if source == "pydicom-samples":
        images, bits = _from_pydicom(n, size)
        return images, bits
    if source == "nibabel-samples":
        return _from_nibabel(n, size)
    if source in ("phantom-xray", "phantom-xray-dicom", "phantom-mri"):
        with tempfile.TemporaryDirectory(prefix="medfed-sample-") as tmp:
            if source == "phantom-mri":
                from study.data.phantom_mri import write_mri_phantoms

                write_mri_phantoms(
                    tmp, subjects=max(1, math.ceil(n / 8)), size=size, institutions=1, seed=seed
                )
            else:
                from study.data.phantom_xray import write_xray_phantoms

                fmt = "dicom" if source.endswith("dicom") else "png"
                write_xray_phantoms(
                    tmp, patients=n, size=size, institutions=1, seed=seed, image_format=fmt
                )
            return _from_folder(Path(tmp), n, size, seed)
    path = Path(os.path.expanduser(source))
    if path.is_dir():
        return _from_folder(path, n, size, seed)
    raise ValueError(
        f"unknown image source {source!r}; valid: {', '.join(SOURCES)} or a dataset folder"
    )
