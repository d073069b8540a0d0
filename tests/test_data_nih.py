"""NIH ChestX-ray14 layout: CSV header and labels, official test list, bad input, bad CSVs,
NIH's archive parts and a partial download."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from study.data import FINDINGS, inspect_dataset, load_holdout, load_site, open_dataset
from study.data.nih import CSV_HEADER, read_png
from study.data.nih_metadata import NIH_IMAGES, archive_parts
from study.data.phantom_xray import write_xray_phantoms
from study.data.preprocess import multi_hot, parse_findings


@pytest.fixture(scope="module")
def nih_template(tmp_path_factory) -> Path:
    return write_xray_phantoms(tmp_path_factory.mktemp("nih") / "ds", patients=16, size=48, seed=2)


@pytest.fixture
def nih(nih_template, tmp_path) -> Path:
    return Path(shutil.copytree(nih_template, tmp_path / "ds"))


def _rows(root: Path) -> list[list[str]]:
    with open(root / "Data_Entry_2017.csv", newline="") as fh:
        return list(csv.reader(fh))


def test_csv_has_the_real_nih_header_and_rows(nih):
    rows = _rows(nih)
    assert ",".join(rows[0]) == CSV_HEADER.rstrip("\n")
    assert rows[0][:7] == [
        "Image Index",
        "Finding Labels",
        "Follow-up #",
        "Patient ID",
        "Patient Age",
        "Patient Gender",
        "View Position",
    ]
    assert rows[0][7:11] == ["OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]"]
    assert len(rows) - 1 == len(list((nih / "images").glob("*.png")))


def test_labels_parse_to_multi_hot_in_findings_order():
    labels = parse_findings("Nodule|Cardiomegaly")
    assert labels == ("Cardiomegaly", "Nodule")
    hot = multi_hot(labels)
    assert (
        hot[FINDINGS.index("Cardiomegaly")] == 1
        and hot[FINDINGS.index("Nodule")] == 1
        and hot.sum() == 2
    )
    assert parse_findings("No Finding") == ()
    with pytest.raises(ValueError, match="Pneumonitis"):
        parse_findings("Pneumonitis")


def test_scan_matches_csv_labels_and_reads_metadata(nih):
    _, scan = open_dataset(nih)
    rows = {r[0]: r for r in _rows(nih)[1:]}
    assert len(scan.records) == len(rows) and not scan.skipped
    for record in scan.records:
        row = rows[record.key]
        assert ("|".join(record.labels) or "No Finding") == row[1] or set(record.labels) == set(
            row[1].split("|")
        )
        assert record.patient_id == str(int(row[3]))
        assert record.meta["spacing"][0] == pytest.approx(float(row[9]))


def test_v2020_csv_name_is_read(nih):
    (nih / "Data_Entry_2017.csv").rename(nih / "Data_Entry_2017_v2020.csv")
    reader, scan = open_dataset(nih)
    assert reader.format == "nih-cxr14" and len(scan.records) > 0


def test_official_test_list_patients_are_the_holdout_and_never_in_sites(nih):
    names = [n for n in (nih / "test_list.txt").read_text().split() if n]
    if not names:  # make sure the list is not empty for this seed
        names = [sorted((nih / "images").iterdir())[0].name]
        (nih / "test_list.txt").write_text(names[0] + "\n")
    test_patients = {str(int(n.split("_")[0])) for n in names}
    holdout = load_holdout(nih, "xray", image_size=16)
    assert set(holdout.patient_ids) == test_patients
    for i in range(2):
        shard = load_site(nih, "xray", image_size=16, partition_id=i, num_partitions=2)
        assert not (set(shard.train.patient_ids) | set(shard.test.patient_ids)) & test_patients


def test_split_by_patient_not_by_image_when_a_patient_is_in_both_lists(nih):
    rows = _rows(nih)[1:]
    by_patient: dict[str, list[str]] = {}
    for row in rows:
        by_patient.setdefault(row[3], []).append(row[0])
    patient, images = next((p, ims) for p, ims in by_patient.items() if len(ims) >= 2)
    (nih / "test_list.txt").write_text(images[0] + "\n")  # only one of that patient's images listed
    (nih / "train_val_list.txt").write_text("".join(f"{n}\n" for n in images[1:]))
    holdout = load_holdout(nih, "xray", image_size=16)
    assert set(holdout.patient_ids) == {str(int(patient))} and len(holdout) == len(images)


def test_png_bit_depth_is_kept(tmp_path):
    plane = (np.arange(64 * 64).reshape(64, 64) % 4096).astype(np.uint16)
    Image.fromarray(plane).save(tmp_path / "x.png")
    decoded, bits = read_png(tmp_path / "x.png")
    assert bits == 16 and decoded.dtype == np.uint16 and np.array_equal(decoded, plane)


def test_truncated_and_corrupt_png_are_skipped_with_reasons(nih):
    images = sorted((nih / "images").iterdir())
    data = images[0].read_bytes()
    images[0].write_bytes(data[: len(data) // 2])
    images[1].write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    images[2].write_bytes(b"not an image at all")
    _, scan = open_dataset(nih)
    reasons = {s.path: s.reason for s in scan.skipped}
    for path in images[:3]:
        assert f"images/{path.name}" in reasons
        assert "PNG" in reasons[f"images/{path.name}"]
    assert len(scan.records) == len(images) - 3
    report = inspect_dataset(nih)
    assert len(report["skipped"]) == 3 and report["images"] == len(images) - 3
    with pytest.raises(ValueError, match="3 file"):
        inspect_dataset(nih, strict=True)


def test_csv_with_missing_columns_is_an_error_naming_them(nih):
    rows = _rows(nih)
    with open(nih / "Data_Entry_2017.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([[c for i, c in enumerate(r) if i != 3] for r in rows])
    with pytest.raises(ValueError, match="Patient ID"):
        open_dataset(nih)


def test_labels_for_absent_images_and_images_without_rows_are_skipped(nih):
    rows = _rows(nih)
    rows.append(
        ["99999999_000.png", "Mass", "0", "99999999", "40", "F", "PA", "48", "48", "1", "1", ""]
    )
    dropped = rows.pop(1)
    with open(nih / "Data_Entry_2017.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    _, scan = open_dataset(nih)
    reasons = {s.path: s.reason for s in scan.skipped}
    assert "file is missing" in reasons["images/99999999_000.png"]
    assert "no row" in reasons[f"images/{dropped[0]}"]


def test_unknown_finding_is_skipped_not_guessed(nih):
    rows = _rows(nih)
    rows[1][1] = "Pneumonitis"
    with open(nih / "Data_Entry_2017.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    _, scan = open_dataset(nih)
    assert any("Pneumonitis" in s.reason for s in scan.skipped)


def test_partition_csv_naming_unknown_subjects_is_reported(nih):
    with open(nih / "partitioning.csv", "a") as fh:
        fh.write("9,424242\n")
    report = inspect_dataset(nih)
    assert any(
        "unknown subject" in s["reason"] and "424242" in s["reason"] for s in report["skipped"]
    )
    assert "9" not in report["partitions"]


def test_empty_and_missing_folders_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        inspect_dataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        inspect_dataset(tmp_path / "nowhere")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="registered readers"):
        inspect_dataset(tmp_path)


def test_inspect_json_object_has_exactly_the_documented_fields(nih):
    report = inspect_dataset(nih)
    assert list(report) == [
        "format",
        "images",
        "subjects",
        "labels",
        "partitions",
        "skipped",
        "archives",
    ]
    assert report["archives"] is None  # a CSV of a few images says nothing of NIH's archives
    assert report["format"] == "nih-cxr14"
    assert set(report["labels"]) == {*FINDINGS, "No Finding"}
    assert sum(report["partitions"].values()) == report["images"]
    rows = _rows(nih)[1:]
    assert report["labels"]["No Finding"] == sum(r[1] == "No Finding" for r in rows)
    assert report["subjects"] == len({r[3] for r in rows})


# ------------------------------------------------------------------ CSV robustness
def _write_bytes_rows(root: Path, rows: list[list[str]], *, prefix: bytes = b"", encoding="utf-8"):
    text = "".join(",".join(r) + "\n" for r in rows)
    (root / "Data_Entry_2017.csv").write_bytes(prefix + text.encode(encoding))


def test_csv_with_a_utf8_byte_order_mark_is_read(nih):
    rows = _rows(nih)
    _write_bytes_rows(nih, rows, prefix=b"\xef\xbb\xbf")
    _, scan = open_dataset(nih)
    assert len(scan.records) == len(rows) - 1 and not scan.skipped


def test_csv_with_a_latin1_byte_is_read_as_latin1(nih):
    rows = _rows(nih)
    rows[1][6] = "P\u00c5"  # a View Position with a Latin-1 letter (byte 0xC5)
    _write_bytes_rows(nih, rows, encoding="latin-1")
    _, scan = open_dataset(nih)
    assert len(scan.records) == len(rows) - 1 and not scan.skipped
    assert next(r for r in scan.records if r.key == rows[1][0]).meta["view"] == "P\u00c5"


def test_oversized_field_and_open_quote_are_skipped_with_file_and_line(nih, capsys):
    from simulations.cli import main

    rows = _rows(nih)
    big, quoted = rows[2], rows[4]
    big[1] = "Mass" + "x" * 200_000  # over the csv module's 128 KB field limit
    lines = [",".join(r) for r in rows]
    lines[4] = '"' + lines[4]  # a quote opened on line 5 and never closed
    lines.insert(5, "00000000_000.png,No Finding")  # swallowed into line 5's field
    (nih / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    _, scan = open_dataset(nih)
    reasons = {s.path: s.reason for s in scan.skipped}
    assert "field larger than field limit" in reasons["Data_Entry_2017.csv:3"]
    assert "quote opened on line 5" in reasons["Data_Entry_2017.csv:5"]
    # the line the open quote swallowed is read again on its own
    assert "file is missing" in reasons["images/00000000_000.png"]
    assert len(scan.records) == len(rows) - 1 - 2
    # the CLI reports the same, as JSON, without a traceback
    capsys.readouterr()
    assert main(["data", "inspect", str(nih), "--json"]) == 0
    report_paths = {s["path"] for s in json.loads(capsys.readouterr().out)["skipped"]}
    assert {"Data_Entry_2017.csv:3", "Data_Entry_2017.csv:5"} <= report_paths
    assert f"images/{big[0]}" in report_paths and f"images/{quoted[0]}" in report_paths


def test_unreadable_csv_header_is_an_error_naming_the_file(nih):
    (nih / "Data_Entry_2017.csv").write_text("Image Index," + "y" * 140_000 + "\n")
    with pytest.raises(ValueError, match=r"Data_Entry_2017.csv.*line 1.*field limit"):
        open_dataset(nih)


# ------------------------------------------------------------------ NIH's archive parts
def _fake_nih_names() -> list[str]:
    """112,120 NIH-style names, 4 images a patient (not NIH's own; for the rule itself)."""
    return [f"{i // 4 + 1:08d}_{i % 4:03d}.png" for i in range(NIH_IMAGES)]


def test_archive_rule_splits_sorted_names_4999_then_10000_then_7121():
    names = _fake_nih_names()
    parts = archive_parts(list(reversed(names)))  # CSV order does not matter, name order does
    sizes = Counter(parts.values())
    assert [sizes[f"images_{k:03d}"] for k in range(1, 13)] == [4999, *[10000] * 10, 7121]
    assert parts[names[4998]] == "images_001" and parts[names[4999]] == "images_002"
    assert parts[names[-1]] == "images_012"
    assert archive_parts(names[:-1]) is None  # not NIH's full list: no parts


def test_partial_download_is_summarised_by_archive_and_lists_every_absent_image(tmp_path, capsys):
    from simulations.cli import main

    root = tmp_path / "nih"
    names = _fake_nih_names()
    with open(root.mkdir() or root / "Data_Entry_2017.csv", "w") as fh:
        fh.write(CSV_HEADER + "\n")
        fh.writelines(
            f"{n},No Finding,{i % 4},{i // 4 + 1},40,F,PA,64,64,0.1,0.1,\n"
            for i, n in enumerate(names)
        )
    png = tmp_path / "one.png"
    Image.fromarray(np.full((16, 16), 90, np.uint8)).save(png)
    present = {"images_001": names[:6], "images_012": names[-3:]}  # Kaggle layout
    for part, part_names in present.items():
        (root / part / "images").mkdir(parents=True)
        for n in part_names:
            shutil.copy(png, root / part / "images" / n)
    (root / "images").mkdir()  # NIH's flat layout next to it
    shutil.copy(png, root / "images" / names[20_000])
    capsys.readouterr()
    assert main(["data", "inspect", str(root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 10 and report["labels"]["No Finding"] == 10
    archives = report["archives"]
    assert archives["images_001"] == {"images": 4999, "found": 6, "missing": 4993}
    assert archives["images_003"] == {"images": 10000, "found": 1, "missing": 9999}
    assert archives["images_012"] == {"images": 7121, "found": 3, "missing": 7118}
    assert sum(a["missing"] for a in archives.values()) == NIH_IMAGES - 10
    missing = [s for s in report["skipped"] if "file is missing" in s["reason"]]
    assert len(missing) == len(report["skipped"]) == NIH_IMAGES - 10
    assert "images_002" in next(s["reason"] for s in missing if s["path"].endswith(names[5000]))
    # the text report: the archive table and a bounded list, not 112,110 lines
    assert main(["data", "inspect", str(root)]) == 0
    text = capsys.readouterr().out
    assert "images_002.tar.gz" in text and "--json lists every one" in text
    assert len(text.splitlines()) < 100
