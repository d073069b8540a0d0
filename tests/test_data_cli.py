"""`medfed data synth ...` and `medfed data inspect ...`, called through simulations.cli.main."""

from __future__ import annotations

import json

import numpy as np

from benchmarks.data import run_data_bench
from simulations.cli import main
from study.data import sample_images

REPORT_KEYS = ["format", "images", "subjects", "labels", "partitions", "skipped", "archives"]


def _synth(modality: str, out, *options: str) -> None:
    assert main(["data", "synth", modality, "--out", str(out), *options]) == 0


def _inspect_json(capsys, path, *extra) -> dict:
    capsys.readouterr()
    assert main(["data", "inspect", str(path), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_synth_xray_png_then_inspect(tmp_path, capsys):
    out = tmp_path / "nih"
    _synth("xray", out, "--patients", "6", "--size", "32", "--institutions", "2", "--seed", "4")
    report = _inspect_json(capsys, out, "--strict")
    assert list(report) == REPORT_KEYS and report["format"] == "nih-cxr14"
    assert report["subjects"] == 6 and report["images"] == len(list((out / "images").glob("*.png")))
    assert set(report["partitions"]) <= {"1", "2"} and report["skipped"] == []


def test_synth_xray_dicom_then_inspect(tmp_path, capsys):
    out = tmp_path / "dcm"
    _synth("xray", out, "--patients", "5", "--format", "dicom", "--size", "32")
    report = _inspect_json(capsys, out)
    assert report["format"] == "dicom" and report["subjects"] == 5
    assert (
        sum(report["labels"].values()) >= report["images"]
    )  # every image counted, No Finding included


def test_synth_mri_then_inspect(tmp_path, capsys):
    out = tmp_path / "brats"
    _synth("mri", out, "--subjects", "3", "--size", "24", "--institutions", "3")
    report = _inspect_json(capsys, out)
    assert report["format"] == "brats" and report["images"] == 3 and report["labels"]["WT"] == 3
    assert report["partitions"] == {"1": 1, "2": 1, "3": 1}


def test_strict_with_a_skip_exits_2_and_names_the_file(tmp_path, capsys):
    out = tmp_path / "nih"
    _synth("xray", out, "--patients", "3", "--size", "32")
    bad = sorted((out / "images").iterdir())[0]
    bad.write_bytes(b"broken")
    assert main(["data", "inspect", str(out), "--json", "--strict"]) == 2
    captured = capsys.readouterr()
    assert bad.name in captured.err
    assert json.loads(captured.out)["skipped"][0]["path"] == f"images/{bad.name}"


def test_bad_folders_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["data", "inspect", str(tmp_path / "empty")]) == 2
    assert "empty" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert main(["data", "synth", "xray", "--out", str(tmp_path / "full")]) == 2
    assert "not an empty folder" in capsys.readouterr().err


def test_human_readable_inspect(tmp_path, capsys):
    out = tmp_path / "nih"
    _synth("xray", out, "--patients", "3", "--size", "32")
    capsys.readouterr()
    assert main(["data", "inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "nih-cxr14" in text and "No Finding" in text


def test_sample_images_sources():
    for source, channels in (
        ("phantom-xray", 1),
        ("phantom-mri", 4),
        ("pydicom-samples", 1),
        ("nibabel-samples", 4),
    ):
        images, bits = sample_images(source, 3, 32, seed=1)
        assert images.ndim == 4 and images.shape[1:] == (channels, 32, 32) and 1 <= len(images) <= 3
        assert images.dtype == (np.uint8 if bits <= 8 else np.uint16) and 8 <= bits <= 16
        assert int(images.max()) <= 2**bits - 1 and images.max() > images.min()
    a, _ = sample_images("phantom-xray", 2, 32, seed=3)
    b, _ = sample_images("phantom-xray", 2, 32, seed=3)
    assert np.array_equal(a, b)
    dicom, bits = sample_images("phantom-xray-dicom", 2, 32)
    assert bits == 12 and dicom.dtype == np.uint16


def test_data_bench_returns_the_documented_numbers():
    result = run_data_bench(items=4, size=48, image_size=32)
    for key in (
        "png_decode_images_per_s",
        "dicom_decode_images_per_s",
        "nifti_decode_slices_per_s",
        "png_cached_speedup",
        "dicom_cached_speedup",
        "nifti_cached_speedup",
        "png1024_decode_ms",
        "pillow1024_decode_ms",
        "png1024_ratio_to_pillow",
    ):
        assert result[key] > 0, key
    assert result["png1024_ratio_to_pillow"] < 3
