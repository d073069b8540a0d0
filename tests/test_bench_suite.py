"""Benchmark suite: measurement helpers on tiny inputs and the renderer (no timed assertions)."""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import pytest

from benchmarks.common import (
    PeakRss,
    load_results,
    machine_info,
    ratio_stats,
    result_document,
    summarize,
    time_interleaved,
    write_result,
)
from benchmarks.encryption import (
    codec_sizes,
    conv_throughput,
    flops_per_image,
    run_rate_distortion,
    run_speed,
)
from benchmarks.report import fmt, fmt_ratio, render_report, secure_verdict
from simulations.commands.bench_suite import add_bench_commands, main


def test_summarize_median_spread_and_nan():
    stats = summarize([3.0, 1.0, 2.0, 10.0, float("nan")])
    assert stats["median"] == 2.5
    assert (stats["min"], stats["max"], stats["n"]) == (1.0, 10.0, 4)
    assert stats["iqr"] > 0
    assert math.isnan(summarize([])["median"])


def test_time_interleaved_runs_round_robin_and_ratio():
    calls = []
    times = time_interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=0
    )
    assert calls == ["a", "b"] * 3
    assert len(times["a"]) == 3
    ratios = ratio_stats({"a": [1.0, 2.0], "b": [2.0, 4.0]}, "a")
    assert ratios["b"]["median"] == 0.5 and ratios["a"]["median"] == 1.0


def test_time_interleaved_repeats_fast_calls_to_a_minimum_sample_time():
    calls = []
    times = time_interleaved({"fast": lambda: calls.append(1)}, repeats=2, min_time_s=0.001)
    assert len(calls) > 3  # warm-up once, then several calls per sample
    assert len(times["fast"]) == 2


def test_fmt_ratio_small_ratios_as_fractions():
    assert fmt_ratio(0.5) == "0.50"
    assert fmt_ratio(0.0002) == "1/5,000"
    assert fmt_ratio(float("nan")) == "n/a"


def test_codec_sizes_reference_lines():
    rng = np.random.default_rng(0)
    flat = np.zeros((2, 1, 32, 32), np.uint8)
    noise = rng.integers(0, 256, (2, 1, 32, 32), dtype=np.uint8)
    flat_bpp, noise_bpp = codec_sizes(flat, 8), codec_sizes(noise, 8)
    assert flat_bpp["raw"] == 8.0
    assert flat_bpp["png"] < 2 < noise_bpp["png"]
    assert codec_sizes(noise.astype(np.uint16) * 16, 12)["raw"] == 16.0


def _samples_taken(rss: PeakRss, count: int, timeout_s: float = 10.0) -> None:
    """Wait (with a deadline) until `rss` has taken `count` more samples."""
    target, deadline = rss.samples + count, time.monotonic() + timeout_s
    while rss.samples < target:
        assert time.monotonic() < deadline, "PeakRss took no samples"
        time.sleep(0.005)


def test_peak_rss_sees_memory_allocated_in_the_measured_region():
    # Prepare: the process tree's peak before anything is allocated
    size = 256 * 2**20
    with PeakRss(interval_s=0.005) as before:
        _samples_taken(before, 2)
    # Execute: a block of known size, resident (written), held until sampled
    with PeakRss(interval_s=0.005) as rss:
        block = np.ones(size, np.uint8)
        _samples_taken(rss, 2)
        del block
    # Assert: the peak grew by about the block (pages of other allocations aside)
    grown = rss.peak_bytes - before.peak_bytes
    assert 0.9 * size <= grown <= size + 64 * 2**20, grown
    assert rss.method == "psutil" and rss.samples >= 2


def test_conv_throughput_counts_flops():
    res = conv_throughput(size=8, batch=1, channels=4, repeats=1)
    assert res["flops_per_call"] == 2 * 4 * 4 * 9 * 8 * 8
    assert res["flops_per_s"]["median"] > 0


def test_flops_per_image_handles_both_signatures():
    class WithChannels:
        def flops_per_image(self, h, w, channels=1):
            return h * w * channels

    class Without:
        def flops_per_image(self, h, w):
            return h * w

    assert flops_per_image(WithChannels(), 4, 4, 3) == 48
    assert flops_per_image(Without(), 4, 4, 3) == 16
    assert flops_per_image(object(), 4, 4, 1) is None


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory):
    """Tiny but real runs of every benchmark the report renders: speed,
    rate-distortion, and the federation's overhead, scaling and bandwidth
    (real studies on Flower's simulation engine)."""
    out = tmp_path_factory.mktemp("results")
    speed = run_speed(["aes-gcm", "bp-chaos"], size=32, images=4, repeats=1, fit_images=4)
    write_result(
        result_document("speed", "medfed bench speed --quick", {"repeats": 1}, speed, 1.0), out
    )
    rd = run_rate_distortion(
        ["aes-gcm", "lossless-aes"],
        sources=("phantom-xray", "no-such-source"),
        size=16,
        images=4,
        kpa_seconds=0.2,
        variants={"lossless-aes (png)": {"method": "lossless-aes", "config": {"codecs": ["png"]}}},
    )
    write_result(
        result_document("rate-distortion", "medfed bench rate-distortion", {}, rd, 1.0), out
    )
    # the federation sections are rendered from real (tiny) studies on Flower's
    # simulation engine, measured by the benchmark's own functions
    from benchmarks.federation import run_bandwidth, run_overhead, run_scaling

    overhead = run_overhead(num_sites=2, num_rounds=2, patients=24, image_size=32)
    write_result(
        result_document(
            "federation-overhead", "medfed bench federation-overhead", {}, overhead, 1.0
        ),
        out,
    )
    scaling = run_scaling(sites=(2, 512), patients_per_site=3, budget_s=1.0)
    write_result(
        result_document("federation-scaling", "medfed bench federation-scaling", {}, scaling, 1.0),
        out,
    )
    bw = run_bandwidth(
        exchanges=("archive",), image_sizes=(32,), num_sites=2, patients=24, share_per_round=4
    )
    write_result(result_document("bandwidth", "medfed bench bandwidth", {}, bw, 1.0), out)
    gpu = {"available": False, "reason": "no CUDA device"}
    write_result(result_document("gpu", "medfed bench gpu", {}, gpu, 0.0), out)
    return out


def test_speed_measures_ratio_to_aes_and_flops(results_dir):
    doc = load_results(results_dir)["speed"]["results"]
    methods = doc["methods"]
    assert methods["aes-gcm"]["encrypt_ratio_to_aes"]["median"] == 1.0
    assert methods["bp-chaos"]["flops_per_image"] > 0
    assert methods["bp-chaos"]["fraction_of_conv"]["median"] > 0
    assert methods["bp-chaos"]["conv_ceiling_images_s"] > 0


def test_rate_distortion_records_points_references_and_missing_sources(results_dir):
    rd = load_results(results_dir)["rate-distortion"]["results"]["sources"]
    xray = rd["phantom-xray"]
    assert xray["methods"]["aes-gcm"]["bpp"] > 8.0  # raw + container overhead
    assert xray["methods"]["lossless-aes"]["psnr"] == math.inf
    assert set(xray["references_bpp"]) == {"raw", "png", "jpegls", "jpeg2000"}
    assert "kpa_psnr" in xray["evaluate"]["methods"]["aes-gcm"]["attack"]
    assert "error" in rd["no-such-source"]
    # a variant is evaluated under its label, with its configuration recorded
    png = xray["methods"]["lossless-aes (png)"]
    assert png["psnr"] == math.inf and png["config"] == {"codecs": ["png"]}
    assert "kpa_psnr" in xray["evaluate"]["methods"]["lossless-aes (png)"]["attack"]


def test_aes_gcm_is_secure_by_the_metrics(monkeypatch):
    # AES output is random by design and a perfect cipher fails each alpha-0.01
    # test one time in a hundred: a fixed key and nonce stream make the verdict
    # reproducible. 16 images of 64 px give the correlation and chi-square tests
    # 65536 values (the fixture's 4 images of 16 px are too few to judge).
    import hashlib
    import os

    from conftest import smooth_images

    from encryption.evaluate import evaluate_method

    counter = iter(range(10**6))
    monkeypatch.setattr(
        os, "urandom", lambda n: hashlib.sha256(str(next(counter)).encode()).digest()[:n]
    )
    images = smooth_images(16, 1, 64, 8, seed=4)
    entry = evaluate_method("aes-gcm", images, 8, key=bytes(range(32)), kpa_seconds=1, repeats=1)

    ok, failed = secure_verdict(entry)
    entry["security"]["npcr_key"] = 50.0
    entry["details"]["key_npcr_pass_0.01"] = False  # what a key-insensitive cipher records

    assert ok and failed == []
    assert secure_verdict(entry) == (False, ["key NPCR"])


def test_render_report_only_from_json(results_dir, tmp_path):
    doc = tmp_path / "docs" / "BENCHMARKS.md"
    render_report(results_dir, doc, tmp_path / "docs" / "bench")
    text = doc.read_text()
    assert text.startswith("# medfed benchmarks")
    assert "| `aes-gcm` |" in text and "| `bp-chaos` |" in text
    assert "| `lossless-aes (png)` |" in text
    # bp-chaos misses the conv-fraction target; the cell says where its time went
    assert "of target: convolutions take 0% of its time, " in text
    assert "`medfed bench speed --quick`" in text
    assert "512 sites not run in this suite" in text
    assert "Skipped on this machine" in text
    assert "Not available here" in text
    assert (tmp_path / "docs" / "bench" / "rate_distortion.png").stat().st_size > 1000
    assert (tmp_path / "docs" / "bench" / "scaling.png").exists()
    docs = load_results(results_dir)
    ratio = docs["federation-overhead"]["results"]["ratio_of_medians"]
    assert f"{ratio:.2f}x" in text  # the overhead ratio comes from the real run's JSON
    bandwidth = docs["bandwidth"]["results"]["grid"][0]
    assert bandwidth["exchange"] == "archive" and bandwidth["bytes_per_round"]["model_up"] > 0
    assert [p["sites"] for p in docs["federation-scaling"]["results"]["points"]] == [2]


def test_report_command_and_missing_results(results_dir, tmp_path):
    doc = tmp_path / "B.md"
    assert main(["report", "--results", str(results_dir), "--doc", str(doc)]) == 0
    assert doc.exists()
    assert main(["report", "--results", str(tmp_path / "none"), "--doc", str(doc)]) == 2


def test_bad_result_file_named(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"schema": 99}))
    with pytest.raises(ValueError, match="x.json"):
        load_results(tmp_path)


def test_add_bench_commands_leaves_taken_names():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="bench")
    sub.add_parser("data")
    add_bench_commands(sub)
    args = parser.parse_args(["all", "--quick", "--only", "speed"])
    assert args.quick and args.only == "speed"
    assert parser.parse_args(["speed"]).benchmark_name == "speed"
    assert "data" in sub.choices and not hasattr(parser.parse_args(["data"]), "func")


def test_machine_info_and_fmt():
    info = machine_info()
    assert info["cpu_count"] >= 1 and "torch" in info["packages"]
    assert fmt(float("inf")) == "inf" and fmt(float("nan")) == "n/a" and fmt(True) == "yes"


def test_hook_into_medfed_bench(results_dir, tmp_path, monkeypatch):
    import simulations.commands.bench as bench
    from simulations.cli import main as medfed

    monkeypatch.setitem(bench.SUBCOMMANDS, "suite", add_bench_commands)
    doc = tmp_path / "B.md"
    assert medfed(["bench", "report", "--results", str(results_dir), "--doc", str(doc)]) == 0
    assert "## Headline" in doc.read_text()
    assert medfed(["bench", "all", "--only", "no-such-benchmark"]) == 2


def test_report_table_rejects_a_row_of_the_wrong_width() -> None:
    from benchmarks.report import table

    assert table(["a", "b"], [["1", "2"]]).count("|") == 9
    with pytest.raises(ValueError, match="2 cells for 3 columns"):
        table(["a", "b", "c"], [["1", "2"]])
