"""`medfed attack updates` and the `leakage` benchmark end to end on phantom
X-rays and MRI (few iterations; one phantom data folder for the module)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

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


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models: one torch thread is fastest on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_home(tmp_path_factory):
    """One phantom data folder for the module (generating it is most of a test's time)."""
    return tmp_path_factory.mktemp("leak-data")


@pytest.fixture
def study_file(tmp_path, monkeypatch, data_home):
    monkeypatch.setenv("MEDFED_DATA_HOME", str(data_home))
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
    assert doc["global_models"]["study"]["source"] == "the initial model"
    # the optimisation attack's prior: the server's held-out images (3 here, so 2 components)
    assert doc["prior"]["reference_images"] == 3 and doc["prior"]["components"] == 2
    keys = {"model", "defense", "batch_size", "local_steps", "psnr", "ssim", "mean_guess_psnr"}
    keys |= {"recovered_share", "seconds", "attack", "observer", "psnr_scale_aligned"}
    keys |= {"mean_guess_psnr_scale_aligned", "gain_db", "gain_scale_aligned_db"}
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


def test_a_later_round_is_attacked_with_the_federations_final_model(
    study_file, tmp_path, monkeypatch
):
    # Prepare: the federation of rounds 1..R-1 stands in for a quick, recorded one
    # (the real run: the slow test below); its final model is a perturbed initial one
    import simulations.runner
    from privacy.attack import weights_digest
    from simulations.runner import StudyResult
    from study.task import build_model

    torch.manual_seed(0)
    final = {k: v.numpy() + 0.01 for k, v in build_model("xray").state_dict().items()}
    runs = []

    def federation(study):
        runs.append(study)
        return StudyResult(None, [], final, tmp_path, 0.0)

    monkeypatch.setattr(simulations.runner, "run_simulated_study", federation)
    out = tmp_path / "round3"
    # Execute
    rc = main(
        [
            "attack", "updates", str(study_file), "--set", "out-dir=" + str(tmp_path / "run3"),
            "--round", "3", "--attacks", "optimisation", "--iterations", "1", "--restarts", "1",
            "--prior", "none", "--out", str(out),
        ]
    )  # fmt: skip
    # Assert: one federation of 2 rounds in the attack's folder; its model is the one attacked
    assert rc == 0
    (study,) = runs
    assert study.num_rounds == 2 and study.out_dir == str(out / "federation")
    doc = json.loads((out / "leakage.json").read_text())
    assert doc["round"] == 3 and "prior" not in doc
    assert doc["global_models"]["study"]["sha256"] == weights_digest(
        {k: torch.from_numpy(v) for k, v in final.items()}
    )
    assert doc["attacks"][0]["local_steps"] == 1


def _key(p):
    return (
        p["model"],
        p["attack"],
        p["local_optimizer"],
        p["defense"],
        p["observer"],
        p["batch_size"],
    )


def test_leakage_benchmark_writes_its_results_and_section(tmp_path, monkeypatch, data_home):
    # Prepare: the benchmark at toy settings on the module's phantoms
    from benchmarks.common import load_results
    from benchmarks.leakage import (
        auroc_epsilon_points,
        remeasure_analytic,
        run_leakage,
    )
    from benchmarks.report import render_report
    from benchmarks.sections_leakage import leakage_section
    from benchmarks.suite import BENCHMARKS, run_benchmark

    monkeypatch.setenv("MEDFED_DATA_HOME", str(data_home))
    results = tmp_path / "results"
    settings = dict(
        modalities=("xray",), patients=12, image_size=16, images=1, batch_sizes=(2,),
        noise_multipliers=(1.0,), timing_sizes=(16,), iterations=2, restarts=1,
    )  # fmt: skip
    # Execute
    run_benchmark("leakage", quick=True, results_dir=results, overrides=settings)
    doc = render_report(results, tmp_path / "BENCHMARKS.md", tmp_path / "bench")
    # Assert: per defence and observer both attacks, the epsilon curve, timing, picture
    r = load_results(results)["leakage"]["results"]
    points = r["modalities"]["xray"]["points"]
    views = {(p["model"], p["attack"], p["defense"], p["observer"]) for p in points}
    assert ("study", "optimisation", "client-fixed", "global-model") in views
    assert ("mlp", "analytic", "local-dpsgd", "server") in views
    assert {p["batch_size"] for p in points} == {1, 2}
    sgd = [p for p in points if p["local_optimizer"] == "sgd"]  # the papers' setting, no defence
    assert {(p["model"], p["defense"]) for p in sgd} == {("study", "none"), ("mlp", "none")}
    per_image = r["modalities"]["xray"]["per_image"]
    assert [(p["defense"], p["seed"]) for p in per_image] == [("none", 0), ("local-dpsgd", 0)]
    curve = r["modalities"]["xray"]["epsilon_curve"]
    dp = [c for c in curve if c["noise_multiplier"] == 1.0]
    assert len(dp) == 2 and all(c["epsilon"] == pytest.approx(4.7285, abs=1e-3) for c in dp)
    assert [c["epsilon"] for c in curve if c["noise_multiplier"] == 0.0] == [None, None]
    (timing,) = r["timing"]
    assert timing["image_size"] == 16 and timing["seconds_per_image"] > 0
    assert timing["steps_per_iteration"]["median"] > 1  # simulates a step, then differentiates
    text = doc.read_text()
    assert "## Update leakage" in text and "bench/leakage-xray.png" in text
    assert (tmp_path / "bench" / "leakage-xray.png").is_file()
    assert (tmp_path / "bench" / "leakage_epsilon.png").is_file()
    assert "`auroc_points` hook" in text  # AUROC against epsilon: the hook is named while empty
    assert "leakage" in BENCHMARKS
    # Execute: re-measure only the analytic rows, in place
    before = load_results(results)["leakage"]["results"]["modalities"]["xray"]
    remeasure_analytic(results)
    after = load_results(results)["leakage"]["results"]
    # Assert: the same rows in the same order; the optimisation rows untouched, the
    # analytic ones measured again (the attack is deterministic: same numbers here)
    rows = after["modalities"]["xray"]["points"]
    assert [_key(p) for p in rows] == [_key(p) for p in before["points"]]
    for old, new in zip(before["points"], rows, strict=True):
        assert new == old if old["model"] == "study" else new["psnr"] == pytest.approx(old["psnr"])
    curve = after["modalities"]["xray"]["epsilon_curve"]
    assert [(c["model"], c["noise_multiplier"]) for c in curve] == [
        (c["model"], c["noise_multiplier"]) for c in before["epsilon_curve"]
    ]
    assert after["analytic_remeasured"]["command"].endswith("--analytic-only")
    text = render_report(results, tmp_path / "BENCHMARKS.md", tmp_path / "bench").read_text()
    assert "rows (model `mlp`, both tables and the epsilon curve) were re-measured" in text
    hooked = run_leakage(
        modalities=(), timing_sizes=(), auroc_points=lambda _: [(float("inf"), 0.71), (2.0, 0.66)]
    )
    points = [{"epsilon": 2.0, "auroc": 0.66}, {"epsilon": None, "auroc": 0.71}]
    assert hooked["auroc_epsilon"] == points
    lines = []
    fake = {"command": "c", "created": "t", "seconds": 1.0, "results": hooked}
    leakage_section({"leakage": fake}, lines.append, tmp_path / "plots", Path("plots"))
    assert "![AUROC against epsilon](plots/auroc_epsilon.png)\n" in lines
    assert (tmp_path / "plots" / "auroc_epsilon.png").is_file()
    with pytest.raises(ValueError, match="AUROC in"):
        auroc_epsilon_points([(1.0, 1.5)])


@pytest.mark.slow
def test_attack_updates_attacks_round_2_against_the_federated_model(study_file, tmp_path):
    # Prepare: round 2's global model is the study's model after one federated round
    from privacy.attack import weights_digest
    from study.schema import read_rounds
    from study.task import build_model

    out = tmp_path / "round2"
    torch.manual_seed(0)  # the study's seed: the initial model the server starts from
    initial = weights_digest(build_model("xray").state_dict())
    # Execute
    rc = main(
        [
            "attack", "updates", str(study_file), "--set", "out-dir=" + str(tmp_path / "run2"),
            "--round", "2", "--attacks", "optimisation", "--iterations", "2", "--restarts", "1",
            "--out", str(out),
        ]
    )  # fmt: skip
    # Assert: the federation ran round 1 only, and the attack used its final model
    assert rc == 0
    doc = json.loads((out / "leakage.json").read_text())
    model = doc["global_models"]["study"]
    assert doc["round"] == 2 and "rounds 1..1" in model["source"]
    assert [r.round for r in read_rounds(out / "federation")] == [1]
    assert model["sha256"] != initial
    (attack,) = doc["attacks"]
    assert attack["model"] == "study" and attack["local_optimizer"] == "adam"
    assert len(attack["psnr"]) == 1 and np.isfinite(attack["psnr"][0])


def test_attack_updates_rejects_bad_input_with_one_line(study_file, tmp_path, capsys):
    rc = main(["attack", "updates", str(study_file), "--sites", "5", "--out", str(tmp_path / "x")])
    assert rc == 2
    assert "--sites: site 5 is outside 0..1" in capsys.readouterr().err
    rc = main(["attack", "updates", str(study_file), "--round", "2", "--model", "mlp"])
    assert rc == 2 and "mlp is attacked in round 1 only" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--tv-weight", "inf", "--tv-weight inf: a finite number from 0 to 1000"),
        ("--tv-weight", "nan", "--tv-weight nan: a finite number from 0 to 1000"),
        ("--tv-weight", "-0.5", "--tv-weight -0.5: a finite number from 0 to 1000"),
        ("--tv-weight", "1e9", "--tv-weight 1000000000.0: a finite number from 0 to 1000"),
        ("--iterations", "100000000", "--iterations 100000000: from 1 to 100000"),
        ("--iterations", "0", "--iterations 0: from 1 to 100000"),
        ("--pixel-iterations", "100001", "--pixel-iterations 100001: from 0 to 100000"),
        ("--restarts", "1000", "--restarts 1000: from 1 to 100"),
        ("--prior-components", "-1", "--prior-components -1: from 0 to 4096"),
        ("--prior-components", "5000", "--prior-components 5000: from 0 to 4096"),
        ("--round", "0", "--round 0: from 1 to 1000"),
        ("--round", "1001", "--round 1001: from 1 to 1000"),
        ("--seed", "-1", "--seed -1: from 0 to 2147483647"),
        ("--seed", "4294967296", "--seed 4294967296: from 0 to 2147483647"),
        ("--batch-sizes", "1,5000", "--batch-sizes 5000: from 1 to 4096"),
        ("--batch-sizes", "0", "--batch-sizes 0: from 1 to 4096"),
    ],
)
def test_attack_updates_bounds_its_numeric_flags(
    study_file, tmp_path, capsys, flag, value, message
):
    # Execute: one out-of-range value, nothing else unusual (no attack runs)
    rc = main(["attack", "updates", str(study_file), flag, value, "--out", str(tmp_path / "x")])
    # Assert: one error line that names the flag and its range
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_attack_updates_help_states_the_bounds(capsys):
    from privacy import attack

    with pytest.raises(SystemExit):
        main(["attack", "updates", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for bound in (attack.MAX_ITERATIONS, attack.MAX_RESTARTS, attack.MAX_TV_WEIGHT):
        assert f"at most {bound:g}" in text


@pytest.mark.slow
def test_federated_dp_points_are_the_studies_own_auroc_and_epsilon(
    tmp_path, data_home, monkeypatch
):
    # Prepare: two tiny federated studies, without DP and with local DP-SGD at z = 1
    from benchmarks.leakage import federated_dp_points
    from study.config import Study
    from study.privacy import epsilon_spent
    from study.schema import read_run

    monkeypatch.setenv("MEDFED_DATA_HOME", str(data_home))
    settings = {"num-sites": 3, "num-rounds": 1, "image-size": 16, "phantom-patients": 48,
                "phantom-size": 32, "holdout-images": 16, "method": "aes-gcm"}  # fmt: skip
    # Execute
    points = federated_dp_points(
        settings=settings, modes={"local-dpsgd": (1.0,)}, work_dir=tmp_path
    )
    # Assert: no DP has no bound; the DP study's epsilon and AUROC are its summary's
    (none_eps, none_auroc, none_mode, _), (dp_eps, dp_auroc, dp_mode, z) = points
    assert (none_mode, dp_mode, z) == ("none", "local-dpsgd", 1.0)
    assert none_eps == float("inf") and 0 <= none_auroc <= 1
    run = read_run(tmp_path / "local-dpsgd-1")
    assert dp_auroc == run.summary.final["auroc"]
    study = Study.from_toml(
        "simulations/studies/demo.toml",
        {**settings, "dp": "local-dpsgd", "dp-noise-multiplier": 1.0, "min-sites": 3},
    )
    worst = max(
        epsilon_spent(study, 1, num_examples=s.examples).epsilon for s in run.rounds[0].sites
    )
    assert dp_eps == pytest.approx(worst)


def test_auroc_epsilon_is_re_measured_in_place_with_the_recorded_studies(tmp_path, monkeypatch):
    # Prepare: a leakage result file as the suite writes it, with its auroc_studies
    from benchmarks import leakage
    from benchmarks.common import SCHEMA, load_results, write_result
    from benchmarks.sections_leakage import leakage_section

    results = tmp_path / "results"
    studies = {"modes": {"client-fixed": [0.1]}}
    old = {
        "schema": SCHEMA,
        "benchmark": "leakage",
        "command": "medfed bench leakage",
        "created": "2026-11-30T00:00:00+00:00",
        "seconds": 1.0,
        "settings": {"auroc_studies": studies},
        "results": {"modalities": {}, "auroc_epsilon": [{"epsilon": 5.0, "auroc": 0.4}]},
    }
    write_result(old, results)
    asked = []

    def studies_run(progress, **kwargs):  # the federated studies, as recorded
        asked.append(kwargs)
        return [(float("inf"), 0.9, "none", 0.0), (7.5, 0.6, "client-fixed", 0.1)]

    monkeypatch.setattr(leakage, "federated_dp_points", studies_run)
    # Execute
    leakage.remeasure_auroc_epsilon(results)
    # Assert: the recorded studies ran again; their points replace the old; the page says so
    assert asked == [studies]
    after = load_results(results)["leakage"]["results"]
    assert after["auroc_epsilon"] == [
        {"epsilon": 7.5, "auroc": 0.6, "dp": "client-fixed", "noise_multiplier": 0.1},
        {"epsilon": None, "auroc": 0.9, "dp": "none", "noise_multiplier": 0.0},
    ]
    assert after["auroc_remeasured"]["command"].endswith("--auroc-epsilon-only")
    assert old["results"]["auroc_epsilon"] != after["auroc_epsilon"]
    lines: list[str] = []
    leakage_section(load_results(results), lines.append, tmp_path / "plots", Path("plots"))
    text = "\n".join(lines)
    assert "The studies of AUROC against epsilon (client-side DP now averages" in text
    assert "| client-fixed | 0.10 | 7.50 | 0.600 |" in text
