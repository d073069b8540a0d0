"""DICOM X-ray folders: pixel conventions, phantoms, pydicom's own sample files, bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from study.data import inspect_dataset, load_site, open_dataset
from study.data.dicom import read_dicom_plane, write_xray_dicom
from study.data.phantom_xray import write_xray_phantoms


def _sample(name: str) -> Path:
    return Path(get_testdata_file(name))


def _ramp(size: int = 16) -> np.ndarray:
    return np.linspace(0, 1, size * size).reshape(size, size)


@pytest.mark.parametrize("bits", [8, 10, 12, 16])
@pytest.mark.parametrize("monochrome1", [False, True])
@pytest.mark.parametrize("intercept", [0, -100])
def test_written_values_come_back_exactly(tmp_path, bits, monochrome1, intercept):
    path = tmp_path / "x.dcm"
    write_xray_dicom(path, _ramp(), bits=bits, monochrome1=monochrome1, intercept=intercept)
    plane, got_bits, ds = read_dicom_plane(path)
    headroom = max(0, -intercept)
    expected = np.rint(_ramp() * (2**bits - 1 - headroom)) + (headroom if monochrome1 else 0)
    assert got_bits == bits and plane.dtype == (np.uint8 if bits <= 8 else np.uint16)
    assert np.array_equal(plane, expected)  # inversion and rescale undone: bright = dense
    assert ds.PhotometricInterpretation == ("MONOCHROME1" if monochrome1 else "MONOCHROME2")


def test_rescale_slope_is_applied(tmp_path):
    path = tmp_path / "x.dcm"
    write_xray_dicom(path, _ramp() * 0.4, bits=8)
    ds = pydicom.dcmread(path)
    ds.RescaleSlope = "2"
    ds.save_as(path)
    plane, bits, _ = read_dicom_plane(path)
    assert bits == 8 and np.array_equal(plane, np.rint(_ramp() * 0.4 * 255) * 2)


def test_phantom_dicom_are_valid_cr_dx_objects_at_any_depth(tmp_path):
    root = write_xray_phantoms(
        tmp_path / "d", patients=8, size=32, image_format="dicom", institutions=4
    )
    files = sorted(root.rglob("*.dcm"))
    assert files and all(len(f.relative_to(root).parts) == 4 for f in files)
    for f in files:
        ds = pydicom.dcmread(f)
        assert ds.Modality in ("CR", "DX") and ds.InstitutionName and ds.file_meta.TransferSyntaxUID
        assert ds.pixel_array.shape == (32, 32)
    reader, scan = open_dataset(root)
    assert reader.format == "dicom" and len(scan.records) == len(files) and not scan.skipped
    assert {r.meta["bits"] for r in scan.records} >= {12, 10}
    assert all(r.meta["labelled"] for r in scan.records)


def test_natural_partition_by_institution_name(tmp_path):
    root = write_xray_phantoms(
        tmp_path / "d", patients=20, size=24, image_format="dicom", institutions=2
    )
    _, scan = open_dataset(root)
    site_of = {r.patient_id: r.institution for r in scan.records}
    for i in range(2):
        shard = load_site(
            root, "xray", image_size=16, partition_id=i, num_partitions=2, scheme="natural"
        )
        institutions = {site_of[p] for p in shard.train.patient_ids + shard.test.patient_ids}
        assert len(institutions) == 1
        assert shard.train.images.dtype == np.uint16 and shard.train.bits in (10, 12)


def test_pydicom_samples_ct_and_mr_decode(tmp_path):
    for name in ("CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm"):
        plane, bits, ds = read_dicom_plane(_sample(name))
        assert plane.shape == (ds.Rows, ds.Columns) and 8 <= bits <= 16
        assert plane.max() > plane.min()
    rle, _, _ = read_dicom_plane(_sample("MR_small_RLE.dcm"))
    plain, _, _ = read_dicom_plane(_sample("MR_small.dcm"))
    assert np.array_equal(rle, plain)  # RLE decodes through pydicom's own decoder


def test_missing_decoder_plugin_is_named(tmp_path):
    path = _sample("MR_small_jpeg_ls_lossless.dcm")
    with pytest.raises(RuntimeError, match="pylibjpeg|pyjpegls|gdcm"):
        read_dicom_plane(path)
    shutil.copy(path, tmp_path / "a.dcm")
    shutil.copy(_sample("MR_small.dcm"), tmp_path / "b.dcm")
    report = inspect_dataset(tmp_path)
    reasons = {s["path"]: s["reason"] for s in report["skipped"]}
    assert "decoder plugin" in reasons["a.dcm"] and "pylibjpeg" in reasons["a.dcm"]
    assert report["images"] == 1


def test_objects_without_pixel_data_are_skipped(tmp_path):
    shutil.copy(_sample("rtplan.dcm"), tmp_path / "plan.dcm")
    shutil.copy(_sample("test-SR.dcm"), tmp_path / "sr.dcm")
    shutil.copy(_sample("CT_small.dcm"), tmp_path / "ct.dcm")
    report = inspect_dataset(tmp_path)
    reasons = {s["path"]: s["reason"] for s in report["skipped"]}
    assert "no pixel data" in reasons["plan.dcm"] and "RTPLAN" in reasons["plan.dcm"]
    assert "no pixel data" in reasons["sr.dcm"] and "SR" in reasons["sr.dcm"]
    assert report["images"] == 1 and report["format"] == "dicom"


def _sr_without_pixels(path: Path) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "SR"
    ds.PatientID = "7"
    ds.save_as(path, enforce_file_format=True)


def test_bad_dicom_files_each_get_a_reason_and_the_scan_goes_on(tmp_path):
    root = tmp_path / "site" / "nested" / "deeper"
    root.mkdir(parents=True)
    good = tmp_path / "site" / "good.dcm"
    write_xray_dicom(good, _ramp(32), bits=12)
    data = good.read_bytes()
    (root / "truncated.dcm").write_bytes(data[: len(data) - 600])
    (root / "corrupt.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 300)
    ds = pydicom.dcmread(good)
    ds.save_as(
        root / "nopreamble.dcm", enforce_file_format=False
    )  # written without the 128-byte preamble
    raw = (root / "nopreamble.dcm").read_bytes()
    if raw[128:132] == b"DICM":  # pydicom kept the preamble: strip it by hand
        (root / "nopreamble.dcm").write_bytes(raw[132:])
    _sr_without_pixels(root / "report.dcm")
    shutil.copy(_sample("MR_truncated.dcm"), root / "mr_truncated.dcm")
    report = inspect_dataset(tmp_path / "site")
    reasons = {s["path"]: s["reason"] for s in report["skipped"]}
    assert report["images"] == 1
    assert "truncated" in reasons["nested/deeper/truncated.dcm"]
    assert "truncated" in reasons["nested/deeper/mr_truncated.dcm"]
    assert reasons["nested/deeper/corrupt.dcm"]
    assert "preamble" in reasons["nested/deeper/nopreamble.dcm"]
    assert "no pixel data" in reasons["nested/deeper/report.dcm"]
    with pytest.raises(ValueError, match="skipped"):
        inspect_dataset(tmp_path / "site", strict=True)


def test_labels_csv_missing_columns_and_absent_files(tmp_path):
    root = write_xray_phantoms(tmp_path / "d", patients=4, size=24, image_format="dicom")
    text = (root / "labels.csv").read_text()
    (root / "labels.csv").write_text(text + "Hospital-Z/nowhere.dcm,Mass\n")
    report = inspect_dataset(root)
    assert any(
        s["path"] == "Hospital-Z/nowhere.dcm" and "missing" in s["reason"]
        for s in report["skipped"]
    )
    (root / "labels.csv").write_text("File,Labels\nx.dcm,Mass\n")
    with pytest.raises(ValueError, match="Finding Labels"):
        inspect_dataset(root)


def test_labels_from_a_dicom_tag_when_there_is_no_csv(tmp_path):
    root = write_xray_phantoms(tmp_path / "d", patients=6, size=24, image_format="dicom")
    expected = {
        line.split(",")[0]: line.split(",")[1]
        for line in (root / "labels.csv").read_text().splitlines()[1:]
    }
    (root / "labels.csv").unlink()
    _, scan = open_dataset(root)
    for record in scan.records:
        assert ("|".join(record.labels) or "No Finding") == expected[record.key]
