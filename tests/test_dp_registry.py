"""The dp-mode registry (study/dp.py): every mode of the study config is in it,
each mode's wrapper, mod and accounting exist, and the accounting gives the
epsilons medfed reported before the registry."""

from __future__ import annotations

import inspect
import math

import pytest

from study import dp, privacy, secure_aggregation
from study.config import DP_MODES, Study, StudyError

# epsilon after 1 and 3 rounds, z = 1.1, delta 1e-5, 2 local epochs, batch 16, a
# local-dpsgd site of 100 images: the accountant's numbers before the registry
EPSILONS = {
    "none": (math.inf, math.inf),
    "client-fixed": (4.239640834979212, 8.039116966222146),
    "client-adaptive": (4.239640834979212, 8.039116966222146),
    "server-fixed": (4.239640834979212, 8.039116966222146),
    "local-dpsgd": (4.176764405351805, 6.391834980515667),
}


def test_the_registry_is_the_study_configs_list_of_modes():
    assert dp.DP_MODES == DP_MODES
    assert [m.name for m in dp.MODES] == list(DP_MODES)
    assert set(EPSILONS) == set(DP_MODES)
    assert privacy.CENTRAL_MODES == ("client-fixed", "client-adaptive", "server-fixed")
    assert set(privacy.PROTECTS_AGAINST) == set(DP_MODES)


def test_an_unknown_mode_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="'server-adaptive' is not a dp mode; one of none, "):
        dp.dp_mode("server-adaptive")
    with pytest.raises(StudyError, match="dp = 'server-adaptive' is not allowed: one of none"):
        Study(dp="server-adaptive").validate()


@pytest.mark.parametrize("name", DP_MODES)
def test_each_modes_wrapper_mod_and_accounting_exist(name):
    mode = dp.dp_mode(name)
    wrapper, mod = mode.wrapper_class(), mode.client_mod_function()
    assert (wrapper is None) == (mode.server_wrapper is None)
    assert (mod is None) == (mode.client_mod is None)
    if wrapper is not None:
        assert wrapper.__name__ == mode.server_wrapper
        assert mode.central  # a Flower DP wrapper noises the aggregate
    if mod is not None:
        assert mode.clipped_by == "site"
    accounting = getattr(privacy, mode.accounting)
    assert list(inspect.signature(accounting).parameters) == [
        "study",
        "rounds_done",
        "num_examples",
    ]
    assert set(mode.observes) == set(dp.OBSERVERS)
    assert mode.aggregation_weights == ("uniform" if mode.central else "examples")
    assert mode.secure_aggregation == (name in secure_aggregation.DP_MODES)


@pytest.mark.parametrize("name", DP_MODES)
def test_each_modes_accounting_gives_todays_epsilon(name):
    study = Study(dp=name, dp_noise_multiplier=1.1, batch_size=16, local_epochs=2)
    examples = 100 if name == "local-dpsgd" else None
    for rounds, expected in zip((1, 3), EPSILONS[name], strict=True):
        spent = privacy.epsilon_spent(study, rounds, num_examples=examples)
        assert spent.epsilon == pytest.approx(expected, rel=1e-12)
        assert spent.level == dp.dp_mode(name).level
        assert spent.protects_against == dp.dp_mode(name).protects_against
    assert privacy.epsilon_spent(study, 0, num_examples=examples).epsilon == 0.0


def test_local_dpsgd_accounting_still_needs_the_sites_examples():
    with pytest.raises(ValueError, match="dp = local-dpsgd: epsilon needs the site's num_examples"):
        privacy.mechanism(Study(dp="local-dpsgd"), 2)
    mech = privacy.mechanism(
        Study(dp="local-dpsgd", batch_size=16, local_epochs=2), 3, num_examples=100
    )
    assert (mech.sample_rate, mech.steps, mech.level) == (1 / 7, 42, "sample")


@pytest.mark.parametrize("name", ["client-fixed", "client-adaptive", "server-fixed"])
def test_wrap_strategy_builds_the_wrapper_the_server_builds(name):
    from flwr.serverapp.strategy import FedAvg

    from server.strategy import with_differential_privacy

    study = Study(dp=name, dp_noise_multiplier=0.5, dp_clipping_norm=2.0, num_sites=40)
    mode = dp.dp_mode(name)
    wrapped = mode.wrap_strategy(FedAvg(), noise_multiplier=0.5, clipping_norm=2.0, sites=40)
    server = with_differential_privacy(study, FedAvg())
    assert type(wrapped).__name__ == mode.server_wrapper == type(server).__name__
    settings = {k: v for k, v in vars(wrapped).items() if k != "strategy"}
    assert settings == {k: v for k, v in vars(server).items() if k != "strategy"}
    if mode.adaptive:
        assert wrapped.clipped_count_stddev == 2.0  # max(sites / 20, z)
    else:
        assert (wrapped.noise_multiplier, wrapped.clipping_norm) == (0.5, 2.0)


def test_modes_without_a_wrapper_leave_the_strategy_alone():
    from flwr.serverapp.strategy import FedAvg

    strategy = FedAvg()
    for name in ("none", "local-dpsgd"):
        out = dp.dp_mode(name).wrap_strategy(
            strategy, noise_multiplier=1.0, clipping_norm=1.0, sites=4
        )
        assert out is strategy
