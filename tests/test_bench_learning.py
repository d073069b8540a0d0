"""`medfed bench learning-curves` and the method pictures: one site's images
split by patient, the learning-curve runner and its verdicts, the report
section and its figure, the pictures of `medfed bench encryption` and of the
suite's rate-distortion run. Tiny settings: 16 to 32 px, seconds per fit."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import smooth_images
from PIL import Image

from benchmarks.common import load_results, result_document, write_result
from benchmarks.encryption import run_rate_distortion, site_images
from benchmarks.learning_curves import assess, run_learning_curves, target_rows
from benchmarks.pictures import COLUMNS, method_pictures
from benchmarks.report import render_report
from benchmarks.result_types import LearningCurvesResults
from encryption.evaluate import evaluate
from simulations import cli
from simulations.commands import bench


def test_site_images_are_one_site_split_by_patient():
    fit, test, bits = site_images("phantom-xray", 20, 6, 32, seed=3)

    assert bits == 8 and fit.shape == (20, 1, 32, 32) and test.shape == (6, 1, 32, 32)
    # disjoint: no image of the unseen set is among the fit images
    fit_rows = {f.tobytes() for f in fit}
    assert not any(t.tobytes() in fit_rows for t in test)
    # one scanner: both sets have the same background level (two seeds would not)
    assert abs(float(np.median(fit[:, :, :3, :3])) - float(np.median(test[:, :, :3, :3]))) < 8


def test_site_images_errors_name_the_source(tmp_path):
    with pytest.raises(ValueError, match="unknown image source 'nowhere'"):
        site_images("nowhere", 4, 4, 32)
    with pytest.raises(ValueError, match="at least one fit and one unseen image"):
        site_images("phantom-xray", 0, 4, 32)


def _point(images, fit_psnr, unseen_psnr, stopped="converged", val=(20.0, 21.0, 21.0, 21.0)):
    return {
        "images": images,
        "epochs": len(val),
        "fit_s": 10.0,
        "fit_cpu_s": 10.0,
        "stopped": stopped,
        "fit": {"psnr": fit_psnr, "ssim": 0.8, "bpp": 8.0},
        "unseen": {"psnr": unseen_psnr, "ssim": 0.7, "bpp": 8.0},
        "curve": [{"epoch": i + 1, "val_psnr_db": v} for i, v in enumerate(val)],
    }


def test_assess_more_data_and_more_compute():
    flat_converged = [_point(96, 25.0, 24.8), _point(384, 25.1, 25.0)]
    still_rising = [
        _point(96, 22.0, 20.0),
        _point(384, 24.0, 22.0, stopped="time limit", val=(18, 19, 20, 21, 22, 23, 24, 25)),
    ]

    flat = assess("deepedn", flat_converged)
    rising = assess("deepedn", still_rising)
    exact = assess("invertible", [_point(24, math.inf, math.inf)])

    assert flat["data"] is False and flat["compute"] is False
    assert "fit - unseen +0.10 dB at 384 images" in flat["why_data"]
    assert "converged after 4 epochs, 10 CPU s" in flat["why_compute"]
    assert rising["data"] is True and rising["compute"] is True
    assert "unseen 20.00 -> 22.00 dB from 96 to 384 images" in rising["why_data"]
    assert (
        "time limit" in rising["why_compute"] and "+2.00 dB over the last" in rising["why_compute"]
    )
    assert exact["data"] is False and "exact" in exact["why_data"]
    assert assess("deepedn", [{"images": 24, "error": "boom"}])["data"] is None


def test_assess_codec_uses_bits_per_pixel():
    small, large = _point(96, 41.0, 41.0), _point(384, 41.0, 41.0)
    small["unseen"]["bpp"], large["fit"]["bpp"], large["unseen"]["bpp"] = 4.0, 3.0, 3.5

    verdict = assess("learned-codec-aes", [small, large])

    assert verdict["data"] is True and "unseen - fit +0.50 bpp" in verdict["why_data"]
    assert "unseen 4.00 -> 3.50 bpp" in verdict["why_data"]


@pytest.fixture(scope="module")
def curves():
    return run_learning_curves(
        sources=("phantom-xray", "no-such-source"),
        size=32,
        sizes=(16, 24),
        test_images=6,
        variants=("aae-scramble", "invertible"),
        cpu_s_per_image=0.05,
        min_cpu_s=1.0,
        jobs=2,
    )


def test_learning_curves_in_this_process():
    result = run_learning_curves(
        sources=("phantom-xray",), size=32, sizes=(16,), test_images=4, variants=("invertible",)
    )

    (point,) = result["sources"]["phantom-xray"]["methods"]["invertible"]["points"]
    assert result["jobs"] == 1 and point["images"] == 16 and point["curve"]
    assert math.isinf(point["fit"]["psnr"]) and point["budget"]["time_clock"] == "cpu"


def test_learning_curves_runs_every_fit_and_records_its_curve(curves):
    xray = curves["sources"]["phantom-xray"]
    aae = xray["methods"]["aae-scramble"]
    inv = xray["methods"]["invertible"]

    assert "error" in curves["sources"]["no-such-source"]
    assert [p["images"] for p in aae["points"]] == [16, 24]
    for p in aae["points"]:
        assert math.isfinite(p["unseen"]["psnr"]) and p["unseen"]["bpp"] == pytest.approx(4, 0.1)
        assert p["curve"] and "val_psnr_db" in p["curve"][-1]
        assert p["stopped"] in ("converged", "epochs", "time limit")
        assert p["budget"]["time_limit_s"] == max(1.0, 0.05 * p["images"])
        assert p["budget"]["time_clock"] == "cpu" and p["cpu_s_per_epoch"] > 0
    assert all(math.isinf(p["unseen"]["psnr"]) for p in inv["points"])
    assert set(aae["assessment"]) == {"data", "compute", "why_data", "why_compute"}
    json.dumps(curves)  # plain JSON types only
    typed = LearningCurvesResults.from_json(curves, source="the learning curves")
    assert typed.to_json() == curves  # the benchmark writes its declared results
    assert target_rows(typed)[0][:3] == ("deepedn", 24.0, None)  # not run here


def test_learning_curves_rejects_unknown_variant():
    with pytest.raises(ValueError, match="unknown variant"):
        run_learning_curves(variants=("rot13",))


def test_learning_curves_section_and_figure(curves, tmp_path):
    results = tmp_path / "results"
    write_result(
        result_document("learning-curves", "medfed bench learning-curves", {}, curves, 12.0),
        results,
    )
    doc = tmp_path / "docs" / "BENCHMARKS.md"

    render_report(results, doc, tmp_path / "docs" / "bench")

    text = doc.read_text()
    assert "## Learned encryptors at their best: learning curves" in text
    assert "| `aae-scramble` | 24 |" in text and "| `invertible` | 16 |" in text
    assert "more data would help?" in text and "Bao et al. 2021" in text
    assert "sized for a GPU" in text
    # the Targets table at the top: measured for aae-scramble, not for deepedn (not run)
    assert "| `aae-scramble` >= 25 dB on unseen phantom X-rays (learning curves) |" in text
    assert (
        "| `deepedn` >= 24 dB on unseen phantom X-rays (learning curves) | not measured |" in text
    )
    figure = tmp_path / "docs" / "bench" / "learning_curves_phantom-xray.png"
    assert figure.stat().st_size > 1000
    assert "![learning curves on phantom-xray](bench/learning_curves_phantom-xray.png)" in text


def test_method_pictures_grid(tmp_path):
    images = smooth_images(5, 1, 24, 8)  # 3 leak, 2 are attacked
    pictures: dict = {}
    evaluate(["aes-gcm", "lossless-aes"], images, 8, kpa_seconds=0.1, repeats=1, pictures=pictures)

    png = method_pictures(pictures, 8, tmp_path / "m.png", "test")

    assert set(pictures) == {"aes-gcm", "lossless-aes"}
    for pic in pictures.values():
        assert pic["original"].shape == pic["decrypted"].shape == pic["kpa"].shape == (1, 1, 24, 24)
        assert pic["cipher"].dtype == np.uint8
        np.testing.assert_array_equal(pic["original"], pic["decrypted"])
    width, height = Image.open(png).size
    assert width > height > 100  # 5 columns, 2 rows
    assert len(COLUMNS) == 5
    with pytest.raises(ValueError, match="no method pictures"):
        method_pictures({}, 8, tmp_path / "none.png")


def test_bench_encryption_writes_pictures_beside_its_json(tmp_path, monkeypatch):
    def fake_split(source, n_fit, n_test, size, seed):
        return smooth_images(n_fit, 1, size, 8, seed=1), smooth_images(n_test, 1, size, 8), 8

    monkeypatch.setattr(bench, "site_split", fake_split)
    out = tmp_path / "enc.json"

    status = cli.main(
        ["bench", "encryption", "--data", "phantom-xray", "--methods", "aes-gcm",
         "--images", "4", "--fit-images", "6", "--size", "24", "--kpa-seconds", "0.1",
         "--repeats", "1", "--out", str(out)]
    )  # fmt: skip

    assert status == 0
    doc = json.loads(out.read_text())
    assert doc["details"]["fit_images"] == 6 and doc["images"] == 4
    assert Image.open(tmp_path / "enc.png").size[0] > 100


def test_rate_distortion_pictures_reach_the_report(tmp_path):
    results = tmp_path / "results"
    rd = run_rate_distortion(
        ["aes-gcm", "lossless-aes"],
        sources=("phantom-xray",),
        size=16,
        images=4,
        fit_images=6,
        kpa_seconds=0.1,
        pictures_dir=results,
    )
    write_result(result_document("rate-distortion", "medfed bench rate-distortion", {}, rd, 1.0),
                 results)  # fmt: skip
    doc = tmp_path / "docs" / "BENCHMARKS.md"

    render_report(results, doc, tmp_path / "docs" / "bench")

    entry = load_results(results)["rate-distortion"]["results"]["sources"]["phantom-xray"]
    assert entry["pictures"] == "rate-distortion-phantom-xray.png"
    assert rd["fit_images"] == 6
    assert (tmp_path / "docs" / "bench" / "rate-distortion-phantom-xray.png").is_file()
    assert "![method pictures on phantom-xray](bench/rate-distortion-phantom-xray.png)" in (
        doc.read_text()
    )


def test_training_options_reach_every_learned_method():
    from benchmarks.encryption import _accepts
    from encryption.registry import encryptor_class

    for name in ("deepedn", "aae-scramble", "learned-codec-aes", "invertible"):
        assert _accepts(encryptor_class(name), "time_clock"), name
        assert _accepts(encryptor_class(name), "time_limit_s"), name
    assert not _accepts(encryptor_class("aes-gcm"), "time_clock")
