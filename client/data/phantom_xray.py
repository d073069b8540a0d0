"""Chest X-ray phantoms written as real files: NIH layout (PNG + CSV) or DICOM CR/DX.

Each image is drawn analytically at the requested size (soft tissue, lungs
with vessel texture, ribs, spine, heart, diaphragm) plus planted findings that
look the way they do on a radiograph, so a small CNN can learn them at 64 x 64:
Nodule (small round opacity), Mass (large one), Effusion (basal opacity with
a meniscus), Cardiomegaly (heart wider than half the chest), Pneumothorax
(dark rim without lung markings, visible pleural line).

Every institution has its own scanner: gain, gamma, offset, noise, blur
(resolution), bit depth (DICOM) and finding prevalence, so sites are not
identically distributed. Institutions are recoverable without touching the
NIH CSV: partitioning.csv (Partition_ID,Subject_ID) next to it, and
InstitutionName in DICOM. Deterministic for a seed.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from client.data.nih import CSV_HEADER, PARTITION_CSV

PLANTED = ("Nodule", "Mass", "Effusion", "Cardiomegaly", "Pneumothorax")
PREVALENCE = {
    "Nodule": 0.16,
    "Mass": 0.12,
    "Effusion": 0.16,
    "Cardiomegaly": 0.15,
    "Pneumothorax": 0.12,
}
FIELD_OF_VIEW_MM = 400.0
DICOM_LABELS_CSV = "labels.csv"


@dataclass(frozen=True)
class Scanner:
    """One institution's acquisition chain."""

    name: str
    gain: float
    offset: float
    gamma: float
    noise: float
    blur: float  # downsample factor emulating a coarser detector (1 = none)
    bits: int  # DICOM bit depth (PNG is always 8-bit, as in NIH)
    monochrome1: bool
    intercept: int  # DICOM RescaleIntercept (stored = value - intercept)
    modality: str  # CR or DX
    prevalence_scale: float


def make_scanners(institutions: int, seed: int) -> list[Scanner]:
    rng = np.random.default_rng([seed, 7919])
    bit_choices = (12, 10, 14, 16, 8)
    out = []
    for k in range(institutions):
        out.append(
            Scanner(
                name=f"Hospital-{chr(ord('A') + k % 26)}{'' if k < 26 else k // 26}",
                gain=float(rng.uniform(0.85, 1.1)),
                offset=float(rng.uniform(-0.04, 0.06)),
                gamma=float(rng.uniform(0.8, 1.25)),
                noise=float(rng.uniform(0.008, 0.03)),
                blur=float((1.0, 1.6, 1.0, 2.0)[k % 4]),
                bits=bit_choices[k % len(bit_choices)],
                monochrome1=(k % 3 == 1),
                intercept=(-100 if k % 4 == 2 else 0),
                modality=("CR", "DX")[k % 2],
                prevalence_scale=float(rng.uniform(0.7, 1.3)),
            )
        )
    return out


def _ellipse(yy, xx, cy, cx, ry, rx, edge=0.04):
    """Soft-edged ellipse mask in [0, 1]."""
    r = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    return np.clip((1.0 - r) / edge + 0.5, 0.0, 1.0)


def _blob(yy, xx, cy, cx, radius):
    return np.exp(-((((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2)) ** 1.5))


def _smooth_noise(rng, size: int, cells: int) -> np.ndarray:
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    return np.asarray(
        Image.fromarray(coarse, mode="F").resize((size, size), Image.Resampling.BICUBIC)
    )


def render_chest(
    rng: np.random.Generator, size: int, anatomy: dict, findings: tuple[str, ...], scanner: Scanner
) -> np.ndarray:
    """One radiograph in [0, 1] (bright = dense), float32 (size, size)."""
    g = (np.arange(size, dtype=np.float32) + 0.5) / size
    yy, xx = np.meshgrid(g, g, indexing="ij")
    a = anatomy
    body = _ellipse(yy, xx, 0.58, 0.5, 0.62, a["body_rx"], edge=0.03)
    img = 0.08 + 0.47 * body
    lungs = [
        _ellipse(yy, xx, a["lung_cy"], cx, a["lung_ry"], a["lung_rx"], edge=0.08)
        for cx in (0.5 - a["lung_dx"], 0.5 + a["lung_dx"])  # patient's right, left
    ]
    lung = np.maximum(lungs[0], lungs[1])
    texture = 0.035 * _smooth_noise(rng, size, 24)
    markings = lung * texture
    # Pneumothorax: a lateral rim of one lung is collapsed air without markings.
    ptx = np.zeros_like(lung)
    if "Pneumothorax" in findings:
        k = int(rng.integers(2))
        cx = 0.5 - a["lung_dx"] if k == 0 else 0.5 + a["lung_dx"]
        depth = rng.uniform(0.35, 0.55) * a["lung_rx"]
        inner = _ellipse(
            yy,
            xx,
            a["lung_cy"] + 0.03,
            cx + (depth if k == 0 else -depth) * 0.5,
            a["lung_ry"] * 0.8,
            a["lung_rx"] - depth * 0.5,
            edge=0.05,
        )
        ptx = np.clip(lungs[k] - inner, 0, 1)
        markings = markings * (1 - ptx)
        line = np.clip(1 - np.abs(inner - 0.5) * 6, 0, 1) * lungs[k]
        img += 0.10 * line
    img = img - 0.33 * lung + markings - 0.12 * ptx
    # Ribs: curved bands across the thorax, sharper posteriorly.
    chest = _ellipse(yy, xx, 0.45, 0.5, 0.36, a["body_rx"] * 0.95, edge=0.1)
    phase = (yy - a["rib_curve"] * (xx - 0.5) ** 2 - a["rib_phase"]) / a["rib_spacing"]
    ribs = np.clip(np.cos(2 * np.pi * phase), 0, 1) ** 3
    img += 0.10 * ribs * chest
    # Spine with vertebral bodies.
    spine = _ellipse(yy, xx, 0.6, 0.5, 0.7, 0.045, edge=0.2)
    img += 0.22 * spine * (0.8 + 0.2 * np.cos(2 * np.pi * yy / 0.055))
    # Heart: wider than half the thorax in cardiomegaly.
    heart_rx = a["heart_rx"] * (1.45 if "Cardiomegaly" in findings else 1.0)
    heart = _ellipse(
        yy, xx, a["heart_cy"], 0.5 + 0.3 * heart_rx, a["heart_ry"], heart_rx, edge=0.08
    )
    img += 0.2 * heart * (1 - 0.4 * spine)
    # Diaphragm domes: the lower lung borders meet bright abdomen.
    if "Effusion" in findings:
        sides = [0, 1] if rng.random() < 0.3 else [int(rng.integers(2))]
        for k in sides:
            cx = 0.5 - a["lung_dx"] if k == 0 else 0.5 + a["lung_dx"]
            level = a["lung_cy"] + a["lung_ry"] * rng.uniform(0.05, 0.45)
            # the meniscus climbs laterally
            lateral = (xx - cx) / a["lung_rx"] * (-1 if k == 0 else 1)
            meniscus = level - 0.08 * np.clip(lateral + 1, 0, 2) ** 2
            fluid = np.clip((yy - meniscus) / 0.02, 0, 1) * lungs[k]
            img += 0.33 * fluid
    for name, radius_range, count in (
        ("Nodule", (0.03, 0.042), (1, 3)),
        ("Mass", (0.07, 0.1), (1, 2)),
    ):
        if name in findings:
            for _ in range(int(rng.integers(*count))):
                k = int(rng.integers(2))
                cx = (0.5 - a["lung_dx"] if k == 0 else 0.5 + a["lung_dx"]) + rng.uniform(
                    -0.5, 0.5
                ) * a["lung_rx"]
                cy = a["lung_cy"] + rng.uniform(-0.55, 0.35) * a["lung_ry"]
                img += 0.4 * _blob(yy, xx, cy, cx, rng.uniform(*radius_range))
    # Scanner: resolution, response curve, noise.
    if scanner.blur > 1.0:
        low = max(8, int(size / scanner.blur))
        pil = Image.fromarray(img.astype(np.float32), mode="F")
        img = np.asarray(
            pil.resize((low, low), Image.Resampling.BILINEAR).resize(
                (size, size), Image.Resampling.BILINEAR
            )
        )
    img = np.clip(img, 0, 1) ** scanner.gamma * scanner.gain + scanner.offset
    img = img + rng.normal(0, scanner.noise, img.shape).astype(np.float32)
    return np.clip(img, 0, 1).astype(np.float32)


def _anatomy(rng: np.random.Generator) -> dict:
    return {
        "body_rx": rng.uniform(0.4, 0.46),
        "lung_dx": rng.uniform(0.17, 0.2),
        "lung_cy": rng.uniform(0.43, 0.47),
        "lung_ry": rng.uniform(0.25, 0.29),
        "lung_rx": rng.uniform(0.12, 0.14),
        "heart_cy": rng.uniform(0.6, 0.63),
        "heart_ry": rng.uniform(0.12, 0.14),
        "heart_rx": rng.uniform(0.125, 0.14),
        "rib_curve": rng.uniform(0.6, 1.0),
        "rib_phase": rng.uniform(0, 0.08),
        "rib_spacing": rng.uniform(0.07, 0.085),
    }


def _draw_findings(rng: np.random.Generator, scanner: Scanner) -> tuple[str, ...]:
    return tuple(f for f in PLANTED if rng.random() < PREVALENCE[f] * scanner.prevalence_scale)


@dataclass(frozen=True)
class PhantomImage:
    name: str
    patient: int
    follow_up: int
    institution: int
    findings: tuple[str, ...]
    age: int
    sex: str
    view: str


def plan_cohort(patients: int, institutions: int, seed: int) -> list[PhantomImage]:
    """Who is scanned where, with which findings (no pixels yet)."""
    if patients < 1 or institutions < 1:
        raise ValueError(
            f"need at least one patient and one institution, got {patients} and {institutions}"
        )
    rng = np.random.default_rng([seed, 1])
    weights = rng.dirichlet(np.full(institutions, 6.0))
    sites = np.concatenate(
        [
            np.arange(min(patients, institutions)),
            rng.choice(institutions, max(0, patients - institutions), p=weights),
        ]
    )
    rng.shuffle(sites)
    scanners = make_scanners(institutions, seed)
    plan = []
    for p in range(patients):
        prng = np.random.default_rng([seed, 2, p])
        site = int(sites[p])
        n_images = int(prng.choice([1, 1, 2, 3]))
        age, sex = int(prng.integers(18, 90)), ("M", "F")[int(prng.integers(2))]
        findings = _draw_findings(prng, scanners[site])
        for fu in range(n_images):
            if fu and prng.random() > 0.7:
                findings = _draw_findings(prng, scanners[site])
            view = "PA" if prng.random() < 0.6 else "AP"
            plan.append(
                PhantomImage(f"{p + 1:08d}_{fu:03d}.png", p + 1, fu, site, findings, age, sex, view)
            )
    return plan


def _render(item: PhantomImage, size: int, seed: int, scanner: Scanner) -> np.ndarray:
    anatomy = _anatomy(np.random.default_rng([seed, 3, item.patient]))
    rng = np.random.default_rng([seed, 4, item.patient, item.follow_up])
    return render_chest(rng, size, anatomy, item.findings, scanner)


def write_xray_phantoms(
    out: str | os.PathLike,
    *,
    patients: int = 240,
    image_format: str = "png",
    size: int = 256,
    institutions: int = 4,
    seed: int = 0,
    test_fraction: float = 0.1,
    progress=None,
) -> Path:
    """Write a chest X-ray phantom dataset; returns the folder.

    png: NIH layout (images/*.png, Data_Entry_2017.csv with the real header,
    train_val_list.txt / test_list.txt, partitioning.csv mapping patients to
    institutions). dicom: <institution>/<patient>/<study>/*.dcm CR/DX objects
    with InstitutionName, plus labels.csv (File,Finding Labels).
    """
    if image_format not in ("png", "dicom"):
        raise ValueError(f"image format {image_format!r} is not one of: png, dicom")
    if size < 16:
        raise ValueError(f"image size {size} is too small (minimum 16)")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    plan = plan_cohort(patients, institutions, seed)
    scanners = make_scanners(institutions, seed)
    rng = np.random.default_rng([seed, 5])
    test_ids = {p for p in range(1, patients + 1) if rng.random() < test_fraction}
    if image_format == "png":
        _write_nih(root, plan, scanners, size, seed, test_ids, progress)
    else:
        _write_dicom(root, plan, scanners, size, seed, progress)
    return root


def _labels_text(findings: tuple[str, ...]) -> str:
    return "|".join(findings) if findings else "No Finding"


def _write_nih(root: Path, plan, scanners, size, seed, test_ids, progress) -> None:
    images = root / "images"
    images.mkdir(exist_ok=True)
    rows = []
    for i, item in enumerate(plan):
        scanner = scanners[item.institution]
        pixels = np.rint(_render(item, size, seed, scanner) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(images / item.name, compress_level=1)
        spacing = round(FIELD_OF_VIEW_MM / size * scanner.blur**0.25, 3)
        rows.append(
            [
                item.name,
                _labels_text(item.findings),
                item.follow_up,
                item.patient,
                item.age,
                item.sex,
                item.view,
                size,
                size,
                spacing,
                spacing,
                "",
            ]
        )
        if progress:
            progress(i + 1, len(plan))
    with open(root / "Data_Entry_2017.csv", "w", newline="") as fh:
        fh.write(CSV_HEADER + "\n")
        csv.writer(fh, lineterminator="\n").writerows(rows)
    (root / "test_list.txt").write_text(
        "".join(f"{p.name}\n" for p in plan if p.patient in test_ids)
    )
    (root / "train_val_list.txt").write_text(
        "".join(f"{p.name}\n" for p in plan if p.patient not in test_ids)
    )
    with open(root / PARTITION_CSV, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["Partition_ID", "Subject_ID"])
        for patient, site in sorted({(p.patient, p.institution) for p in plan}):
            writer.writerow([site + 1, patient])


def _write_dicom(root: Path, plan, scanners, size, seed, progress) -> None:
    from client.data.dicom import write_xray_dicom

    rows = []
    for i, item in enumerate(plan):
        scanner = scanners[item.institution]
        value = _render(item, size, seed, scanner)
        rel = (
            Path(scanner.name)
            / f"patient-{item.patient:08d}"
            / f"study-{item.follow_up:03d}"
            / "image-0001.dcm"
        )
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        write_xray_dicom(
            root / rel,
            value,
            bits=scanner.bits,
            monochrome1=scanner.monochrome1,
            intercept=scanner.intercept,
            modality=scanner.modality,
            patient_id=f"{item.patient:08d}",
            institution=scanner.name,
            spacing_mm=FIELD_OF_VIEW_MM / size,
            uid_seed=f"{seed}/{item.name}",
            age=item.age,
            sex=item.sex,
            view=item.view,
            comments=_labels_text(item.findings),
        )
        rows.append([rel.as_posix(), _labels_text(item.findings)])
        if progress:
            progress(i + 1, len(plan))
    with open(root / DICOM_LABELS_CSV, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["File", "Finding Labels"])
        writer.writerows(rows)
