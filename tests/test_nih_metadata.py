"""NIH ChestX-ray14's real metadata behind the phantoms: the packaged CSV, the phantoms drawn
from it, patient-whole partitions, NIH's archive parts, the medfed[nih] extra when missing.

Tests marked `needs_nih` read the CSV that torchxrayvision ships (`make` installs it); they
skip, saying so, where it is not installed.
"""

from __future__ import annotations

import csv
import gzip
import json
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simulations.cli import main
from study.data import (
    ensure_dataset,
    inspect_dataset,
    load_holdout,
    load_site,
    nih_metadata,
    open_dataset,
)
from study.data.nih_metadata import (
    NIH_IMAGES,
    NIH_PATIENTS,
    archive_parts,
    draw_patients,
    load_table,
    packaged_csv,
)
from study.data.partition import SCHEMES, stable_institution
from study.data.phantom_xray import plan_nih_cohort, write_xray_phantoms
from study.data.types import FINDINGS, NO_FINDING

needs_nih = pytest.mark.skipif(
    packaged_csv() is None,
    reason="NIH's CSV comes with torchxrayvision, not installed here "
    "(pip install --no-deps torchxrayvision, or `make setup`)",
)


@pytest.fixture(scope="module")
def table():
    if packaged_csv() is None:
        pytest.skip("NIH's CSV comes with torchxrayvision, not installed here")
    return load_table()


@pytest.fixture(scope="module")
def real_rows() -> dict[str, list[str]]:
    """The packaged CSV read with the plain csv module (the independent reference)."""
    if packaged_csv() is None:
        pytest.skip("NIH's CSV comes with torchxrayvision, not installed here")
    with gzip.open(packaged_csv(), "rt", newline="") as fh:
        rows = list(csv.reader(fh))
    return {row[0]: row for row in rows[1:]}


@pytest.fixture(scope="module")
def nih_phantoms(tmp_path_factory, table) -> Path:
    out = tmp_path_factory.mktemp("nihmeta") / "ds"
    return write_xray_phantoms(out, patients=30, size=24, seed=7, metadata="nih")


def _finding_counts(label_texts) -> Counter:
    return Counter(label for text in label_texts for label in text.split("|"))


# ------------------------------------------------------------------ the packaged CSV
@needs_nih
def test_packaged_csv_is_found_without_importing_torchxrayvision():
    code = (
        "import sys; from study.data.nih_metadata import packaged_csv; "
        "p = packaged_csv(); print(p.name, 'torchxrayvision' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.split() == ["Data_Entry_2017_v2020.csv.gz", "False"]


def test_table_holds_every_nih_image_and_patient(table, real_rows):
    assert len(table.rows) == NIH_IMAGES == len(real_rows) and not table.skipped
    assert len(table.patients) == NIH_PATIENTS
    row = table.rows[0]
    assert list(row.cells) == real_rows[row.image]
    assert (row.patient, row.follow_up, row.sex, row.view) == ("1", 0, "M", "PA")


def test_real_prevalence_no_finding_first_infiltration_top_finding_hernia_rarest(table):
    counts = _finding_counts(r.cells[1] for r in table.rows)
    assert counts.most_common(1)[0][0] == NO_FINDING
    assert max(FINDINGS, key=counts.__getitem__) == "Infiltration"
    assert min(FINDINGS, key=counts.__getitem__) == "Hernia"
    # a drawn cohort keeps that order (plan only: no pixels)
    drawn = _finding_counts(r.cells[1] for r in draw_patients(table, 3000, seed=0))
    ranked = [name for name, _ in drawn.most_common()]
    assert ranked[0] == NO_FINDING and ranked[1] == "Infiltration" and ranked[-1] == "Hernia"


def test_archive_parts_of_the_real_csv_follow_nihs_published_split(real_rows):
    parts = archive_parts(list(real_rows))  # in CSV order (patient, then follow-up)
    sizes = Counter(parts.values())
    assert [sizes[f"images_{k:03d}"] for k in range(1, 13)] == [4999, *[10000] * 10, 7121]
    first = {}
    for name in sorted(real_rows):
        first.setdefault(parts[name], name)
    # NIH's images_001.tar.gz ends with 00001335_006.png, images_002 starts at 00001336_000.png
    assert first["images_002"] == "00001336_000.png"
    assert parts["00001335_006.png"] == "images_001"
    assert first["images_012"] == "00028173_003.png" and parts["00030805_000.png"] == "images_012"


# ------------------------------------------------------------------ phantoms from NIH's rows
def test_each_phantom_is_one_real_row_and_patients_are_whole(nih_phantoms, real_rows):
    with open(nih_phantoms / "Data_Entry_2017_v2020.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    header, rows = rows[0], rows[1:]
    assert ",".join(header).startswith("Image Index,Finding Labels,Follow-up #,Patient ID")
    assert all(row == real_rows[row[0]] for row in rows)  # verbatim
    patients = {row[3] for row in rows}
    assert len(patients) == 30
    real_by_patient = Counter(row[3] for row in real_rows.values())
    assert Counter(row[3] for row in rows) == {p: real_by_patient[p] for p in patients}
    images = sorted(p.name for p in (nih_phantoms / "images").iterdir())
    assert images == sorted(row[0] for row in rows)
    with Image.open(nih_phantoms / "images" / images[0]) as image:
        assert image.size == (24, 24) and image.mode == "L"


def test_reader_reads_the_phantoms_with_the_real_metadata(nih_phantoms, real_rows):
    _, scan = open_dataset(nih_phantoms)
    assert not scan.skipped and len(scan.records) == len(list((nih_phantoms / "images").iterdir()))
    for record in scan.records:
        row = real_rows[record.key]
        assert record.patient_id == str(int(row[3]))
        assert set(record.labels) == set(row[1].split("|")) - {NO_FINDING}
        assert (record.meta["age"], record.meta["sex"], record.meta["view"]) == (
            row[4],
            row[5],
            row[6],
        )
        assert record.meta["follow_up"] == row[2]
    # institutions: the same hash of the patient id that `partition = natural` uses
    site_csv = (nih_phantoms / "partitioning.csv").read_text().splitlines()[1:]
    for line in site_csv:
        site, patient = line.split(",")
        assert int(site) == stable_institution(patient, 4) + 1


def test_inspect_counts_equal_the_real_csv_for_those_images(nih_phantoms, real_rows):
    report = inspect_dataset(nih_phantoms, strict=True)
    names = [p.name for p in (nih_phantoms / "images").iterdir()]
    expected = _finding_counts(real_rows[n][1] for n in names)
    assert report["labels"] == {name: expected.get(name, 0) for name in (*FINDINGS, NO_FINDING)}
    assert report["subjects"] == 30 and report["archives"] is None


def test_findings_are_drawn_into_the_pixels(table):
    from study.data.phantom_xray import _render, make_scanners

    item = plan_nih_cohort(1, 1, 3, table)[0]
    scanner = replace(make_scanners(1, 3)[0], noise=0.0)  # differences are the finding's own
    clear = _render(replace(item, findings=()), 64, 3, scanner)
    assert np.array_equal(clear, _render(replace(item, findings=()), 64, 3, scanner))
    for finding in FINDINGS:
        ill = _render(replace(item, findings=(finding,)), 64, 3, scanner)
        assert np.abs(ill - clear).max() > 0.1, finding


@needs_nih
def test_synth_cli_default_is_nih_and_inspect_shows_the_real_prevalence(tmp_path, capsys):
    out = tmp_path / "phantoms"
    assert main(["data", "synth", "xray", "--out", str(out), "--size", "16"]) == 0
    assert "nih metadata" in capsys.readouterr().err
    assert main(["data", "inspect", str(out), "--json", "--strict"]) == 0
    labels = json.loads(capsys.readouterr().out)["labels"]
    assert max(labels, key=labels.__getitem__) == NO_FINDING
    assert max(FINDINGS, key=labels.__getitem__) == "Infiltration"
    assert min(FINDINGS, key=labels.__getitem__) == "Hernia"
    assert labels["Hernia"] < min(labels[f] for f in FINDINGS if f != "Hernia")


# ------------------------------------------------------------------ partitions
@pytest.mark.parametrize("scheme", SCHEMES)
def test_partitions_keep_patients_whole(nih_phantoms, scheme):
    images_of = Counter(r.patient_id for r in open_dataset(nih_phantoms)[1].records)
    held = set(load_holdout(nih_phantoms, "xray", image_size=8).patient_ids)
    site_of: dict[str, int] = {}
    for site in range(3):
        shard = load_site(
            nih_phantoms, "xray", image_size=8, partition_id=site, num_partitions=3, scheme=scheme
        )
        ids = shard.train.patient_ids + shard.test.patient_ids
        for patient, count in Counter(ids).items():
            assert patient not in site_of and patient not in held, patient
            assert count == images_of[patient]  # every image of the patient, at one site
            site_of[patient] = site
    assert set(site_of) | held == set(images_of)


def test_natural_partition_of_nih_without_a_partition_csv_hashes_patients(nih_phantoms, tmp_path):
    import shutil

    bare = Path(shutil.copytree(nih_phantoms, tmp_path / "bare"))
    (bare / "partitioning.csv").unlink()  # as NIH ships it: no institutions

    def sites(root):
        return [
            set(
                load_site(
                    root, "xray", image_size=8, partition_id=i, num_partitions=4, scheme="natural"
                ).train.patient_ids
            )
            for i in range(4)
        ]

    hashed = sites(bare)
    assert hashed == sites(nih_phantoms)  # the phantoms' institutions are the same rule
    for i, patients in enumerate(hashed):
        assert all(stable_institution(p, 4) == i for p in patients)


# ------------------------------------------------------------------ without the extra
def test_missing_extra_is_a_clear_message(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(nih_metadata, "packaged_csv", lambda: None)
    out = tmp_path / "x"
    assert main(["data", "synth", "xray", "--out", str(out), "--metadata", "nih"]) == 2
    err = capsys.readouterr().err
    assert "medfed[nih]" in err and "--metadata synthetic" in err and not out.exists()
    assert (
        main(["data", "synth", "xray", "--out", str(out), "--patients", "2", "--size", "16"]) == 0
    )
    err = capsys.readouterr().err
    assert "invented labels" in err and "medfed[nih]" in err
    assert (out / "Data_Entry_2017.csv").is_file()  # the synthetic cohort, as before
    with pytest.warns(RuntimeWarning, match="medfed\\[nih\\]"):
        root = ensure_dataset("xray", None, cache_root=tmp_path / "c", patients=2, size=16)
    assert "nihcsv" not in root.name


@needs_nih
def test_ensure_dataset_names_the_metadata_and_is_reproducible(tmp_path):
    a = ensure_dataset("xray", None, cache_root=tmp_path / "a", patients=3, size=16, seed=1)
    b = ensure_dataset(
        "xray", None, cache_root=tmp_path / "b", patients=3, size=16, seed=1, metadata="nih"
    )
    assert a.name == b.name and "nihcsv" in a.name
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    synthetic = ensure_dataset(
        "xray", None, cache_root=tmp_path / "a", patients=3, size=16, seed=1, metadata="synthetic"
    )
    assert "nihcsv" not in synthetic.name and (synthetic / "Data_Entry_2017.csv").is_file()


# ------------------------------------------------------------------ the real CSV, partial download
@needs_nih
def test_inspect_of_the_full_real_csv_with_one_archive_part_is_fast(tmp_path, real_rows):
    """The 112,120-row CSV next to a few images: a summary by archive part in a subprocess
    bounded by a timeout (a generous one: the machine may be shared)."""
    root = tmp_path / "nih"
    root.mkdir()
    (root / "Data_Entry_2017_v2020.csv").write_bytes(gzip.decompress(packaged_csv().read_bytes()))
    names = sorted(real_rows)
    (root / "images_001" / "images").mkdir(parents=True)
    Image.fromarray(np.full((16, 16), 80, np.uint8)).save(tmp_path / "one.png")
    png = (tmp_path / "one.png").read_bytes()
    for name in names[:40]:
        (root / "images_001" / "images" / name).write_bytes(png)
    cmd = [sys.executable, "-m", "simulations.cli", "data", "inspect", str(root), "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)
    report = json.loads(done.stdout)
    assert report["images"] == 40
    expected = _finding_counts(real_rows[n][1] for n in names[:40])
    assert report["labels"] == {name: expected.get(name, 0) for name in (*FINDINGS, NO_FINDING)}
    assert report["archives"]["images_001"] == {"images": 4999, "found": 40, "missing": 4959}
    assert report["archives"]["images_012"] == {"images": 7121, "found": 0, "missing": 7121}
    assert len(report["skipped"]) == NIH_IMAGES - 40
