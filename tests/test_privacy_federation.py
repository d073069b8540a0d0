"""Differential privacy as study options on Flower's own wrappers and mods:
the updates the server receives are clipped, and the epsilon medfed writes
is the accountant's."""

from __future__ import annotations

import json

import numpy as np
import pytest

from server import strategy as strategy_module
from simulations.runner import run_simulated_study
from study.config import Study
from study.privacy import epsilon_spent
from study.schema import read_summary


def small(out, **changes) -> Study:
    base = dict(
        name="dp",
        num_sites=3,
        num_rounds=2,
        min_sites=1,
        image_size=32,
        phantom_patients=48,
        phantom_size=64,
        share_per_round=4,
        holdout_images=16,
        dp_noise_multiplier=1.0,
        dp_clipping_norm=0.5,
        out_dir=str(out),
    )
    return Study(**{**base, **changes}).replace()


@pytest.fixture(autouse=True)
def data_home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MEDFED_DATA_HOME", str(tmp_path_factory.getbasetemp() / "dp-data"))


def test_client_side_clipping_bounds_every_update_the_server_receives(tmp_path, monkeypatch):
    sent, norms = {}, []
    configure, account = (
        strategy_module.MedfedStrategy.configure_train,
        strategy_module.MedfedStrategy._account_train_replies,
    )

    def spy_configure(self, server_round, arrays, config, grid):
        sent[server_round] = {k: a.numpy().copy() for k, a in arrays.items()}
        return configure(self, server_round, arrays, config, grid)

    def spy_account(self, replies):
        base = sent[self.state.round]
        for reply in replies:
            if "arrays" in reply.content:
                got = {k: a.numpy() for k, a in reply.content["arrays"].items()}
                norms.append(np.sqrt(sum(float(np.sum((got[k] - base[k]) ** 2)) for k in got)))
        return account(self, replies)

    monkeypatch.setattr(strategy_module.MedfedStrategy, "configure_train", spy_configure)
    monkeypatch.setattr(strategy_module.MedfedStrategy, "_account_train_replies", spy_account)
    study = small(tmp_path / "run", dp="client-fixed")
    result = run_simulated_study(study)
    assert len(norms) == 6 and max(norms) <= study.dp_clipping_norm * (1 + 1e-5), norms
    assert min(norms) > 0.9 * study.dp_clipping_norm  # they were clipped, not just small
    for record in result.rounds:
        privacy = record.extra["privacy"]
        assert privacy["epsilon"] == epsilon_spent(study, record.round).epsilon
        assert privacy["dp"] == "client-fixed" and "not the server" in privacy["protects_against"]
    summary = read_summary(study.out_dir)
    assert summary.extra["privacy"] == result.rounds[-1].extra["privacy"]
    json.loads((tmp_path / "run" / "summary.json").read_text(), parse_constant=_refuse)


def test_local_dpsgd_reports_the_worst_site_s_epsilon(tmp_path):
    study = small(tmp_path / "run", dp="local-dpsgd")
    result = run_simulated_study(study)
    assert all(s.ok for r in result.rounds for s in r.sites)
    last = result.rounds[-1]
    privacy = last.extra["privacy"]
    per_site = {
        s.site: epsilon_spent(study, last.round, num_examples=s.examples).epsilon
        for s in last.sites
    }
    assert privacy["sites"] == per_site
    assert privacy["epsilon"] == max(per_site.values()) and privacy["level"] == "sample"


def _refuse(name: str):
    raise ValueError(f"not strict JSON: {name}")
