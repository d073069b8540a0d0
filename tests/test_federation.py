"""End-to-end studies on Flower's simulation engine (small, real: Ray, real
phantom files, real AES, real training)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from flwr.common.serde import message_to_proto

from encryption.keys import load_key_bundle
from server import strategy as strategy_module
from server.archive import Archive
from server.strategy import StudyStopped
from simulations.runner import run_simulated_study
from study.config import Study
from study.schema import read_rounds as read_records

pytestmark = pytest.mark.federation
SITE_KEYS = {"site", "ok", "sampled", "error", "bytes", "recon", "examples", "seconds"}
BYTE_KEYS = {
    "ciphertext_up",
    "ciphertext_down",
    "model_up",
    "model_down",
    "message_up",
    "message_down",
    "grant_up",
    "grant_down",
}


def small_study(out: Path, **changes) -> Study:
    base = dict(
        name="t",
        num_sites=2,
        num_rounds=2,
        min_sites=1,
        image_size=32,
        phantom_patients=48,
        phantom_size=64,
        share_per_round=4,
        batch_size=16,
        holdout_images=32,
        out_dir=str(out),
    )
    base.update(changes)
    study = Study(**base)
    study.validate()
    return study


def read_rounds(out: Path) -> list[dict]:
    """rounds.jsonl through the schema's reader (exact PSNRs back to infinity)."""
    return [r.to_json() for r in read_records(out)]


def strip_seconds(doc):
    if isinstance(doc, dict):
        return {k: strip_seconds(v) for k, v in doc.items() if k != "seconds"}
    if isinstance(doc, list):
        return [strip_seconds(v) for v in doc]
    return doc


@pytest.fixture(scope="module")
def archive_run(tmp_path_factory, monkeypatch_module):
    """One 3-round study; every reply a site sends is kept for inspection."""
    root = tmp_path_factory.mktemp("fed")
    monkeypatch_module.setenv("MEDFED_DATA_HOME", str(root / "data"))
    captured: list[bytes] = []
    original = strategy_module.MedfedStrategy._account_train_replies

    def spy(self, replies):
        captured.extend(message_to_proto(r).SerializeToString() for r in replies)
        return original(self, replies)

    monkeypatch_module.setattr(strategy_module.MedfedStrategy, "_account_train_replies", spy)
    study = small_study(root / "run", num_rounds=3)
    result = run_simulated_study(study)
    return study, result.summary.to_json(), captured


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_rounds_jsonl_has_exact_schema(archive_run):
    study, summary, _ = archive_run
    rounds = read_rounds(Path(study.out_dir))
    assert [r["round"] for r in rounds] == [1, 2, 3]
    for r in rounds:
        assert set(r) == {"round", "sites", "totals", "global", "seconds"}
        assert set(r["totals"]) == {
            "ciphertext_up",
            "ciphertext_down",
            "model_up",
            "model_down",
            "grant_up",
            "grant_down",
        }
        assert [s["site"] for s in r["sites"]] == ["site-0", "site-1"]
        for s in r["sites"]:
            assert set(s) == SITE_KEYS and set(s["bytes"]) == BYTE_KEYS
            assert set(s["recon"]) == {"mse", "psnr", "ssim", "exact"}
            assert set(s["seconds"]) == {"encrypt", "train", "decrypt"}
            assert s["ok"] is True and s["sampled"] is True
            assert s["error"] is None and s["examples"] > 0
            # AES-GCM is exact
            assert (
                s["recon"]["mse"] == 0.0
                and math.isinf(s["recon"]["psnr"])
                and s["recon"]["ssim"] == 1.0
            )
            assert s["bytes"]["message_up"] > s["bytes"]["model_up"] + s["bytes"]["ciphertext_up"]
        assert 0.0 <= r["global"]["auroc"] <= 1.0
        for k in r["totals"]:
            assert r["totals"][k] == sum(s["bytes"][k] for s in r["sites"])
    assert summary["status"] == "complete" and summary["rounds"] == 3
    out = Path(study.out_dir)
    for name in (
        "config.json",
        "summary.json",
        "report.md",
        "bandwidth.png",
        "task.png",
        "recon_psnr.png",
    ):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == sorted(
        f"round-{i}.{ext}" for i in (1, 2, 3) for ext in ("json", "npz")
    )


def test_ciphertext_bytes_equal_what_the_archive_received(archive_run):
    study, _, _ = archive_run
    out = Path(study.out_dir)
    index = Archive(out / "archive").index()
    for r in read_rounds(out):
        for s in r["sites"]:
            stored = [e for e in index if e["round"] == r["round"] and e["site"] == s["site"]]
            assert {e["kind"] for e in stored} == {"images", "labels"}
            assert s["bytes"]["ciphertext_up"] == sum(e["bytes"] for e in stored)
            for e in stored:
                blob = Archive(out / "archive").get(e["sha256"])
                assert len(blob) == e["bytes"]


def test_model_bytes_match_the_model_size(archive_run):
    from study.task import build_model

    study, _, _ = archive_run
    tensors = list(build_model("xray").state_dict().values())
    size = sum(t.numel() * t.element_size() for t in tensors)
    # arrays travel as .npy buffers: raw bytes plus one small header per tensor
    upper = size + 128 * len(tensors)
    for r in read_rounds(Path(study.out_dir)):
        for s in r["sites"]:
            assert size < s["bytes"]["model_up"] <= upper
            assert s["bytes"]["model_down"] == 2 * s["bytes"]["model_up"]  # train + evaluate


def test_no_site_message_carries_key_weights_or_plaintext(archive_run):
    from study.data import ensure_dataset, load_site
    from study.data.home import data_home

    study, _, captured = archive_run
    assert len(captured) == 2 * 3
    wire = b"".join(captured)
    for site in (0, 1):
        key, method, state = load_key_bundle(
            Path(study.out_dir) / "sites" / f"site-{site}" / "key-v0.bundle"
        )
        assert method == "aes-gcm" and key not in wire
        root = ensure_dataset(
            "xray",
            None,
            cache_root=data_home(),
            patients=study.phantom_patients,
            institutions=study.num_sites,
            seed=study.seed,
            size=study.phantom_size,
        )
        shard = load_site(
            root,
            "xray",
            image_size=study.image_size,
            partition_id=site,
            num_partitions=study.num_sites,
            cache_dir=Path(study.out_dir) / "probe",
        )
        for image in shard.train.images:
            row = np.ascontiguousarray(image[0, image.shape[1] // 2]).tobytes()  # a middle row
            assert row not in wire


def test_archive_is_unreadable_without_the_owners_key(archive_run):
    from encryption import IntegrityError, get_encryptor

    study, _, _ = archive_run
    out = Path(study.out_dir)
    key0, _, _ = load_key_bundle(out / "sites" / "site-0" / "key-v0.bundle")
    archive = Archive(out / "archive")
    entries = [e for e in archive.index() if e["site"] == "site-1" and e["kind"] == "images"]
    blob = archive.get(entries[0]["sha256"])
    with pytest.raises(IntegrityError):
        get_encryptor("aes-gcm", key0).decrypt(blob)


def test_resume_gives_the_same_rounds(archive_run, tmp_path):
    study, _, _ = archive_run
    full = Path(study.out_dir)
    killed = tmp_path / "killed"
    shutil.copytree(full, killed)
    # as if killed during round 3: its line, checkpoint and summary never written
    lines = (killed / "rounds.jsonl").read_text().splitlines()
    (killed / "rounds.jsonl").write_text("\n".join(lines[:2]) + "\n")
    (killed / "checkpoints" / "round-3.npz").unlink()
    (killed / "checkpoints" / "round-3.json").unlink()
    (killed / "summary.json").unlink()
    resumed = study.replace(out_dir=str(killed), resume=True)
    run_simulated_study(resumed)
    assert strip_seconds(read_rounds(killed)) == strip_seconds(read_rounds(full))
    assert json.loads((killed / "summary.json").read_text())["status"] == "complete"


def test_failed_site_is_reported_and_study_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDFED_DATA_HOME", str(tmp_path / "data"))
    study = small_study(
        tmp_path / "run", num_sites=3, min_sites=2, fault_sites="1:round=2", exchange="consortium"
    )
    run_simulated_study(study)
    rounds = read_rounds(tmp_path / "run")
    r2 = {s["site"]: s for s in rounds[1]["sites"]}
    assert r2["site-1"]["ok"] is False and "injected fault" in r2["site-1"]["error"]
    assert r2["site-0"]["ok"] and r2["site-2"]["ok"]
    # consortium: in round 2 each site received the other sites' round-1 ciphertext
    r1 = {s["site"]: s for s in rounds[0]["sites"]}
    assert (
        r2["site-0"]["bytes"]["ciphertext_down"]
        == r1["site-1"]["bytes"]["ciphertext_up"] + r1["site-2"]["bytes"]["ciphertext_up"]
    )
    assert rounds[0]["totals"]["ciphertext_down"] == 0
    # grantees trained on peers' images too
    assert r2["site-0"]["examples"] == r1["site-0"]["examples"] + 2 * study.share_per_round


def test_study_stops_below_min_sites_and_keeps_rounds(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDFED_DATA_HOME", str(tmp_path / "data"))
    study = small_study(
        tmp_path / "run", num_sites=2, min_sites=2, num_rounds=3, fault_sites="0:round=2"
    )
    with pytest.raises(Exception) as info:
        run_simulated_study(study)
    chain, exc = [], info.value
    while exc is not None:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    assert any(isinstance(e, StudyStopped) for e in chain) or "min-sites" in str(info.value)
    assert [r["round"] for r in read_rounds(tmp_path / "run")] == [1]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["stopped_round"] == 2
    assert "site-0" in json.dumps(summary["failed_sites"])
