"""`medfed sweep`: a grid of real studies and their comparison."""

from __future__ import annotations

import json

import pytest

from simulations.cli import main
from simulations.sweep import Sweep
from study.config import StudyError

BASE = """
name = "tiny"
num-sites = 2
num-rounds = 1
min-sites = 1
image-size = 32
phantom-patients = 40
phantom-size = 64
share-per-round = 4
holdout-images = 16
"""


@pytest.mark.federation
def test_sweep_compares_exchange_policies(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDFED_DATA_HOME", str(tmp_path / "data"))
    (tmp_path / "base.toml").write_text(BASE)
    (tmp_path / "sweep.toml").write_text(
        'name = "s"\nstudy = "base.toml"\n[set]\nlink-mbps = "10,100"\n'
        '[grid]\nexchange = ["none", "archive"]\n'
    )
    assert main(["sweep", str(tmp_path / "sweep.toml"), "--out", str(tmp_path / "out")]) == 0
    doc = json.loads((tmp_path / "out" / "comparison.json").read_text())
    rows = {r["exchange"]: r for r in doc["rows"]}
    assert rows["none"]["ciphertext_up_per_round"] == 0
    assert rows["archive"]["ciphertext_up_per_round"] > 0
    assert rows["none"]["model_per_round"] == rows["archive"]["model_per_round"]
    for row in rows.values():
        assert row["upload_s_10mbps"] == pytest.approx(10 * row["upload_s_100mbps"])
        assert row["status"] == "complete"
    assert (tmp_path / "out" / "comparison.md").read_text().count("| none |") == 1
    assert (tmp_path / "out" / "traffic.png").stat().st_size > 0
    for point in ("exchange=none", "exchange=archive"):
        assert (tmp_path / "out" / point / "rounds.jsonl").is_file()


def test_sweep_validates_every_point_before_running(tmp_path):
    (tmp_path / "base.toml").write_text(BASE)
    (tmp_path / "sweep.toml").write_text('study = "base.toml"\n[grid]\nnum-sites = [2, 0]\n')
    with pytest.raises(StudyError, match="num-sites"):
        Sweep.from_toml(tmp_path / "sweep.toml")
    (tmp_path / "sweep.toml").write_text('study = "base.toml"\n[grids]\nnum-sites = [2]\n')
    with pytest.raises(StudyError, match="grids"):
        Sweep.from_toml(tmp_path / "sweep.toml")


def test_shipped_sweeps_are_valid():
    from pathlib import Path

    studies = Path(__file__).resolve().parent.parent / "simulations" / "studies"
    bandwidth = Sweep.from_toml(studies / "bandwidth.toml")
    assert len(bandwidth.points()) == 18
    assert {p["method"] for p in bandwidth.points()} == {"aes-gcm", "learned-codec-aes"}
    assert bandwidth.study(bandwidth.points()[0]).link_speeds_mbps == (10.0, 100.0, 1000.0)
    duel = Sweep.from_toml(studies / "none-vs-consortium.toml")
    assert [p["exchange"] for p in duel.points()] == ["none", "consortium"]
    defences = Sweep.from_toml(studies / "defences.toml")
    assert defences.privacy is not None
    assert [defences.study(p).num_sites for p in defences.points()] == [4] * 5


def test_points_sweep_fills_keys_from_the_base_and_refuses_mistakes(tmp_path):
    from simulations.sweep import point_columns

    (tmp_path / "base.toml").write_text(BASE)
    sweep_file = tmp_path / "sweep.toml"
    sweep_file.write_text(
        'study = "base.toml"\n[[point]]\ndp = "none"\n'
        '[[point]]\nsecure-aggregation = "secagg+"\nexchange = "none"\nnum-sites = 3\n'
        "[privacy]\nattack-iterations = 3\nkpa = false\n"
    )
    sweep = Sweep.from_toml(sweep_file)
    assert sweep.keys == ["dp", "secure-aggregation", "exchange", "num-sites"]
    first, second = sweep.points()
    assert point_columns(sweep.keys, first, sweep.study(first)) == {
        "dp": "none",
        "secure-aggregation": "none",
        "exchange": "archive",
        "num-sites": 2,
    }
    assert point_columns(sweep.keys, second, sweep.study(second))["exchange"] == "none"
    assert sweep.privacy.attack_iterations == 3 and sweep.privacy.kpa is False
    for text, match in (
        ('study = "base.toml"\n[grid]\ndp = ["none"]\n[[point]]\ndp = "none"\n', "not both"),
        ('study = "base.toml"\n[[point]]\ndp = "none"\n[[point]]\ndp = "none"\n', "twice"),
        ('study = "base.toml"\n[[point]]\ndp = "nope"\n', "dp"),
        # SecAgg+ with the base's exchange = archive is refused before anything runs
        ('study = "base.toml"\n[[point]]\nsecure-aggregation = "secagg+"\n', "exchange"),
        ('study = "base.toml"\n[[point]]\ndp = "none"\n[privacy]\nkpa-secs = 1\n', "kpa-secs"),
        ('study = "base.toml"\n[[point]]\ndp = "none"\n[privacy]\nkpa = "yes"\n', "privacy.kpa"),
        ('study = "base.toml"\n[[point]]\ndp = "none"\n[privacy]\nkpa-pairs = 2\n', "3"),
    ):
        sweep_file.write_text(text)
        with pytest.raises(StudyError, match=match):
            Sweep.from_toml(sweep_file)


def test_privacy_probe_attacks_update_secure_sum_and_ciphertext(tmp_path, monkeypatch):
    """The probe's columns are computed: the update of one image without defence
    leaks more than the mean guess; the AES-GCM archive leaves the known-plaintext
    attacker at the mean guess; the secure sum of the sites is attacked too."""
    import math

    from simulations.privacy_probe import PrivacyProbe, probe_study
    from study.config import Study

    monkeypatch.setenv("MEDFED_DATA_HOME", str(tmp_path / "data"))
    (tmp_path / "base.toml").write_text(BASE)
    probe = PrivacyProbe(attack_iterations=20, attack_restarts=1, kpa_seconds=2.0)
    small = {"image-size": 16, "phantom-size": 32}
    study = Study.from_toml(tmp_path / "base.toml", {**small, "out-dir": str(tmp_path / "plain")})
    row = probe_study(study, probe, say=print)
    print(row)
    assert row["update_psnr"] > row["update_mean_guess_psnr"] > 5
    assert row["update_gain_db"] == pytest.approx(
        row["update_psnr"] - row["update_mean_guess_psnr"]
    )
    assert abs(row["kpa_psnr"] - row["kpa_mean_guess_psnr"]) < 1.0  # AES-GCM hides the image
    assert (tmp_path / "plain" / "privacy" / "leakage.json").is_file()
    secure = Study.from_toml(
        tmp_path / "base.toml",
        {
            **small,
            "out-dir": str(tmp_path / "sum"),
            "secure-aggregation": "secagg+",
            "exchange": "none",
            "num-sites": 3,
            "min-sites": 3,
        },
    )
    row = probe_study(secure, probe, say=lambda _: None)
    assert math.isfinite(row["update_psnr"]) and row["update_mean_guess_psnr"] > 5
    assert math.isnan(row["kpa_psnr"])  # exchange = none: no image leaves a site


def test_trade_off_table_of_a_privacy_sweep(tmp_path):
    import math

    from simulations.sweep import trade_off_table, write_comparison

    (tmp_path / "base.toml").write_text(BASE)
    (tmp_path / "sweep.toml").write_text(
        'study = "base.toml"\n[[point]]\ndp = "none"\n[[point]]\ndp = "local-dpsgd"\n[privacy]\n'
    )
    sweep = Sweep.from_toml(tmp_path / "sweep.toml", str(tmp_path / "out"))
    row = {
        "dp": "none",
        "auroc": 0.71,
        "epsilon": math.inf,
        "bytes_per_round": 2_500_000,
        "message_up_per_round": 1_000_000,
        "message_down_per_round": 1_500_000,
        "update_psnr": 24.44,
        "update_mean_guess_psnr": 16.2,
        "kpa_psnr": math.nan,
        "kpa_mean_guess_psnr": math.nan,
    }
    header, body = trade_off_table(sweep, [row, {**row, "dp": "local-dpsgd", "epsilon": 4.7}])
    assert header == ["dp", "auroc", "epsilon", "MB / round", "update PSNR dB", "KPA PSNR dB"]
    assert body[0] == ["none", "0.71", "inf", "2.50", "24.4 (16.2)", "-"]
    assert body[1][2] == "4.7"
    assert trade_off_table(sweep, [{"dp": "none", "auroc": 0.7}]) is None
    text = write_comparison(sweep, [row]).read_text()
    assert "| none | 0.71 | inf | 2.50 | 24.4 (16.2) | - |" in text


PLAN_UNDER_LIMIT = """
import resource, sys, time
from simulations.sweep import Sweep
from study.config import StudyError
limit = 2 * 2**30
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
t0 = time.perf_counter()
try:
    Sweep.from_toml(sys.argv[1])
except StudyError as exc:
    print("REFUSED", round(time.perf_counter() - t0, 3), exc)
else:
    print("ACCEPTED")
"""


def test_a_grid_over_the_point_limit_is_refused_at_once_within_2_gb(tmp_path):
    """25 keys of 2 values each are 2^25 points: refused with the count before any
    point is built (the whole product once took 10 GB), in a process whose address
    space is limited to 2 GB."""
    import subprocess
    import sys
    from pathlib import Path

    from simulations.sweep import MAX_POINTS

    (tmp_path / "base.toml").write_text(BASE)
    keys = "".join(f"key-{i} = [1, 2]\n" for i in range(25))
    (tmp_path / "sweep.toml").write_text(f'study = "base.toml"\n[grid]\n{keys}')
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", PLAN_UNDER_LIMIT, str(tmp_path / "sweep.toml")],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    word, seconds, message = done.stdout.strip().split(" ", 2)
    assert word == "REFUSED" and float(seconds) < 1.0, done.stdout
    assert "33,554,432 points" in message and f"{MAX_POINTS:,}" in message
    assert "sweep.toml" in message


def test_points_are_expanded_lazily_and_the_limit_holds_for_point_lists(tmp_path):
    import itertools

    from simulations.sweep import MAX_POINTS

    (tmp_path / "base.toml").write_text(BASE)
    (tmp_path / "sweep.toml").write_text(
        'study = "base.toml"\n[grid]\nlocal-epochs = [1, 2, 3]\nbatch-size = [8, 16]\n'
    )
    sweep = Sweep.from_toml(tmp_path / "sweep.toml")
    lazy = sweep.iter_points()
    assert not isinstance(lazy, list) and sweep.count == 6
    assert list(itertools.islice(lazy, 2)) == [
        {"local-epochs": 1, "batch-size": 8},
        {"local-epochs": 1, "batch-size": 16},
    ]
    assert sweep.points() == list(sweep.iter_points()) and len(sweep.points()) == 6
    many = "".join(f"[[point]]\nseed = {i}\n" for i in range(MAX_POINTS + 1))
    (tmp_path / "sweep.toml").write_text(f'study = "base.toml"\n{many}')
    with pytest.raises(StudyError, match=f"{MAX_POINTS + 1:,} points"):
        Sweep.from_toml(tmp_path / "sweep.toml")
