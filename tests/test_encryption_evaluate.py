"""The benchmark document (schema 1) and the `medfed bench encryption` /
`medfed methods` commands."""

from __future__ import annotations

import hashlib
import json
import math
import os

import pytest
from conftest import smooth_images

from encryption.evaluate import evaluate, evaluate_method, resolve_methods
from simulations import cli
from simulations.commands import bench

KEYS = {
    "lossless": None,
    "fidelity": {"mse", "psnr", "ssim"},
    "size": {"bytes_per_image", "bpp", "ratio_to_raw"},
    "security": {
        "entropy",
        "npcr",
        "uaci",
        "npcr_key",
        "uaci_key",
        "corr_h",
        "corr_v",
        "corr_d",
        "chi2",
        "deterministic",
    },
    "attack": {"kpa_psnr", "kpa_ssim", "mean_guess_psnr"},
    "speed": {"encrypt_mb_s", "decrypt_mb_s", "fit_s"},
    "details": None,
}


def _check_entry(entry: dict) -> None:
    assert set(entry) == set(KEYS)
    for block, keys in KEYS.items():
        if keys is not None:
            assert set(entry[block]) == keys, block
            for k, v in entry[block].items():
                assert isinstance(v, float | bool), (block, k, v)


def test_evaluate_method_aes_gcm(monkeypatch):
    # AES output is random by design, and a random cipher fails a 0.05-level test
    # one time in twenty: fix the key and the nonce stream so the verdicts are
    # deterministic (any change to AES-GCM or the metrics still shows).
    counter = iter(range(10**6))
    monkeypatch.setattr(
        os, "urandom", lambda n: hashlib.sha256(str(next(counter)).encode()).digest()[:n]
    )
    images = smooth_images(12, 1, 32, 12, seed=1)

    entry = evaluate_method(
        "aes-gcm", images, 12, key=bytes(range(32)), kpa_seconds=None, kpa_steps=50, repeats=1
    )

    _check_entry(entry)
    assert entry["lossless"] is True
    assert math.isinf(entry["fidelity"]["psnr"]) and entry["fidelity"]["mse"] == 0.0
    assert entry["size"]["ratio_to_raw"] == pytest.approx(1.0, abs=0.1)
    assert entry["security"]["entropy"] > 7.9
    assert entry["security"]["npcr"] > 99.0 and entry["security"]["npcr_key"] > 99.0
    assert abs(entry["security"]["corr_h"]) < 0.1
    assert entry["security"]["deterministic"] is False
    assert entry["attack"]["kpa_psnr"] == pytest.approx(entry["attack"]["mean_guess_psnr"], abs=0.5)
    assert entry["details"]["npcr_pass_0.001"] and entry["details"]["chi2_pass"]
    assert "entropy16" in entry["details"]


def test_evaluate_document_and_json(tmp_path):
    images = smooth_images(8, 4, 32, 16, seed=2)
    fit = smooth_images(8, 4, 32, 16, seed=3)

    doc = evaluate(
        "aes-gcm,lossless-aes",
        images,
        16,
        data="smooth",
        fit_images=fit,
        kpa_seconds=None,
        kpa_steps=50,
        repeats=1,
    )

    assert doc["schema"] == 1 and doc["data"] == "smooth" and doc["images"] == 8
    assert list(doc["methods"]) == ["aes-gcm", "lossless-aes"]
    for entry in doc["methods"].values():
        _check_entry(entry)
    lossless = doc["methods"]["lossless-aes"]
    assert lossless["size"]["ratio_to_raw"] < doc["methods"]["aes-gcm"]["size"]["ratio_to_raw"]
    assert lossless["details"]["ratio_to_lossless"] == pytest.approx(1.0)
    text = json.dumps(doc)
    assert (
        "Infinity" in text
        and json.loads(text)["methods"]["aes-gcm"]["fidelity"]["psnr"] == math.inf
    )


def test_resolve_methods():
    assert resolve_methods("aes-gcm, lossless-aes") == ["aes-gcm", "lossless-aes"]
    assert "aes-gcm" in resolve_methods("all")
    with pytest.raises(KeyError, match="valid methods"):
        resolve_methods("aes-gcm,rot13")


def test_bench_encryption_command(tmp_path, monkeypatch, capsys):
    def fake_split(source, n_fit, n_test, size, seed):
        return smooth_images(n_fit, 1, size, 8, seed=seed + 1), smooth_images(n_test, 1, size, 8), 8

    monkeypatch.setattr(bench, "site_split", fake_split)
    out = tmp_path / "bench.json"

    status = cli.main(
        [
            "bench",
            "encryption",
            "--data",
            "phantom-xray",
            "--methods",
            "aes-gcm,lossless-aes",
            "--images",
            "6",
            "--size",
            "24",
            "--kpa-seconds",
            "1",
            "--repeats",
            "1",
            "--out",
            str(out),
            "--config",
            'lossless-aes.codecs=["png"]',
        ]
    )

    assert status == 0
    table = capsys.readouterr().out
    assert "| method |" in table and "| lossless-aes |" in table and "| inf |" in table
    doc = json.loads(out.read_text())
    assert doc["images"] == 6 and set(doc["methods"]) == {"aes-gcm", "lossless-aes"}
    assert doc["details"]["configs"] == {"lossless-aes": {"codecs": ["png"]}}


def test_bench_config_values_and_errors(capsys):
    assert bench.parse_method_option("deepedn.time_limit_s=300") == ("deepedn", "time_limit_s", 300)
    assert bench.parse_method_option("deepedn.preset=paper") == ("deepedn", "preset", "paper")
    assert bench.parse_method_option("learned-codec-aes.target_psnr_db = 45.5") == (
        "learned-codec-aes",
        "target_psnr_db",
        45.5,
    )
    for bad, message in [
        ("deepedn.preset=paper", "'deepedn' is not among the methods run"),
        ("preset=paper", "expected METHOD.OPTION=VALUE"),
        ("aes-gcm.rounds=3", "rounds"),
    ]:
        argv = ["bench", "encryption", "--data", "phantom-xray", "--methods", "aes-gcm"]
        argv += ["--images", "4", "--size", "16", "--kpa-seconds", "0.1", "--config", bad]
        assert cli.main(argv) == 2, bad
        assert message in capsys.readouterr().err, bad


def test_bench_rejects_unknown_method(capsys):
    status = cli.main(["bench", "encryption", "--data", "phantom-xray", "--methods", "rot13"])

    assert status == 2
    assert "valid methods" in capsys.readouterr().err


def test_methods_command_json(capsys):
    assert cli.main(["methods", "--json"]) == 0

    rows = json.loads(capsys.readouterr().out)
    names = [r["name"] for r in rows]
    assert names[:2] == ["aes-gcm", "lossless-aes"]
    assert all(r["description"] for r in rows)
    assert rows[0]["lossless"] is True and rows[0]["learned"] is False


def test_key_change_is_judged_with_the_values_of_all_images(monkeypatch):
    # npcr_key / uaci_key average all 8 images: their pass/fail uses the critical
    # values of 8 x 32 x 32 values; the one-pixel change compares image 0 only.
    from encryption.metrics.security import ALPHAS, critical_values, npcr_critical, uaci_interval

    counter = iter(range(10**6))
    monkeypatch.setattr(
        os, "urandom", lambda n: hashlib.sha256(str(next(counter)).encode()).digest()[:n]
    )
    images = smooth_images(8, 1, 32, 8, seed=2)

    entry = evaluate_method(
        "aes-gcm", images, 8, key=bytes(range(32)), kpa_seconds=None, kpa_steps=50, repeats=1
    )

    details, sec = entry["details"], entry["security"]
    assert details["key_critical_values"] == critical_values(8 * 32 * 32)
    assert details["critical_values"] == critical_values(32 * 32)
    for alpha in ALPHAS:
        lo, hi = uaci_interval(8 * 32 * 32, alpha)
        assert details[f"key_npcr_pass_{alpha}"] == (
            sec["npcr_key"] >= npcr_critical(8 * 32 * 32, alpha)
        )
        assert details[f"key_uaci_pass_{alpha}"] == (lo <= sec["uaci_key"] <= hi)
