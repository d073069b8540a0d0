"""What the rest of medfed calls: ensure_dataset, load_site, load_holdout, sample_images."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from study.config import MODALITIES
from study.data import cache
from study.data.base import DatasetReader, LoadOptions
from study.data.partition import partition_patients, stable_institution
from study.data.preprocess import rescale_bits
from study.data.safety import DEFAULT_MAX_IMAGE_PIXELS
from study.data.scan import open_dataset
from study.data.types import (
    FINDINGS,
    MRI_REGIONS,
    NO_FINDING,
    ImageSet,
    PathLike,
    Record,
    Scan,
    SiteShard,
    empty_imageset,
)

HOLDOUT_FRACTION = 0.1


# ------------------------------------------------------------------ datasets
def phantom_name(
    modality: str,
    *,
    patients: int,
    institutions: int,
    seed: int,
    size: int,
    image_format: str,
    metadata: str = "synthetic",
) -> str:
    layout = "brats2021-nifti" if modality == "mri" else f"nih-{image_format}"
    if modality == "xray" and metadata == "nih":
        layout += "-nihcsv"  # real NIH rows (study.data.nih_metadata)
    return f"{modality}-{layout}-p{patients}-i{institutions}-s{size}-seed{seed}"


def ensure_dataset(
    modality: str,
    data_dir: PathLike | None,
    *,
    cache_root: PathLike,
    patients: int = 240,
    institutions: int = 4,
    seed: int = 0,
    size: int = 256,
    image_format: str = "png",
    metadata: str = "auto",
) -> Path:
    """data_dir given: check it exists and return it. Empty/None: generate phantoms once.

    Phantoms go to cache_root/phantoms/<modality-layout-pN-iK-sS-seedX>; a file
    lock plus generate-into-temp-then-rename make concurrent callers safe.
    metadata (x-ray): "nih" draws the patients from NIH ChestX-ray14's real CSV,
    "synthetic" invents them, "auto" is nih when torchxrayvision is installed
    (a RuntimeWarning says when it is not); the folder name says which.
    """
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; valid: {', '.join(MODALITIES)}")
    if data_dir not in (None, ""):
        path = Path(data_dir).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"data-dir {path} does not exist or is not a folder")
        return path
    if image_format not in ("png", "dicom"):
        raise ValueError(f"image format {image_format!r} is not one of: png, dicom")
    if modality == "xray":
        from study.data.nih_metadata import INSTALL_HINT, resolve_metadata

        wanted, metadata = metadata, resolve_metadata(metadata)
        if wanted == "auto" and metadata == "synthetic":
            warnings.warn(
                f"x-ray phantoms carry invented labels: NIH's metadata needs {INSTALL_HINT}",
                RuntimeWarning,
                stacklevel=2,
            )
    name = phantom_name(
        modality,
        patients=patients,
        institutions=institutions,
        seed=seed,
        size=size,
        image_format=image_format,
        metadata=metadata,
    )
    parent = Path(cache_root).expanduser() / "phantoms"
    parent.mkdir(parents=True, exist_ok=True)
    final = parent / name
    if final.is_dir():
        return final
    with open(parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if final.is_dir():  # another process finished while we waited
                return final
            tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=parent))
            try:
                if modality == "xray":
                    from study.data.phantom_xray import write_xray_phantoms

                    write_xray_phantoms(
                        tmp,
                        patients=patients,
                        image_format=image_format,
                        size=size,
                        institutions=institutions,
                        seed=seed,
                        metadata=metadata,
                    )
                else:
                    from study.data.phantom_mri import write_mri_phantoms

                    write_mri_phantoms(
                        tmp, subjects=patients, size=size, institutions=institutions, seed=seed
                    )
                os.rename(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return final


# ------------------------------------------------------------------ holdout
def _unit_hash(patient: str, seed: int) -> float:
    digest = hashlib.sha256(f"medfed-holdout:{seed}:{patient}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def holdout_patients(scan: Scan, seed: int) -> set[str]:
    """The server's patients: the official test list, else ~10% by a seeded hash."""
    if scan.test_patients:
        return set(scan.test_patients)
    patients = scan.patients
    held = {p for p in patients if _unit_hash(p, seed) < HOLDOUT_FRACTION}
    if not held and len(patients) >= 2:
        held = {min(patients, key=lambda p: _unit_hash(p, seed))}
    return held


def _patient_class(records: Sequence[Record]) -> dict[str, str]:
    """One class per patient for label skew: its rarest-first finding, or No Finding."""
    counts: dict[str, int] = {}
    for r in records:
        for label in r.labels:
            counts[label] = counts.get(label, 0) + 1
    out: dict[str, str] = {}
    for r in records:
        if r.labels:
            best = min(r.labels, key=lambda lab: (counts[lab], lab))
            prev = out.get(r.patient_id)
            if prev is None or prev == NO_FINDING or counts[best] < counts.get(prev, 1 << 30):
                out[r.patient_id] = best
        else:
            out.setdefault(r.patient_id, NO_FINDING)
    return out


# ------------------------------------------------------------------ loading
def _check_modality(reader: DatasetReader, modality: str, root: Path) -> None:
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; valid: {', '.join(MODALITIES)}")
    if reader.modality != modality:
        raise ValueError(f"{root} holds {reader.format} data ({reader.modality}), not {modality}")


def _usable(records: Sequence[Record]) -> list[Record]:
    """Records that can serve as training samples (labelled ones)."""
    return [r for r in records if r.meta.get("labelled", True)]


def build_imageset(
    reader: DatasetReader,
    records: Sequence[Record],
    *,
    image_size: int,
    options: LoadOptions,
    cache_dir: PathLike | None = None,
    cache_name: str = "images",
) -> ImageSet:
    """Decode records (or reuse the cached tensors) into one ImageSet."""
    records = sorted(records, key=lambda r: r.key)
    if not records:
        return empty_imageset(reader.modality, reader.channels, image_size, 8)
    key = None
    if cache_dir is not None:
        paths = [p for r in records for p in r.paths]
        key = cache.fingerprint(
            paths,
            reader.format,
            image_size,
            options,
            [(r.key, r.patient_id, r.labels) for r in records],
        )
        hit = cache.load_arrays(cache_dir, cache_name, key)
        if hit is not None:
            return ImageSet(
                hit["images"],
                int(hit["bits"]),
                hit["targets"],
                tuple(str(p) for p in hit["patient_ids"]),
                reader.modality,
            )
    images, targets, patients, bits_list, failures = [], [], [], [], []
    for record in records:
        try:
            imgs, tgts, bits = reader.load(record, image_size=image_size, options=options)
        except (ValueError, RuntimeError, OSError) as exc:
            # The cheap scan passed this file but its pixel data do not decode: leave
            # it out loudly rather than stop a whole site on one file.
            failures.append(f"{record.key}: {exc}")
            continue
        images.append(imgs)
        targets.append(tgts)
        bits_list.append(bits)
        patients.extend([record.patient_id] * len(imgs))
    if failures:
        warnings.warn(
            f"{len(failures)} of {len(records)} record(s) could not be decoded and were left out; "
            f"first: {failures[0]}",
            RuntimeWarning,
            stacklevel=2,
        )
    if not images:
        return empty_imageset(reader.modality, reader.channels, image_size, 8)
    bits = max(bits_list)
    images = [
        rescale_bits(im, b, bits) if b != bits else im
        for im, b in zip(images, bits_list, strict=True)
    ]
    result = ImageSet(
        np.concatenate(images), bits, np.concatenate(targets), tuple(patients), reader.modality
    )
    if cache_dir is not None:
        cache.store_arrays(
            cache_dir,
            cache_name,
            key,
            {
                "images": result.images,
                "targets": result.targets,
                "bits": np.array(bits),
                "patient_ids": np.array(result.patient_ids, dtype=str),
            },
        )
    return result


def load_site(
    root: PathLike,
    modality: str,
    *,
    image_size: int,
    partition_id: int,
    num_partitions: int,
    scheme: str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
    test_fraction: float = 0.2,
    cache_dir: PathLike | None = None,
    max_slices_per_subject: int | None = 8,
    tumour_only: bool = False,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> SiteShard:
    """This site's shard: its patients' images split by patient into train and test.

    The server holdout (official test list, or a seeded 10% of patients) is never
    given to any site. max_image_pixels is the study key `max-image-pixels`
    (default 2**27): a file whose header claims a larger image is skipped by the
    scan, the same scan `medfed data inspect` reports.
    """
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition_id {partition_id} is outside 0..{num_partitions - 1}")
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    root = Path(root)
    options = LoadOptions(max_slices_per_subject, tumour_only, max_image_pixels)
    reader, scan = open_dataset(root, cache_dir=cache_dir, options=options)
    _check_modality(reader, modality, root)
    records = _usable(scan.records)
    if not records:
        raise ValueError(f"{root}: no usable {reader.format} records ({len(scan.skipped)} skipped)")
    held = holdout_patients(scan, seed)
    pool = sorted({r.patient_id for r in records} - held)
    site_of = {r.patient_id: r.institution for r in records}
    if scheme == "natural" and scan.partitions:
        site_of = {p: scan.partitions.get(p) for p in pool}
    elif scheme == "natural" and reader.format == "nih-cxr14" and not any(site_of.values()):
        # NIH names no institution: each patient's is a hash of its id (as in the phantoms)
        site_of = {p: str(stable_institution(p, num_partitions) + 1) for p in pool}
    parts = partition_patients(
        pool,
        num_partitions,
        scheme,
        seed=seed,
        alpha=alpha,
        patient_class=_patient_class(records),
        patient_site=site_of,
    )
    mine = parts[partition_id]
    rng = np.random.default_rng([seed, 271828, partition_id])
    order = [mine[i] for i in rng.permutation(len(mine))]
    n_test = round(len(order) * test_fraction)
    if test_fraction > 0 and n_test == 0 and len(order) >= 2:
        n_test = 1
    test_patients, train_patients = set(order[:n_test]), set(order[n_test:])
    site_cache = None
    if cache_dir is not None:
        site_cache = Path(cache_dir) / f"site-{partition_id}-of-{num_partitions}-{scheme}"
    build = lambda pats, split: build_imageset(  # noqa: E731
        reader,
        [r for r in records if r.patient_id in pats],
        image_size=image_size,
        options=options,
        cache_dir=site_cache,
        cache_name=split,
    )
    return SiteShard(train=build(train_patients, "train"), test=build(test_patients, "test"))


def load_holdout(
    root: PathLike,
    modality: str,
    *,
    image_size: int,
    max_images: int = 256,
    seed: int = 0,
    cache_dir: PathLike | None = None,
    max_slices_per_subject: int | None = 8,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> ImageSet:
    """The server's held-out set (patients load_site never hands to a site).

    max_image_pixels: as for load_site (the study key `max-image-pixels`, default 2**27).
    """
    root = Path(root)
    options = LoadOptions(max_slices_per_subject, max_image_pixels=max_image_pixels)
    reader, scan = open_dataset(root, cache_dir=cache_dir, options=options)
    _check_modality(reader, modality, root)
    held = holdout_patients(scan, seed)
    records = [r for r in _usable(scan.records) if r.patient_id in held]
    if modality == "xray" and len(records) > max_images:
        rng = np.random.default_rng([seed, 161803])
        records = [records[i] for i in sorted(rng.choice(len(records), max_images, replace=False))]
    hold_cache = Path(cache_dir) / "holdout" if cache_dir is not None else None
    result = build_imageset(
        reader,
        records,
        image_size=image_size,
        options=options,
        cache_dir=hold_cache,
        cache_name=f"holdout-{max_images}",
    )
    if len(result) > max_images:
        rng = np.random.default_rng([seed, 161803])
        keep = np.sort(rng.choice(len(result), max_images, replace=False))
        result = ImageSet(
            result.images[keep],
            result.bits,
            result.targets[keep],
            tuple(result.patient_ids[i] for i in keep),
            result.modality,
        )
    return result


__all__ = [
    "FINDINGS",
    "MRI_REGIONS",
    "ensure_dataset",
    "load_holdout",
    "load_site",
    "open_dataset",
]
