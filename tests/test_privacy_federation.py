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


@pytest.mark.federation
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


@pytest.mark.federation
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


# -- client-side DP over unequal sites, on the loopback grid (no Ray) --------------------
def _loopback(tmp_path, monkeypatch, **changes):
    from loopback_grid import LoopbackGrid, small_study

    from client.client_app import build_client_app

    settings = dict(
        num_sites=5,
        min_sites=2,
        fraction_train=0.5,
        partition="quantity-skew",
        dirichlet_alpha=1.0,
        phantom_patients=60,
        dp="client-fixed",
        dp_clipping_norm=0.5,
    )
    study = small_study(tmp_path, monkeypatch, **{**settings, **changes})
    return study, LoopbackGrid(build_client_app(study), study.num_sites)


def test_client_fixed_averages_the_clipped_updates_uniformly(tmp_path, monkeypatch):
    """With no noise the new global model is the unweighted mean of the clipped
    models the sampled sites sent, although their training sets differ in size."""
    from loopback_grid import run_loopback_study

    seen: dict[str, list] = {"replies": [], "examples": [], "aggregate": []}
    account = strategy_module.MedfedStrategy._account_train_replies
    aggregate = strategy_module.MedfedStrategy.aggregate_train

    def spy_account(self, replies):
        good = account(self, replies)
        for reply in good:
            seen["replies"].append(
                {k: a.numpy().copy() for k, a in reply.content["arrays"].items()}
            )
            seen["examples"].append(int(reply.content["metrics"]["num-examples"]))
        return good

    def spy_aggregate(self, server_round, replies):
        arrays, metrics = aggregate(self, server_round, replies)
        seen["aggregate"].append({k: a.numpy().copy() for k, a in arrays.items()})
        return arrays, metrics

    monkeypatch.setattr(strategy_module.MedfedStrategy, "_account_train_replies", spy_account)
    monkeypatch.setattr(strategy_module.MedfedStrategy, "aggregate_train", spy_aggregate)
    study, grid = _loopback(tmp_path, monkeypatch, dp_noise_multiplier=0.0, fraction_train=0.6)
    # Execute
    (record,) = run_loopback_study(grid, study)
    # Assert: three sites of different sizes, averaged with equal weights
    examples = seen["examples"]
    assert len(examples) == 3 and len(set(examples)) > 1, examples
    (got,) = seen["aggregate"]
    for name, value in got.items():
        uniform = np.mean([r[name] for r in seen["replies"]], axis=0)
        np.testing.assert_allclose(value, uniform, rtol=1e-5, atol=1e-7)
    # ...which is not the example-weighted mean the study's FedAvg would take
    first = next(iter(got))
    pairs = zip(examples, seen["replies"], strict=True)
    weighted = sum(e * r[first] for e, r in pairs) / sum(examples)
    assert not np.allclose(got[first], weighted, rtol=1e-5, atol=1e-7)
    privacy = record.extra["privacy"]
    assert privacy["aggregation_weights"] == "uniform"
    assert privacy["effective_noise_multiplier"] == 0.0 and privacy["epsilon"] is None


@pytest.mark.parametrize("dp", ["client-fixed", "client-adaptive", "server-fixed", "local-dpsgd"])
def test_epsilon_is_dp_accounting_s_for_the_recorded_parameters(dp, tmp_path, monkeypatch):
    """The issue's study (5 sites, fraction-train 0.5, z = 1, 3 rounds), small: the
    epsilon in rounds.jsonl is what dp-accounting computes from what it records."""
    from loopback_grid import run_loopback_study
    from test_privacy import dp_accounting_epsilon

    study, grid = _loopback(tmp_path, monkeypatch, num_rounds=3, dp=dp, dp_noise_multiplier=1.0)
    rounds = run_loopback_study(grid, study)
    history = []
    for record in rounds:
        privacy = record.extra["privacy"]
        z = privacy["effective_noise_multiplier"]
        if dp == "local-dpsgd":  # each DP-SGD step, Poisson-sampled inside the worst site
            assert privacy["aggregation_weights"] == "examples" and z == 1.0
            reference = dp_accounting_epsilon(
                [(z, privacy["sample_rate"], privacy["steps"])], privacy["delta"]
            )
            # the libraries' RDP orders differ: a few parts in a thousand
            assert privacy["epsilon"] == pytest.approx(reference, rel=5e-3)
            continue
        assert privacy["aggregation_weights"] == "uniform"
        assert z == pytest.approx(1.0, rel=1e-12)
        history.append((z, privacy["sample_rate"], 1))
        expected = dp_accounting_epsilon(history, privacy["delta"])
        assert privacy["epsilon"] == pytest.approx(expected, rel=1e-9)
        assert privacy["steps"] == record.round and privacy["sample_rate"] == 1.0
    if dp != "local-dpsgd":
        assert rounds[-1].extra["privacy"]["epsilon"] == pytest.approx(9.01, abs=0.01)


def test_under_secagg_client_fixed_sums_the_sites_with_equal_weights(tmp_path, monkeypatch):
    """SecAgg+ weights each site by the num_examples of its FitRes: under a central
    dp mode that is 1, so the noise is calibrated for the sum the server unmasks;
    the site's real count is still recorded."""
    from loopback_grid import run_loopback_study

    study, grid = _loopback(
        tmp_path, monkeypatch, num_sites=3, min_sites=3, fraction_train=1.0,
        secure_aggregation="secagg+", dp_noise_multiplier=1.0,
    )  # fmt: skip
    (record,) = run_loopback_study(grid, study)
    privacy = record.extra["privacy"]
    assert privacy["aggregation_weights"] == "uniform"
    assert privacy["effective_noise_multiplier"] == pytest.approx(1.0, rel=1e-12)
    assert record.extra["secure_aggregation"]["max_weight"] == 1
    examples = [s.examples for s in record.sites]
    assert all(e > 0 for e in examples) and len(set(examples)) > 1, examples
