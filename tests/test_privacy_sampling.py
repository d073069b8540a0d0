"""Sampling is not failure: a site that fraction-train left out of a round is
recorded `sampled: false`, counted apart from failed sites, and min-sites
counts only the sites sampled."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from loopback_grid import LoopbackGrid, run_loopback_study, small_study

from client.client_app import build_client_app
from server import strategy as strategy_module
from server.progress import Events
from server.strategy import StudyStopped
from study.schema import read_summary


def _study(tmp_path, monkeypatch, **changes):
    settings = dict(num_sites=5, min_sites=2, fraction_train=0.4, num_rounds=2)
    study = small_study(tmp_path, monkeypatch, **{**settings, **changes})
    return study, LoopbackGrid(build_client_app(study), study.num_sites)


def test_an_unsampled_site_is_not_a_failed_one(tmp_path, monkeypatch):
    # Prepare: 5 sites, 2 sampled a round (fraction-train 0.4, min-sites 2)
    study, grid = _study(tmp_path, monkeypatch)
    events: list[dict] = []
    # Execute
    rounds = run_loopback_study(grid, study, Events(None, events.append))
    # Assert: in each round 2 sites trained, 3 were not sampled, none failed
    for record in rounds:
        sampled = [s for s in record.sites if s.sampled]
        left_out = [s for s in record.sites if not s.sampled]
        assert len(record.sites) == 5 and len(sampled) == 2 and len(left_out) == 3
        assert all(s.ok and s.error is None for s in record.sites), record.sites
        assert all(s.examples == 0 and s.bytes["model_up"] == 0 for s in left_out)
        assert all(s.examples > 0 for s in sampled)
    line = json.loads((Path(study.out_dir) / "rounds.jsonl").read_text().splitlines()[0])
    assert sorted(s["sampled"] for s in line["sites"]) == [False] * 3 + [True] * 2
    assert all(s["ok"] and s["error"] is None for s in line["sites"])
    summary = read_summary(study.out_dir)
    counts = [
        (site["rounds_ok"], site["rounds_not_sampled"], site["rounds_failed"])
        for site in summary.bytes_per_site.values()
    ]
    assert sum(c[0] for c in counts) == 4 and sum(c[1] for c in counts) == 6
    assert all(c[2] == 0 for c in counts)
    report = (Path(study.out_dir) / "report.md").read_text()
    assert "Failed sites" not in report and "not connected" not in report
    assert "| 1 | 2/2 | 3 |" in report  # round, sites trained of sampled, not sampled
    # the progress line counts them apart from failures
    from rich.console import Console

    from simulations.commands.run import ProgressDisplay

    console = Console(record=True, width=200)
    display = ProgressDisplay(study, console, enabled=False)
    for event in events:
        display.update(event)
    text = console.export_text()
    assert "round 1 done: 2 sites ok, 3 not sampled" in text and "failed" not in text


def test_min_sites_counts_only_the_sampled_sites(tmp_path, monkeypatch):
    # Prepare: 2 of 5 sampled, min-sites 2; one sampled site's reply is lost in round 1
    study, grid = _study(tmp_path, monkeypatch, num_rounds=1)
    account = strategy_module.MedfedStrategy._account_train_replies

    def lose_one(self, replies):
        return account(self, list(replies)[1:])

    monkeypatch.setattr(strategy_module.MedfedStrategy, "_account_train_replies", lose_one)
    # Execute / Assert: the study stops although 4 sites are connected and well
    with pytest.raises(StudyStopped) as stop:
        run_loopback_study(grid, study)
    assert "only 1 of 2 sampled sites replied" in str(stop.value)
    assert len(stop.value.failed) == 1 and "round-timeout" in stop.value.failed[0]["error"]
    summary = read_summary(study.out_dir)
    assert summary.status == "stopped" and len(summary.failed_sites) == 1


def test_under_secagg_an_unsampled_site_is_not_a_failed_one(tmp_path, monkeypatch):
    # Prepare: 5 sites, 3 sampled a round (SecAgg+ needs 3)
    study, grid = _study(
        tmp_path, monkeypatch, num_rounds=1, fraction_train=0.6, min_sites=3,
        secure_aggregation="secagg+",
    )  # fmt: skip
    # Execute
    (record,) = run_loopback_study(grid, study)
    # Assert
    assert sorted(s.sampled for s in record.sites) == [False] * 2 + [True] * 3
    assert all(s.ok and s.error is None for s in record.sites), record.sites
    assert record.extra["secure_aggregation"]["sites_sampled"] == 3
