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
    assert len(bandwidth.points()) == 9
    assert bandwidth.study(bandwidth.points()[0]).link_speeds_mbps == (10.0, 100.0, 1000.0)
    duel = Sweep.from_toml(studies / "none-vs-consortium.toml")
    assert [p["exchange"] for p in duel.points()] == ["none", "consortium"]
