"""NIH ChestX-ray14: images/*.png (or images_NNN/images/*.png) plus Data_Entry_2017[_v2020].csv.

The CSV is read with `read_csv_rows`, which never stops on one bad line: a
UTF-8 byte-order mark and Latin-1 text are accepted, and a row the csv module
cannot parse (a field over its 128 KB limit, a quote left open) becomes a Skip
naming the file and line. Only a CSV whose header cannot be read is an error.

Real users often hold the full 112,120-row CSV but only some of NIH's 12 image
archives; the scan then lists every absent image in `skipped` and sums them up
by archive part in `Scan.archives` (see study.data.nih_metadata.archive_parts),
without a stat per listed image: one directory listing per image folder.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from study.data.base import (
    DatasetReader,
    LoadOptions,
    normalise_patient_id,
    read_partition_csv,
    record_meta,
    rel,
)
from study.data.png import png_problem, read_png
from study.data.preprocess import multi_hot, parse_findings, resize_plane
from study.data.safety import file_problem, open_regular
from study.data.types import Record, Scan, Skip

__all__ = ["CSV_HEADER", "CSV_NAMES", "NihReader", "find_csv", "read_csv_rows", "read_png"]

CSV_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
# The real header, as NIH wrote it: the bracketed names contain commas, so a
# CSV reader sees "OriginalImage[Width" and "Height]" as two columns.
CSV_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)
REQUIRED_COLUMNS = ("Image Index", "Finding Labels", "Patient ID")
PARTITION_CSV = "partitioning.csv"
MISSING_REASON = "but the file is missing"


def find_csv(root: Path) -> Path | None:
    for name in CSV_NAMES:
        if (root / name).is_file():
            return root / name
    return None


def image_files(root: Path) -> tuple[dict[str, Path], list[Skip]]:
    """images/*.png and images_NNN/images/*.png (Kaggle's layout of NIH's archives).

    One directory listing per folder (os.scandir: the entry type comes with the
    listing, no stat per plain file). Anything but a plain file (a symlink, FIFO,
    socket, device) goes through safety.file_problem: refused ones are returned
    as Skips with its reason and never opened.
    """
    found: dict[str, Path] = {}
    odd: list[Skip] = []
    folders = [root / "images", *sorted(root.glob("images_*/images"))]
    for folder in folders:
        if not folder.is_dir():
            continue
        with os.scandir(folder) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if entry.name.startswith("."):
                    continue
                path = Path(entry.path)
                if entry.is_file(follow_symlinks=False):
                    found.setdefault(entry.name, path)
                elif entry.is_dir(follow_symlinks=False):
                    odd.append(Skip(rel(path, root), "a folder inside an image folder: not read"))
                else:
                    problem = file_problem(path, root)
                    if problem:
                        odd.append(Skip(rel(path, root), problem))
                    else:
                        found.setdefault(entry.name, path)
    return found, odd


def decode_csv_bytes(data: bytes) -> str:
    """CSV text: UTF-8 (a byte-order mark is dropped), else Latin-1 (every byte is a letter)."""
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


MAX_MALFORMED_ROWS = 1000  # past this many the file is not an NIH CSV: one clear error


def read_csv_rows(path: Path, problems: list[Skip]) -> Iterator[tuple[int, list[str]]]:
    """(line number, cells) for every row of a CSV (or .csv.gz), header first.

    NIH rows are one line each. A row the csv module rejects (a field over its
    128 KB limit) or one whose quoted field runs on over the next lines (a quote
    never closed) is appended to problems as Skip("NAME:LINE", reason) and left
    out; the lines such a quote swallowed are read again, one by one as usual.
    More than MAX_MALFORMED_ROWS such rows is a ValueError naming the file.
    """
    with open_regular(path) as fh:
        data = fh.read()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    lines = io.StringIO(decode_csv_bytes(data), newline="").readlines()

    def bad(line: int, reason: str) -> None:
        problems.append(Skip(f"{path.name}:{line}", f"malformed row: {reason}"))
        if len(problems) > MAX_MALFORMED_ROWS:
            raise ValueError(
                f"{path}: over {MAX_MALFORMED_ROWS} malformed rows, not a readable CSV; "
                f"first: line {problems[0].path.rsplit(':', 1)[1]}: {problems[0].reason}"
            )

    start = 0  # index of the line the current csv reader started at
    while start < len(lines):
        reader = csv.reader(lines[i] for i in range(start, len(lines)))
        done = 0  # lines of this reader's records so far
        restart = None
        while restart is None:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                first, last = start + done + 1, start + reader.line_num
                span = f" (lines {first}-{last})" if last > first else ""
                bad(first, f"{exc}{span}")
                if last > first:
                    restart = first  # read the lines after `first` again
                done = reader.line_num
                continue
            first, last = start + done + 1, start + reader.line_num
            if last > first:
                bad(
                    first,
                    f"a quote opened on line {first} is not closed on it (an unbalanced quote?)",
                )
                restart = first
                continue
            done = reader.line_num
            yield last, row
        start = restart


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


META_COLUMNS = {
    "follow_up": ("Follow-up #",),
    "age": ("Patient Age",),
    "sex": ("Patient Gender", "Patient Sex"),
    "view": ("View Position",),
}
SIZE_COLUMNS = ("OriginalImage[Width", "Height]")
SPACING_COLUMNS = ("OriginalImagePixelSpacing[x", "y]")


def _archive_counts(parts: dict[str, str], absent) -> dict[str, dict[str, int]]:
    """{archive part: {"images": listed, "found": on disk, "missing": absent}}, parts in order.

    parts holds every image the CSV lists (archive_parts of them).
    """
    listed = Counter(parts.values())
    missing = Counter(parts[name] for _, name in absent)
    return {
        part: {"images": n, "found": n - missing[part], "missing": missing[part]}
        for part, n in sorted(listed.items())
    }


class NihReader(DatasetReader):
    format = "nih-cxr14"
    modality = "xray"
    channels = 1

    @classmethod
    def detect(cls, root: Path) -> bool:
        return find_csv(root) is not None

    def scan(self, root: Path, *, deep: bool = False, options: LoadOptions | None = None) -> Scan:
        from study.data.nih_metadata import archive_parts

        max_pixels = (options or LoadOptions()).max_image_pixels
        root = Path(root)
        csv_path = find_csv(root)
        if csv_path is None:
            raise FileNotFoundError(f"{root}: no {' or '.join(CSV_NAMES)}")
        problem = file_problem(csv_path, root)
        if problem:
            raise ValueError(f"{csv_path}: {problem}")
        files, skipped = image_files(root)
        problems: list[Skip] = []
        rows = read_csv_rows(csv_path, problems)
        header_row = next(rows, None)
        if header_row is None or header_row[0] != 1:
            detail = f"; {problems[0].reason}" if problems else ""
            raise ValueError(f"{csv_path}: cannot read the header on line 1{detail}")
        header = [h.strip() for h in header_row[1]]
        missing_cols = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing_cols:
            raise ValueError(
                f"{csv_path}: missing column(s) {missing_cols}; found {[h for h in header if h]}"
            )
        col = {name: i for i, name in reversed(list(enumerate(header))) if name}
        width = len(header)
        i_name, i_labels, i_patient = (col[c] for c in REQUIRED_COLUMNS)
        meta_cols = {k: [col[c] for c in names if c in col] for k, names in META_COLUMNS.items()}
        size_cols = [col.get(c) for c in SIZE_COLUMNS]
        spacing_cols = [col.get(c) for c in SPACING_COLUMNS]

        def cell(row: list[str], index: int | None) -> str:
            return row[index].strip() if index is not None else ""

        csv_name = csv_path.name
        records: list[Record] = []
        row_skips: list[tuple[int, Skip]] = []
        absent: list[tuple[int, str]] = []  # (line, image) listed but not on disk
        seen: set[str] = set()
        raw_patients: set[str] = set()  # every patient the CSV names, readable or not
        # Most rows of a partial download name an absent image: they cost a lookup only.
        for line, row in rows:
            if len(row) < width:
                row = row + [""] * (width - len(row))
            name = row[i_name].strip()
            raw_patients.add(row[i_patient])
            if not name:
                if any(c.strip() for c in row):
                    row_skips.append((line, Skip(f"{csv_name}:{line}", "row without Image Index")))
                continue
            if name in seen:
                row_skips.append((line, Skip(f"{csv_name}:{line}", f"duplicate row for {name}")))
                continue
            seen.add(name)
            path = files.get(name)
            if path is None:
                absent.append((line, name))
                continue
            where = f"{csv_name}:{line}"
            try:
                labels = parse_findings(row[i_labels], source=where)
            except ValueError as exc:
                row_skips.append((line, Skip(rel(path, root), str(exc))))
                continue
            patient = normalise_patient_id(row[i_patient])
            if not patient:
                row_skips.append((line, Skip(rel(path, root), f"{where}: empty Patient ID")))
                continue
            problem = png_problem(path, root, deep=deep, max_pixels=max_pixels)
            if problem:
                row_skips.append((line, Skip(rel(path, root), problem)))
                continue
            meta = {
                k: next((v for v in (cell(row, i) for i in ix) if v), "")
                for k, ix in meta_cols.items()
            }
            meta["original_size"] = [_float(cell(row, i)) for i in size_cols]
            meta["spacing"] = [_float(cell(row, i)) for i in spacing_cols]
            records.append(Record(name, (str(path),), patient, labels, None, meta))

        parts = archive_parts(seen)
        for line, name in absent:
            where = f" (NIH archive {parts[name]})" if parts else ""
            reason = f"listed in {csv_name} on line {line} {MISSING_REASON}{where}"
            row_skips.append((line, Skip(f"images/{name}", reason)))
        row_skips.extend((int(p.path.rsplit(":", 1)[1]), p) for p in problems)
        skipped.extend(skip for _, skip in sorted(row_skips, key=lambda item: item[0]))
        for name, path in files.items():
            if name not in seen:
                skipped.append(Skip(rel(path, root), f"no row in {csv_name}"))
        archives = _archive_counts(parts, absent) if parts else None
        csv_patients = {normalise_patient_id(p) for p in raw_patients} - {""}
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
        return Scan(
            self.format, self.modality, root, records, skipped, partitions, test_patients, archives
        )

    @staticmethod
    def _test_patients(
        root: Path, records: list[Record], skipped: list[Skip]
    ) -> frozenset[str] | None:
        """Patients of the images in test_list.txt (split by patient, never by image)."""
        test_list = root / "test_list.txt"
        if not test_list.is_file():
            return None
        problem = file_problem(test_list, root)
        if problem:
            skipped.append(Skip(rel(test_list, root), problem))
            return None
        by_name = {r.key: r.patient_id for r in records}
        with open_regular(test_list) as fh:
            text = decode_csv_bytes(fh.read())
        names = [n.strip() for n in text.splitlines() if n.strip()]
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
            plane, bits = read_png(Path(record.paths[0]), max_pixels=options.max_image_pixels)
        except (OSError, SyntaxError, ValueError) as exc:
            raise ValueError(f"{record.paths[0]}: cannot decode PNG: {exc}") from exc
        image = resize_plane(plane, image_size, bits=bits)[None, None]
        return image, multi_hot(record.labels)[None], bits
