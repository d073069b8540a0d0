"""Brain MRI phantoms in the BraTS-2021 layout, with a FeTS-style partitioning.csv.

Each subject is a skull-stripped head with white matter, cortex (grey matter),
ventricles and outer CSF, and a tumour made of nested regions: necrotic core
(label 1), enhancing rim (label 4) and oedema (label 2), seen in four
co-registered modalities whose contrasts differ as T1, T1c, T2 and FLAIR do:
CSF dark on T1 and FLAIR, bright on T2; the rim enhances only on T1c; oedema
is brightest on FLAIR and T2. About one subject in eight has no enhancing
tumour (a lower-grade look), so ET is not always present.

Institutions differ in scanner gain, bias field, noise, resolution (blur)
and stored data type (int16, uint8 or float32), so sites are not identically
distributed. Deterministic for a seed.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from study.data.types import MRI_MODALITIES

# tissue -> (t1, t1ce, t2, flair) relative intensities
CONTRAST = {
    "wm": (0.85, 0.85, 0.35, 0.45),
    "gm": (0.6, 0.62, 0.55, 0.6),
    "csf": (0.18, 0.18, 1.0, 0.08),
    "necrosis": (0.25, 0.28, 0.9, 0.55),
    "enhancing": (0.55, 1.0, 0.6, 0.75),
    "oedema": (0.5, 0.52, 0.85, 1.0),
}


@dataclass(frozen=True)
class MriScanner:
    name: str
    gain: float
    noise: float
    bias: float
    blur: float
    dtype: str  # stored data type: int16, uint8 or float32


def make_mri_scanners(institutions: int, seed: int) -> list[MriScanner]:
    rng = np.random.default_rng([seed, 104729])
    dtypes = ("int16", "int16", "uint8", "float32")
    return [
        MriScanner(
            name=f"Site-{k + 1}",
            gain=float(rng.uniform(600, 2500)),
            noise=float(rng.uniform(0.01, 0.04)),
            bias=float(rng.uniform(0.0, 0.25)),
            blur=(1.0, 1.5, 1.0, 2.0)[k % 4],
            dtype=dtypes[k % len(dtypes)],
        )
        for k in range(institutions)
    ]


def depth_for(size: int) -> int:
    """Axial slices per volume: BraTS has 155 for 240 in-plane; phantoms keep it small."""
    return max(16, size // 8)


def _interp_matrix(n: int, cells: int) -> np.ndarray:
    """(n, cells) linear interpolation weights from a coarse grid to n points."""
    pos = np.linspace(0, cells - 1, n)
    lo = np.minimum(np.floor(pos).astype(int), cells - 2)
    frac = (pos - lo).astype(np.float32)
    out = np.zeros((n, cells), np.float32)
    out[np.arange(n), lo] = 1 - frac
    out[np.arange(n), lo + 1] = frac
    return out


def _smooth3(rng, shape, cells=6):
    """A smooth random field: coarse Gaussian noise, upsampled separably (three small matmuls)."""
    coarse = rng.standard_normal((cells, cells, cells)).astype(np.float32)
    a, b, c = (_interp_matrix(n, cells) for n in shape)
    return np.einsum("ia,jb,kc,abc->ijk", a, b, c, coarse, optimize=True).astype(np.float32)


def render_subject(rng: np.random.Generator, size: int, scanner: MriScanner, *, has_et: bool):
    """(4, X, Y, Z) float32 modalities in [0, ~1] and the (X, Y, Z) uint8 seg."""
    depth = depth_for(size)
    gx = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    gz = (np.arange(depth, dtype=np.float32) + 0.5) / depth - 0.5
    x, y, z = np.meshgrid(gx, gx, gz, indexing="ij")
    warp = 0.03 * _smooth3(rng, (size, size, depth))
    rx, ry, rz = rng.uniform(0.33, 0.38), rng.uniform(0.4, 0.45), rng.uniform(0.42, 0.47)
    r_brain = np.sqrt((x / rx) ** 2 + (y / ry) ** 2 + (z / rz) ** 2) + warp
    brain = r_brain < 1.0
    codes = np.zeros(x.shape, np.uint8)  # 0 bg, 1 wm, 2 gm, 3 csf
    codes[brain] = 1
    folds = 0.05 * np.sin(40 * np.arctan2(y, x) + 10 * z)
    codes[brain & (r_brain + folds > 0.8)] = 2
    codes[brain & (r_brain > 0.95)] = 3
    for side in (-1, 1):
        vent = np.sqrt(((x - side * 0.05) / 0.04) ** 2 + ((y + 0.02) / 0.12) ** 2 + (z / 0.15) ** 2)
        codes[brain & (vent < 1.0)] = 3
    # tumour: centre inside one hemisphere, nested irregular spheres
    cx, cy, cz = (
        rng.uniform(0.08, 0.18) * rng.choice([-1, 1]),
        rng.uniform(-0.2, 0.2),
        rng.uniform(-0.15, 0.15),
    )
    r_oedema = rng.uniform(0.12, 0.2)
    r_rim = r_oedema * rng.uniform(0.45, 0.65)
    r_core = r_rim * rng.uniform(0.45, 0.7)
    bumpy = 0.15 * _smooth3(rng, (size, size, depth), cells=5)
    d = np.sqrt((x - cx) ** 2 + (y - cy) ** 2 + ((z - cz) * 0.9) ** 2)
    seg = np.zeros(x.shape, np.uint8)
    seg[brain & (d < r_oedema * (1 + bumpy))] = 2
    if has_et:
        seg[brain & (d < r_rim * (1 + 0.5 * bumpy))] = 4
        seg[brain & (d < r_core)] = 1
    else:
        seg[brain & (d < r_rim * (1 + 0.5 * bumpy))] = 1
    bias = 1.0 + scanner.bias * (x + 0.5 * y)
    # one label map (0 bg, 1 wm, 2 gm, 3 csf, 4 oedema, 5 enhancing, 6 necrosis), then a
    # lookup table per modality: one gather instead of a mask per tissue
    tissue = codes.copy()
    for label, code in ((2, 4), (4, 5), (1, 6)):
        tissue[seg == label] = code
    names = ("wm", "gm", "csf", "oedema", "enhancing", "necrosis")
    out = np.zeros((4, *x.shape), np.float32)
    for m in range(4):
        lut = np.array([0.0, *(CONTRAST[n][m] for n in names)], np.float32)
        vol = lut[tissue]
        vol *= 1.0 + 0.04 * _smooth3(rng, x.shape, cells=8)
        if scanner.blur > 1.0:
            vol = _blur_planes(vol, scanner.blur)
        vol = vol * bias + rng.normal(0, scanner.noise, vol.shape).astype(np.float32)
        out[m] = np.where(brain, np.clip(vol, 0.02, None), 0.0)
    return out, seg


def _blur_planes(vol: np.ndarray, factor: float) -> np.ndarray:
    size = vol.shape[0]
    low = max(8, int(size / factor))
    out = np.empty_like(vol)
    for k in range(vol.shape[2]):
        im = Image.fromarray(np.ascontiguousarray(vol[:, :, k]), mode="F")
        out[:, :, k] = np.asarray(
            im.resize((low, low), Image.Resampling.BILINEAR).resize(
                (size, size), Image.Resampling.BILINEAR
            )
        )
    return out


def write_mri_phantoms(
    out: str | os.PathLike,
    *,
    subjects: int = 24,
    size: int = 64,
    institutions: int = 4,
    seed: int = 0,
    progress=None,
) -> Path:
    """Write BraTS-2021 NIfTI phantoms plus partitioning.csv; returns the folder."""
    if subjects < 1 or institutions < 1:
        raise ValueError(
            f"need at least one subject and one institution, got {subjects} and {institutions}"
        )
    if size < 16:
        raise ValueError(f"image size {size} is too small (minimum 16)")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    scanners = make_mri_scanners(institutions, seed)
    rng = np.random.default_rng([seed, 11])
    sites = np.concatenate(
        [
            np.arange(min(subjects, institutions)),
            rng.integers(0, institutions, max(0, subjects - institutions)),
        ]
    )
    rng.shuffle(sites)
    rows = []
    for i in range(subjects):
        subject = f"BraTS2021_{i:05d}"
        scanner = scanners[int(sites[i])]
        srng = np.random.default_rng([seed, 12, i])
        volumes, seg = render_subject(srng, size, scanner, has_et=srng.random() > 0.125)
        spacing = 240.0 / size * scanner.blur**0.25
        affine = np.diag([spacing, spacing, 155.0 / depth_for(size), 1.0])
        case = root / subject
        case.mkdir(exist_ok=True)
        for m, name in enumerate(MRI_MODALITIES):
            data = _to_dtype(volumes[m], scanner)
            nib.save(nib.Nifti1Image(data, affine), case / f"{subject}_{name}.nii.gz")
        nib.save(nib.Nifti1Image(seg, affine), case / f"{subject}_seg.nii.gz")
        rows.append([int(sites[i]) + 1, subject])
        if progress:
            progress(i + 1, subjects)
    with open(root / "partitioning.csv", "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["Partition_ID", "Subject_ID"])
        writer.writerows(sorted(rows))
    return root


def _to_dtype(volume: np.ndarray, scanner: MriScanner) -> np.ndarray:
    if scanner.dtype == "uint8":
        return np.clip(np.rint(volume * 200), 0, 255).astype(np.uint8)
    if scanner.dtype == "float32":
        return (volume * scanner.gain).astype(np.float32)
    return np.clip(np.rint(volume * scanner.gain), 0, 32767).astype(np.int16)
