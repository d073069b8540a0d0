"""`medfed attack updates` end to end on phantom X-rays and MRI (few iterations)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from simulations.cli import main

STUDY = """
name = "leak"
num-sites = 2
min-sites = 1
image-size = 16
phantom-patients = 12
phantom-size = 64
exchange = "none"
batch-size = 2
"""


@pytest.fixture
def study_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDFED_DATA_HOME", str(tmp_path / "data"))
    path = tmp_path / "leak.toml"
    path.write_text(STUDY)
    return path


def test_attack_updates_writes_scored_reconstructions_for_xray(study_file, tmp_path):
    # Prepare
    out = tmp_path / "out"
    # Execute: both models, batches of 1 and 3 (1 and 2 local steps at batch-size 2)
    rc = main(
        [
            "attack", "updates", str(study_file), "--set", "out-dir=" + str(tmp_path / "run"),
            "--model", "study,mlp", "--batch-sizes", "1,3", "--defenses", "none,client-fixed",
            "--local-optimizer", "sgd", "--iterations", "2", "--restarts", "1", "--out", str(out),
        ]
    )  # fmt: skip
    # Assert
    assert rc == 0
    doc = json.loads((out / "leakage.json").read_text())
    assert doc["schema"] == 1 and doc["study"] == "leak" and doc["round"] == 1
    keys = {"model", "defense", "batch_size", "local_steps", "psnr", "ssim", "mean_guess_psnr"}
    keys |= {"recovered_share", "seconds", "attack", "observer"}
    assert all(keys <= set(a) for a in doc["attacks"])
    got = {
        (a["model"], a["attack"], a["defense"], a["observer"], a["batch_size"])
        for a in doc["attacks"]
    }
    assert ("mlp", "analytic", "client-fixed", "global-model", 3) in got
    assert ("study", "optimisation", "none", "server", 1) in got
    assert not any(a["model"] == "study" and a["attack"] == "analytic" for a in doc["attacks"])
    for a in doc["attacks"]:
        assert len(a["psnr"]) == len(a["ssim"]) == a["batch_size"]
        assert a["local_steps"] == int(np.ceil(a["batch_size"] / 2))  # 1 epoch, batch-size 2
    # one image, fully connected first layer: read back exactly, clipped (the server's
    # view under client-fixed: clipping only scales the update) or not
    exact = [
        a for a in doc["attacks"]
        if a["model"] == "mlp" and a["attack"] == "analytic" and a["batch_size"] == 1
        and a["observer"] == "server"
    ]  # fmt: skip
    assert exact and all(a["psnr"][0] >= 60 and a["recovered_share"] == 1.0 for a in exact)
    # the noised global model (z = 1, C = 1) hides it from the analytic attack
    noised = [
        a for a in doc["attacks"] if a["observer"] == "global-model" and a["attack"] == "analytic"
    ]
    assert all(a["recovered_share"] == 0.0 for a in noised)
    assert (out / "leakage.png").stat().st_size > 1000 and "leakage.png" in (
        out / "leakage.md"
    ).read_text()


def test_attack_updates_runs_on_mri_with_local_dpsgd(study_file, tmp_path):
    out = tmp_path / "mri"
    rc = main(
        [
            "attack", "updates", str(study_file), "--set", "modality=mri",
            "--set", "out-dir=" + str(tmp_path / "run-mri"), "--model", "mlp",
            "--defenses", "local-dpsgd", "--iterations", "2", "--restarts", "1", "--out", str(out),
        ]
    )  # fmt: skip
    assert rc == 0
    doc = json.loads((out / "leakage.json").read_text())
    attacks = {a["attack"]: a for a in doc["attacks"]}
    assert set(attacks) == {"analytic", "optimisation"}
    assert attacks["optimisation"]["labels"] == "known"  # MRI masks are given to the attacker
    assert attacks["analytic"]["recovered_share"] == 0.0  # DP-SGD's noise at the site


def test_attack_updates_rejects_bad_input_with_one_line(study_file, tmp_path, capsys):
    rc = main(["attack", "updates", str(study_file), "--sites", "5", "--out", str(tmp_path / "x")])
    assert rc == 2
    assert "--sites: site 5 is outside 0..1" in capsys.readouterr().err
    rc = main(["attack", "updates", str(study_file), "--round", "2", "--model", "mlp"])
    assert rc == 2 and "mlp is attacked in round 1 only" in capsys.readouterr().err
