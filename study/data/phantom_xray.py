"""Chest X-ray phantoms written as real files: NIH layout (PNG + CSV) or DICOM CR/DX.

Each image is drawn analytically at the requested size (soft tissue, lungs
with vessel texture, ribs, spine, heart, diaphragm) plus planted findings that
look the way they do on a radiograph, so a small CNN can learn them at 64 x 64:
Nodule (small round opacity), Mass (large one), Effusion (basal opacity with
a meniscus), Cardiomegaly (heart wider than half the chest), Pneumothorax
(dark rim without lung markings, visible pleural line), and, for the NIH
metadata, the other nine of NIH's 14 (see _other_findings).

Who is scanned, with which findings (`metadata`):
- "nih": patients drawn from NIH ChestX-ray14's real CSV (study.data.nih_metadata);
  each image is one real row (its name, findings, follow-up, patient id, age,
  sex, view), written verbatim into Data_Entry_2017_v2020.csv, so the phantom
  set has NIH's label imbalance, co-occurrence and patient structure. An AP
  view magnifies the heart as on a real radiograph.
- "synthetic": invented patients with the five planted findings above at
  fixed prevalences (what every earlier phantom set holds, bit for bit).

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

from study.data.nih import CSV_HEADER, PARTITION_CSV

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
    if OTHER_FINDINGS.intersection(findings):
        img = _other_findings(img, rng, yy, xx, a, lungs, findings)
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


OTHER_FINDINGS = frozenset(
    (
        "Atelectasis",
        "Infiltration",
        "Pneumonia",
        "Consolidation",
        "Edema",
        "Emphysema",
        "Fibrosis",
        "Pleural_Thickening",
        "Hernia",
    )
)


def _other_findings(img, rng, yy, xx, a, lungs, findings):
    """NIH's nine other findings, each as a radiologist would point at it.

    Random draws happen only for findings present, so images without them
    (every synthetic phantom) are unchanged.
    """
    size = img.shape[0]
    lung = np.maximum(lungs[0], lungs[1])
    side = lambda k: 0.5 - a["lung_dx"] if k == 0 else 0.5 + a["lung_dx"]  # noqa: E731
    if "Emphysema" in findings:  # more air: hyperlucent lungs
        img = img - 0.07 * lung
    if "Infiltration" in findings:  # patchy, ill-defined opacities
        patches = np.clip(_smooth_noise(rng, size, 8), 0, 1.5)
        img = img + 0.26 * patches * lung
    if "Pneumonia" in findings:  # a lobar, mottled opacity in one lung
        k = int(rng.integers(2))
        cy = a["lung_cy"] + rng.uniform(0.0, 0.45) * a["lung_ry"]
        mottle = 0.7 + 0.3 * _smooth_noise(rng, size, 16)
        img = img + 0.42 * _blob(yy, xx, cy, side(k), 0.1) * lungs[k] * mottle
    if "Consolidation" in findings:  # dense, homogeneous, with air bronchograms
        k = int(rng.integers(2))
        cy = a["lung_cy"] + rng.uniform(0.1, 0.5) * a["lung_ry"]
        dense = _ellipse(yy, xx, cy, side(k), 0.09, 0.75 * a["lung_rx"], edge=0.5) * lungs[k]
        bronchi = np.clip(1 - np.abs(_smooth_noise(rng, size, 10)) / 0.15, 0, 1)
        img = img + dense * (0.4 - 0.18 * bronchi)
    if "Edema" in findings:  # bilateral perihilar haze and Kerley B lines at the bases
        for k in (0, 1):
            hilum = 0.5 + (-1 if k == 0 else 1) * a["lung_dx"] * 0.6
            img = img + 0.3 * _blob(yy, xx, a["lung_cy"] + 0.02, hilum, 0.11) * lungs[k]
        lateral = np.clip((np.abs(xx - 0.5) - a["lung_dx"]) / a["lung_rx"], 0, 1)
        base = np.clip((yy - a["lung_cy"]) / a["lung_ry"], 0, 1)
        kerley = (np.cos(2 * np.pi * yy / 0.016) > 0.6).astype(np.float32)
        img = img + 0.18 * kerley * np.sqrt(lateral * base) * lung
    if "Fibrosis" in findings:  # a reticular net, worst at the periphery and bases
        net = np.clip(1 - np.abs(_smooth_noise(rng, size, 40)) / 0.35, 0, 1)
        weight = np.clip((yy - a["lung_cy"]) / a["lung_ry"] + 0.6, 0, 1)
        img = img + 0.15 * net * weight * lung
    if "Pleural_Thickening" in findings:  # a smooth band along the chest wall, apex first
        sides = [0, 1] if rng.random() < 0.4 else [int(rng.integers(2))]
        for k in sides:
            inner = _ellipse(
                yy,
                xx,
                a["lung_cy"] + 0.012,
                side(k),
                a["lung_ry"] - 0.035,
                a["lung_rx"] - 0.028,
                edge=0.08,
            )
            rim = np.clip(lungs[k] - inner, 0, 1)
            apex = np.clip(1.2 - (yy - a["lung_cy"] + a["lung_ry"]) / a["lung_ry"], 0.3, 1)
            img = img + 0.35 * rim * apex
    if "Atelectasis" in findings:  # a plate-like band and some volume loss at a base
        k = int(rng.integers(2))
        y0 = a["lung_cy"] + rng.uniform(0.15, 0.5) * a["lung_ry"]
        slope = rng.uniform(-0.3, 0.3)
        band = np.exp(-(((yy - y0) - slope * (xx - side(k))) ** 2) / (2 * 0.012**2))
        img = img + (0.4 * band + 0.08 * _blob(yy, xx, y0 + 0.04, side(k), 0.06)) * lungs[k]
    if "Hernia" in findings:  # hiatal hernia: a round retrocardiac opacity with an air-fluid level
        cy, cx = a["heart_cy"] + 0.02, 0.5 + rng.uniform(-0.02, 0.04)
        radius = rng.uniform(0.05, 0.07)
        sac = _ellipse(yy, xx, cy, cx, radius, radius * 1.2, edge=0.15)
        air = sac * (yy < cy - 0.3 * radius)
        img = img + 0.22 * sac - 0.3 * air
    return img


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
    row: tuple[str, ...] | None = None  # the real NIH CSV row it stands for (metadata "nih")


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


def plan_nih_cohort(patients: int, institutions: int, seed: int, table=None) -> list[PhantomImage]:
    """Real patients drawn from NIH's CSV, every image of each one real row.

    A patient's institution is partition.stable_institution (a hash of its id),
    the rule `partition = natural` applies to real NIH data as well.
    """
    from study.data.nih_metadata import draw_patients, load_table
    from study.data.partition import stable_institution

    if institutions < 1:
        raise ValueError(f"need at least one institution, got {institutions}")
    table = table if table is not None else load_table()
    return [
        PhantomImage(
            row.image,
            int(row.patient),
            row.follow_up,
            stable_institution(row.patient, institutions),
            row.findings,
            row.age,
            row.sex,
            row.view,
            row.cells,
        )
        for row in draw_patients(table, patients, seed)
    ]


def _nih_anatomy(anatomy: dict, item: PhantomImage) -> dict:
    """What a real row's metadata changes in the body: view, sex, hyperinflation."""
    a = dict(anatomy)
    if item.view == "AP":  # beam from the front: the heart is magnified, inspiration shallower
        a["heart_rx"] *= 1.12
        a["lung_ry"] *= 0.95
    if item.sex == "F":
        a["body_rx"] *= 0.96
    if "Emphysema" in item.findings:  # hyperinflated: low flat diaphragm, narrow heart
        a["lung_ry"] *= 1.1
        a["lung_cy"] += 0.015
        a["heart_rx"] *= 0.9
    return a


def _render(item: PhantomImage, size: int, seed: int, scanner: Scanner) -> np.ndarray:
    anatomy = _anatomy(np.random.default_rng([seed, 3, item.patient]))
    if item.row is not None:
        anatomy = _nih_anatomy(anatomy, item)
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
    metadata: str = "synthetic",
    progress=None,
) -> Path:
    """Write a chest X-ray phantom dataset; returns the folder.

    png: NIH layout (images/*.png, the CSV with NIH's header: Data_Entry_2017.csv,
    or Data_Entry_2017_v2020.csv holding the real rows for metadata "nih";
    train_val_list.txt / test_list.txt, partitioning.csv mapping patients to
    institutions). dicom: <institution>/<patient>/<study>/*.dcm CR/DX objects
    with InstitutionName, plus labels.csv (File,Finding Labels).
    metadata: "synthetic", "nih" or "auto" (nih when torchxrayvision is installed).
    """
    from study.data.nih_metadata import load_table, resolve_metadata

    if image_format not in ("png", "dicom"):
        raise ValueError(f"image format {image_format!r} is not one of: png, dicom")
    if size < 16:
        raise ValueError(f"image size {size} is too small (minimum 16)")
    metadata = resolve_metadata(metadata)
    header, table = None, None
    if metadata == "nih":
        table = load_table()
        plan = plan_nih_cohort(patients, institutions, seed, table)
        header = table.header
    else:
        plan = plan_cohort(patients, institutions, seed)
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    scanners = make_scanners(institutions, seed)
    rng = np.random.default_rng([seed, 5])
    ids = sorted({p.patient for p in plan})  # 1..patients for synthetic cohorts
    test_ids = {p for p in ids if rng.random() < test_fraction}
    if image_format == "png":
        _write_nih(root, plan, scanners, size, seed, test_ids, progress, header)
    else:
        _write_dicom(root, plan, scanners, size, seed, progress)
    return root


def _labels_text(findings: tuple[str, ...]) -> str:
    return "|".join(findings) if findings else "No Finding"


def _write_nih(root: Path, plan, scanners, size, seed, test_ids, progress, header=None) -> None:
    """header None: invented rows under NIH's 2017 header; else the real rows (v2020 CSV)."""
    images = root / "images"
    images.mkdir(exist_ok=True)
    rows = []
    for i, item in enumerate(plan):
        scanner = scanners[item.institution]
        pixels = np.rint(_render(item, size, seed, scanner) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(images / item.name, compress_level=1)
        if progress:
            progress(i + 1, len(plan))
        if item.row is not None:
            rows.append(list(item.row))
            continue
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
    name = "Data_Entry_2017.csv" if header is None else "Data_Entry_2017_v2020.csv"
    with open(root / name, "w", newline="") as fh:
        fh.write((CSV_HEADER if header is None else ",".join(header)) + "\n")
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
    from study.data.dicom import write_xray_dicom

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
