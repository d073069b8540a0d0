"""NIH ChestX-ray14: images/*.png plus Data_Entry_2017[_v2020].csv."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from client.data.base import (
    DatasetReader,
    LoadOptions,
    normalise_patient_id,
    read_partition_csv,
    record_meta,
    rel,
)
from client.data.preprocess import multi_hot, parse_findings, resize_plane
from client.data.types import Record, Scan, Skip

CSV_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
# The real header, as NIH wrote it: the bracketed names contain commas, so a
# CSV reader sees "OriginalImage[Width" and "Height]" as two columns.
CSV_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)
REQUIRED_COLUMNS = ("Image Index", "Finding Labels", "Patient ID")
PARTITION_CSV = "partitioning.csv"


def find_csv(root: Path) -> Path | None:
    for name in CSV_NAMES:
        if (root / name).is_file():
            return root / name
    return None


def image_files(root: Path) -> dict[str, Path]:
    """images/*.png, and images_NNN/images/*.png as NIH ships the archives."""
    found: dict[str, Path] = {}
    for folder in [root / "images", *sorted(root.glob("images_*/images"))]:
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                if path.is_file() and not path.name.startswith("."):
                    found.setdefault(path.name, path)
    return found


def read_png(path: Path) -> tuple[np.ndarray, int]:
    """Decode one PNG as a 2D grey plane and its bit depth (8 or 16)."""
    with Image.open(path) as image:
        if image.format != "PNG":
            raise ValueError(f"{path}: not a PNG file ({image.format})")
        if image.mode in ("I;16", "I;16B", "I"):
            return np.asarray(image, dtype=np.uint16), 16
        if image.mode != "L":
            image = image.convert("L")  # a few NIH images are RGBA
        return np.asarray(image), 8


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


class NihReader(DatasetReader):
    format = "nih-cxr14"
    modality = "xray"
    channels = 1

    @classmethod
    def detect(cls, root: Path) -> bool:
        return find_csv(root) is not None

    def scan(self, root: Path, *, deep: bool = False) -> Scan:
        root = Path(root)
        csv_path = find_csv(root)
        if csv_path is None:
            raise FileNotFoundError(f"{root}: no {' or '.join(CSV_NAMES)}")
        files = image_files(root)
        records: list[Record] = []
        skipped: list[Skip] = []
        seen: set[str] = set()
        csv_patients: set[str] = set()  # every patient the CSV names, readable or not
        with open(csv_path, newline="") as fh:
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader, [])]
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            if missing:
                raise ValueError(
                    f"{csv_path}: missing column(s) {missing}; found {[h for h in header if h]}"
                )
            col = {name: header.index(name) for name in header if name}
            for line, row in enumerate(reader, start=2):
                if not any(cell.strip() for cell in row):
                    continue

                def get(name: str, row: list[str] = row) -> str:
                    index = col.get(name)
                    return row[index].strip() if index is not None and index < len(row) else ""

                name = get("Image Index")
                if get("Patient ID"):
                    csv_patients.add(normalise_patient_id(get("Patient ID")))
                where = f"{csv_path.name}:{line}"
                if not name:
                    skipped.append(Skip(where, "row without Image Index"))
                    continue
                if name in seen:
                    skipped.append(Skip(where, f"duplicate row for {name}"))
                    continue
                seen.add(name)
                path = files.get(name)
                if path is None:
                    skipped.append(
                        Skip(f"images/{name}", f"listed in {csv_path.name} but the file is missing")
                    )
                    continue
                try:
                    labels = parse_findings(get("Finding Labels"), source=where)
                except ValueError as exc:
                    skipped.append(Skip(rel(path, root), str(exc)))
                    continue
                patient = normalise_patient_id(get("Patient ID"))
                if not patient:
                    skipped.append(Skip(rel(path, root), f"{where}: empty Patient ID"))
                    continue
                problem = self._check_png(path, deep)
                if problem:
                    skipped.append(Skip(rel(path, root), problem))
                    continue
                meta = {
                    "follow_up": get("Follow-up #"),
                    "age": get("Patient Age"),
                    "sex": get("Patient Gender") or get("Patient Sex"),
                    "view": get("View Position"),
                    "original_size": [_float(get("OriginalImage[Width")), _float(get("Height]"))],
                    "spacing": [_float(get("OriginalImagePixelSpacing[x")), _float(get("y]"))],
                }
                records.append(Record(name, (str(path),), patient, labels, None, meta))
        for name, path in files.items():
            if name not in seen:
                skipped.append(Skip(rel(path, root), f"no row in {csv_path.name}"))
        partitions = None
        if (root / PARTITION_CSV).is_file():
            partitions, part_skips = read_partition_csv(root / PARTITION_CSV, csv_patients, root)
            skipped.extend(part_skips)
        test_patients = self._test_patients(root, records, skipped)
        if partitions:
            records = [
                Record(r.key, r.paths, r.patient_id, r.labels, partitions.get(r.patient_id), r.meta)
                for r in records
            ]
        return Scan(self.format, self.modality, root, records, skipped, partitions, test_patients)

    @staticmethod
    def _check_png(path: Path, deep: bool) -> str | None:
        try:
            with Image.open(path) as image:
                if image.format != "PNG":
                    return f"not a PNG file ({image.format})"
                if deep:
                    image.load()
                else:
                    image.verify()  # chunk CRCs: catches truncation without decoding
        except Exception as exc:  # Pillow raises many types for bad files
            return f"unreadable PNG: {type(exc).__name__}: {exc}"
        return None

    @staticmethod
    def _test_patients(
        root: Path, records: list[Record], skipped: list[Skip]
    ) -> frozenset[str] | None:
        """Patients of the images in test_list.txt (split by patient, never by image)."""
        test_list = root / "test_list.txt"
        if not test_list.is_file():
            return None
        by_name = {r.key: r.patient_id for r in records}
        names = [n.strip() for n in test_list.read_text().splitlines() if n.strip()]
        patients = set()
        for name in names:
            if name in by_name:
                patients.add(by_name[name])
        # train_val_list.txt needs no action: every patient not in the test list
        # is a training patient, and a patient listed in both goes to test.
        return frozenset(patients)

    def read(self, record: Record):
        plane, bits = read_png(Path(record.paths[0]))
        return plane, record_meta(record, bits=bits)

    def load(self, record: Record, *, image_size: int, options: LoadOptions):
        try:
            plane, bits = read_png(Path(record.paths[0]))
        except (OSError, SyntaxError, ValueError) as exc:
            raise ValueError(f"{record.paths[0]}: cannot decode PNG: {exc}") from exc
        image = resize_plane(plane, image_size, bits=bits)[None, None]
        return image, multi_hot(record.labels)[None], bits
