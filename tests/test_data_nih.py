"""NIH ChestX-ray14 layout: CSV header and labels, official test list, bad input."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from client.data import FINDINGS, inspect_dataset, load_holdout, load_site, open_dataset
from client.data.nih import CSV_HEADER, read_png
from client.data.phantom_xray import write_xray_phantoms
from client.data.preprocess import multi_hot, parse_findings


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
    assert list(report) == ["format", "images", "subjects", "labels", "partitions", "skipped"]
    assert report["format"] == "nih-cxr14"
    assert set(report["labels"]) == {*FINDINGS, "No Finding"}
    assert sum(report["partitions"].values()) == report["images"]
    rows = _rows(nih)[1:]
    assert report["labels"]["No Finding"] == sum(r[1] == "No Finding" for r in rows)
    assert report["subjects"] == len({r[3] for r in rows})
