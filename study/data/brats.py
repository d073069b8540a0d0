"""BraTS 2020 / 2021 layouts: <case>/<case>_{t1,t1ce,t2,flair,seg}.nii[.gz] through nibabel.

A case is complete when all four modalities are readable with one shape, and
it has a seg file unless the folder has none at all (validation data). The
four modalities become the channels of axial 2D slices; labels 0/1/2/4 become
ET/TC/WT masks; each volume is normalised on its own (robust percentiles of
brain voxels) at its original bit depth (8 for uint8 data, else 16).

Hostile files: every modality file must be a regular file inside the data
folder (safety.py), and its fixed header (read alone, decompressing only its
first bytes for .nii.gz) must claim at most max-image-pixels voxels and no
more than MAX_HEADER_BYTES of extensions, before nibabel reads anything else.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np

from study.data.base import DatasetReader, LoadOptions, read_partition_csv, record_meta, rel
from study.data.preprocess import brats_regions, normalise_volume, resize_stack
from study.data.safety import (
    DEFAULT_MAX_IMAGE_PIXELS,
    MAX_HEADER_BYTES,
    file_problem,
    open_regular,
    too_large,
)
from study.data.types import MRI_MODALITIES, MRI_REGIONS, Record, Scan, Skip

PARTITION_CSVS = ("partitioning.csv", "partitioning_1.csv", "partitioning_2.csv")
SUFFIXES = (".nii.gz", ".nii")


def _case_files(case: Path) -> dict[str, Path]:
    """modality (t1, t1ce, t2, flair, seg) -> file, matched on <anything>_<modality>.nii[.gz]."""
    found: dict[str, Path] = {}
    for path in sorted(case.iterdir()):
        name = path.name.lower()
        for suffix in SUFFIXES:
            if name.endswith(suffix):
                stem = name[: -len(suffix)]
                mod = stem.rsplit("_", 1)[-1]
                if mod in (*MRI_MODALITIES, "seg"):
                    found.setdefault(mod, path)
                break
    return found


def _is_case(folder: Path) -> bool:
    try:
        return folder.is_dir() and any(m in _case_files(folder) for m in MRI_MODALITIES)
    except OSError:
        return False


def find_cases(root: Path) -> list[Path]:
    """Case folders directly under root, or one level down (MICCAI_BraTS..._TrainingData/)."""
    children = [p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    cases = [p for p in children if _is_case(p)]
    if cases:
        return cases
    return [q for p in children for q in sorted(p.iterdir()) if _is_case(q)]


def _bits_for(dtype: np.dtype) -> int:
    return 8 if np.dtype(dtype) in (np.uint8, np.int8) else 16


class NiftiRefused(ValueError):
    """A NIfTI file refused from its header alone, with the reason."""


def nifti_header(path: Path, max_voxels: int):
    """nibabel's header parsed from the file's first bytes, after the size checks.

    Only the fixed header (348 bytes NIfTI-1, 540 NIfTI-2) is read, and
    decompressed for .nii.gz, so a header claiming 2000^3 voxels costs 540
    bytes, not 16 GB. Raises NiftiRefused when the volume (product of all
    dimensions) is over max_voxels, or when the voxel data would start more than
    MAX_HEADER_BYTES after the header (nibabel reads every extension before it).
    """
    with open_regular(path) as fh:
        if path.name.lower().endswith(".gz"):
            with gzip.GzipFile(fileobj=fh, mode="rb") as stream:
                raw = stream.read(540)
        else:
            raw = fh.read(540)
    header = None
    for klass, size in ((nib.Nifti1Header, 348), (nib.Nifti2Header, 540)):
        for order, byteorder in (("<", "little"), (">", "big")):
            if len(raw) >= size and int.from_bytes(raw[:4], byteorder, signed=True) == size:
                header = klass(raw[:size], endianness=order, check=True)
                break
        if header is not None:
            break
    if header is None:
        raise NiftiRefused(
            f"not a NIfTI-1 or NIfTI-2 header ({len(raw)} header bytes, sizeof_hdr "
            f"{int.from_bytes(raw[:4], 'little', signed=True) if len(raw) >= 4 else '?'})"
        )
    shape = tuple(int(d) for d in header.get_data_shape())
    problem = too_large(shape, max_voxels, unit="voxels", detail=f" {header.get_data_dtype()}")
    if problem:
        raise NiftiRefused(problem)
    offset = int(header.get_data_offset())
    if offset > size + 4 + MAX_HEADER_BYTES:
        raise NiftiRefused(
            f"NIfTI header puts the voxels at byte {offset}: extensions over "
            f"{MAX_HEADER_BYTES} bytes are not read"
        )
    return header


def load_volume(
    path: Path, *, max_voxels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> tuple[np.ndarray, nib.Nifti1Image]:
    try:
        nifti_header(path, max_voxels)
    except NiftiRefused as exc:
        raise ValueError(f"{path}: {exc}") from exc
    except Exception as exc:  # gzip, nibabel and the OS raise many types for damaged files
        raise ValueError(f"{path}: cannot read NIfTI: {type(exc).__name__}: {exc}") from exc
    try:
        image = nib.load(path)
        data = np.asanyarray(image.dataobj)
    except Exception as exc:  # nibabel and gzip raise many types for damaged files
        raise ValueError(f"{path}: cannot read NIfTI: {type(exc).__name__}: {exc}") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3D volume, got shape {data.shape}")
    return data, image


def _header_problem(
    path: Path, max_voxels: int
) -> tuple[tuple[int, ...] | None, str | None, object]:
    """(shape, problem, header) from the header alone; catches bombs and truncated .nii files."""
    try:
        nifti_header(path, max_voxels)
    except NiftiRefused as exc:
        return None, str(exc), None
    except Exception as exc:  # noqa: BLE001
        return None, f"cannot read NIfTI header: {type(exc).__name__}: {exc}", None
    try:
        image = nib.load(path)
    except Exception as exc:  # noqa: BLE001
        return None, f"cannot read NIfTI header: {type(exc).__name__}: {exc}", None
    shape = tuple(int(s) for s in image.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        return shape, f"expected a 3D volume, got shape {shape}", image.header
    if not str(path).endswith(".gz"):
        need = (
            int(image.header.get_data_offset())
            + int(np.prod(shape)) * image.get_data_dtype().itemsize
        )
        if os.path.getsize(path) < need:
            return (
                shape,
                f"truncated NIfTI: {os.path.getsize(path)} bytes, header needs {need}",
                image.header,
            )
    return shape, None, image.header


class BratsReader(DatasetReader):
    format = "brats"
    modality = "mri"
    channels = 4

    @classmethod
    def detect(cls, root: Path) -> bool:
        try:
            return bool(find_cases(root))
        except OSError:
            return False

    def scan(self, root: Path, *, deep: bool = False, options: LoadOptions | None = None) -> Scan:
        root = Path(root)
        max_voxels = (options or LoadOptions()).max_image_pixels
        cases = find_cases(root)
        any_seg = any("seg" in _case_files(c) for c in cases)
        records: list[Record] = []
        skipped: list[Skip] = []
        for case in cases:
            result = self._scan_case(case, root, any_seg, deep, max_voxels)
            if isinstance(result, Skip):
                skipped.append(result)
            else:
                records.append(result)
        partitions = None
        for name in PARTITION_CSVS:
            if os.path.lexists(root / name):
                partitions, more = read_partition_csv(root / name, {c.name for c in cases}, root)
                skipped.extend(more)
                break
        if partitions:
            records = [
                Record(r.key, r.paths, r.patient_id, r.labels, partitions.get(r.patient_id), r.meta)
                for r in records
            ]
        return Scan(self.format, self.modality, root, records, skipped, partitions, None)

    def _scan_case(
        self, case: Path, root: Path, any_seg: bool, deep: bool, max_voxels: int
    ) -> Record | Skip:
        files = _case_files(case)
        where = rel(case, root)
        missing = [m for m in MRI_MODALITIES if m not in files]
        if any_seg and "seg" not in files:
            missing.append("seg")
        if missing:
            return Skip(
                where,
                f"missing modality file(s): {', '.join(missing)} (expected {case.name}_<modality>.nii.gz)",
            )
        wanted = [*MRI_MODALITIES, *(["seg"] if "seg" in files else [])]
        shapes = {}
        headers = {}
        for mod in wanted:
            problem = file_problem(files[mod], root)
            if problem:
                return Skip(rel(files[mod], root), problem)
        for mod in wanted:
            shape, problem, headers[mod] = _header_problem(files[mod], max_voxels)
            if problem:
                return Skip(rel(files[mod], root), problem)
            shapes[mod] = shape
        if len(set(shapes.values())) != 1:
            detail = ", ".join(f"{m} {s}" for m, s in shapes.items())
            return Skip(where, f"modality shapes differ: {detail}")
        labels: tuple[str, ...] = ()
        if "seg" in files:
            try:
                seg, _ = load_volume(files["seg"], max_voxels=max_voxels)
            except ValueError as exc:
                return Skip(rel(files["seg"], root), str(exc).replace(f"{files['seg']}: ", ""))
            values = set(np.unique(seg).tolist())
            if not values <= {0, 1, 2, 3, 4}:
                return Skip(
                    rel(files["seg"], root),
                    f"unexpected labels {sorted(values)} (BraTS uses 0, 1, 2, 4)",
                )
            present = brats_regions(seg).reshape(3, -1).any(axis=1)
            labels = tuple(r for r, p in zip(MRI_REGIONS, present, strict=True) if p)
        if deep:
            for mod in MRI_MODALITIES:
                try:
                    load_volume(files[mod], max_voxels=max_voxels)
                except ValueError as exc:
                    return Skip(rel(files[mod], root), str(exc).replace(f"{files[mod]}: ", ""))
        header = headers["flair"]
        meta = {
            "shape": list(shapes["flair"]),
            "spacing": [float(z) for z in header.get_zooms()[:3]],
            "bits": _bits_for(header.get_data_dtype()),
            "has_seg": "seg" in files,
        }
        return Record(
            case.name, tuple(str(files[m]) for m in wanted), case.name, labels, None, meta
        )

    def read(self, record: Record):
        volumes = [load_volume(Path(p))[0] for p in record.paths[:4]]
        seg = load_volume(Path(record.paths[4]))[0] if len(record.paths) > 4 else None
        return np.stack(volumes), record_meta(record, seg=seg, modalities=list(MRI_MODALITIES))

    def load(self, record: Record, *, image_size: int, options: LoadOptions):
        max_voxels = options.max_image_pixels
        volumes = []
        bits = 8
        for path in record.paths[:4]:
            data, _ = load_volume(Path(path), max_voxels=max_voxels)
            bits = max(bits, _bits_for(data.dtype))
            volumes.append(data)
        if len({v.shape for v in volumes}) != 1:
            raise ValueError(f"{record.key}: modality shapes differ: {[v.shape for v in volumes]}")
        stack = np.stack([normalise_volume(v, bits) for v in volumes])  # (4, X, Y, Z)
        if len(record.paths) > 4:
            seg, _ = load_volume(Path(record.paths[4]), max_voxels=max_voxels)
            regions = brats_regions(seg)  # (3, X, Y, Z)
        else:
            regions = np.zeros((3, *stack.shape[1:]), np.uint8)
        z = self.select_slices(stack, regions, options)
        # axial slice z as (rows = y, cols = x), the radiological view
        images = np.transpose(stack[..., z], (3, 0, 2, 1))
        masks = np.transpose(regions[..., z], (3, 0, 2, 1))
        images = resize_stack(np.ascontiguousarray(images), image_size, bits=bits)
        masks = resize_stack(np.ascontiguousarray(masks), image_size, bits=8, nearest=True)
        if options.tumour_only:
            # a tumour of a few voxels can vanish when downsampled: keep what still shows it
            keep = masks[:, 2].reshape(len(masks), -1).any(axis=1)
            if keep.any():
                images, masks = images[keep], masks[keep]
        return images, masks.astype(np.uint8), bits

    @staticmethod
    def select_slices(stack: np.ndarray, regions: np.ndarray, options: LoadOptions) -> np.ndarray:
        """Axial slices with brain (or tumour, with tumour_only), evenly spaced, at most max_slices."""
        brain = stack.reshape(stack.shape[0], -1, stack.shape[-1]).any(axis=(0, 1))
        tumour = regions[2].reshape(-1, regions.shape[-1]).any(axis=0)
        candidates = np.flatnonzero(tumour if options.tumour_only and tumour.any() else brain)
        if candidates.size == 0:
            candidates = np.arange(stack.shape[-1])
        limit = options.max_slices_per_subject
        if limit is not None and candidates.size > limit:
            picks = np.unique(np.rint(np.linspace(0, candidates.size - 1, limit)).astype(int))
            candidates = candidates[picks]
        return candidates
