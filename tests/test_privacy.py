"""study.privacy: the epsilon medfed reports is the accountant library's own."""

from __future__ import annotations

import math

import pytest
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from study.config import Study, StudyError
from study.privacy import epsilon_spent, local_steps_per_epoch, sites_sampled


def opacus_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """Opacus used the ordinary way: one accountant step per mechanism use."""
    accountant = RDPAccountant()
    for _ in range(steps):
        accountant.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)
    return accountant.get_epsilon(delta=delta)


@pytest.mark.parametrize("dp", ["client-fixed", "client-adaptive", "server-fixed"])
def test_central_dp_epsilon_is_opacus_rdp_one_release_a_round(dp):
    # Prepare: 10 sites, half sampled per round (no amplification: see below)
    study = Study(dp=dp, num_sites=10, min_sites=2, fraction_train=0.5, dp_noise_multiplier=1.1)
    # Execute
    spent = epsilon_spent(study, rounds_done=7)
    # Assert
    assert spent.sample_rate == 1.0 and spent.steps == 7 and spent.level == "site"
    assert spent.epsilon == pytest.approx(opacus_epsilon(1.1, 1.0, 7, 1e-5), rel=1e-12)
    assert "not the server" in spent.protects_against


def test_local_dpsgd_epsilon_counts_every_local_step():
    # Prepare: a site with 100 images, batch 16 -> 7 steps per epoch, 2 epochs per round
    study = Study(dp="local-dpsgd", batch_size=16, local_epochs=2, dp_noise_multiplier=1.0)
    # Execute
    spent = epsilon_spent(study, rounds_done=3, num_examples=100)
    # Assert
    assert local_steps_per_epoch(100, 16) == 7
    assert spent.steps == 3 * 2 * 7 and spent.sample_rate == pytest.approx(1 / 7)
    assert spent.epsilon == pytest.approx(opacus_epsilon(1.0, 1 / 7, 42, 1e-5), rel=1e-12)
    assert spent.level == "sample" and "server included" in spent.protects_against


def test_epsilon_round_trips_through_opacus_noise_calibration():
    # Prepare: the noise Opacus calibrates for epsilon 3 over 5 rounds at rate 1
    z = get_noise_multiplier(
        target_epsilon=3.0, target_delta=1e-5, sample_rate=1.0, steps=5, accountant="rdp"
    )
    study = Study(dp="client-fixed", dp_noise_multiplier=z)
    # Execute
    spent = epsilon_spent(study, rounds_done=5)
    # Assert: Opacus stops its search within its tolerance (0.01) below the target
    assert 2.98 <= spent.epsilon <= 3.0


def test_no_noise_no_guarantee_and_nothing_spent_before_round_one():
    assert math.isinf(epsilon_spent(Study(dp="none"), 3).epsilon)
    assert epsilon_spent(Study(dp="none"), 3).to_json()["epsilon"] is None
    assert math.isinf(epsilon_spent(Study(dp="server-fixed", dp_noise_multiplier=0.0), 1).epsilon)
    assert epsilon_spent(Study(dp="client-fixed"), 0).epsilon == 0.0
    more = [epsilon_spent(Study(dp="client-fixed"), r).epsilon for r in (1, 2, 4)]
    assert more == sorted(more) and more[0] > 0


def test_sampled_sites_follow_flower_and_local_dpsgd_needs_the_site_size():
    assert sites_sampled(Study(num_sites=10, min_sites=2, fraction_train=0.35)) == 3
    assert sites_sampled(Study(num_sites=10, min_sites=4, fraction_train=0.1)) == 4
    with pytest.raises(ValueError, match="num_examples"):
        epsilon_spent(Study(dp="local-dpsgd"), 1)


# -- checked against an independent accountant (Google's dp-accounting) ------------------
def dp_accounting_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    """dp-accounting's RDP accountant over (noise multiplier, sampling rate, uses)."""
    import dp_accounting

    accountant = dp_accounting.rdp.RdpAccountant()
    for z, q, count in history:
        event = dp_accounting.GaussianDpEvent(z)
        if q < 1:
            event = dp_accounting.PoissonSampledDpEvent(q, event)
        accountant.compose(event, count)
    return accountant.get_epsilon(delta)


@pytest.mark.parametrize("dp", ["client-fixed", "client-adaptive", "server-fixed"])
def test_central_dp_is_accounted_without_sampling_amplification(dp):
    # Prepare: 5 sites, fraction-train 0.5 (Flower samples 2 or 3 of them, a fixed number,
    # with Python's seeded `random`): no amplification, one Gaussian release per round
    study = Study(dp=dp, num_sites=5, min_sites=2, fraction_train=0.5, dp_noise_multiplier=1.0)
    # Execute
    spent = epsilon_spent(study, rounds_done=3)
    # Assert: dp-accounting and Opacus agree on the same parameters
    assert spent.sample_rate == 1.0 and spent.steps == 3
    assert spent.epsilon == pytest.approx(dp_accounting_epsilon([(1.0, 1.0, 3)], 1e-5), rel=1e-9)
    assert spent.epsilon == pytest.approx(opacus_epsilon(1.0, 1.0, 3, 1e-5), rel=1e-12)


def test_local_dpsgd_epsilon_matches_dp_accounting():
    study = Study(dp="local-dpsgd", batch_size=16, local_epochs=2, dp_noise_multiplier=1.0)
    spent = epsilon_spent(study, rounds_done=3, num_examples=100)
    # the two libraries use different RDP orders: agreement to a few parts in a thousand
    reference = dp_accounting_epsilon([(1.0, 1 / 7, 42)], 1e-5)
    assert spent.epsilon == pytest.approx(reference, rel=5e-3)


def test_epsilon_composes_each_round_s_recorded_noise_multiplier():
    study = Study(dp="client-fixed", dp_noise_multiplier=1.0)
    spent = epsilon_spent(study, rounds_done=3, noise_multipliers=[0.84, 0.61, 0.61])
    expected = dp_accounting_epsilon([(0.84, 1.0, 1), (0.61, 1.0, 2)], 1e-5)
    assert spent.epsilon == pytest.approx(expected, rel=1e-9)
    assert spent.epsilon > epsilon_spent(study, rounds_done=3).epsilon
    with pytest.raises(ValueError, match="3 rounds"):
        epsilon_spent(study, rounds_done=3, noise_multipliers=[1.0])


def test_effective_noise_multiplier_is_noise_over_one_site_s_weight():
    from study.privacy import effective_noise_multiplier

    # uniform: noise z*C/n on a mean where one site moves it by C/n: z itself
    assert effective_noise_multiplier(1.0, 3, [1, 1, 1]) == pytest.approx(1.0)
    # example weights (the round 1: 89 of 150 images at one site): z / (n w_max)
    assert effective_noise_multiplier(1.0, 3, [89, 40, 21]) == pytest.approx(150 / (3 * 89))
    # adaptive clipping's clipped-count noise composes with the update noise
    combined = effective_noise_multiplier(1.2, 3, [1, 1, 1], clipped_count_stddev=2.0)
    assert combined == pytest.approx((1.2**-2 + 4.0**-2) ** -0.5)
    assert effective_noise_multiplier(0.0, 3, [1, 1, 1]) == 0.0


def test_dp_with_image_exchange_is_refused_naming_both_keys():
    for dp in ("client-fixed", "client-adaptive", "server-fixed", "local-dpsgd"):
        study = Study(dp=dp, exchange="consortium", num_sites=3)
        with pytest.raises(StudyError, match=r"dp = .*exchange = consortium") as err:
            study.validate("demo.toml")
        assert "demo.toml" in str(err.value) and dp in str(err.value)
    Study(dp="local-dpsgd", exchange="archive", num_sites=3).validate()
    Study(dp="none", exchange="consortium", num_sites=3).validate()


def test_central_dp_needs_a_strategy_that_averages():
    with pytest.raises(StudyError, match="strategy = FedMedian"):
        Study(dp="server-fixed", strategy="FedMedian").validate()
    Study(dp="local-dpsgd", strategy="FedMedian").validate()  # noise inside each site
    Study(dp="client-fixed", strategy="FedProx").validate()
    # the noise would go on the server optimiser's output, not on the mean
    with pytest.raises(StudyError, match="strategy = FedAdam"):
        Study(dp="client-adaptive", strategy="FedAdam").validate()
    Study(dp="local-dpsgd", strategy="FedAdam").validate()


def test_a_sweep_crossing_dp_with_consortium_is_refused_before_it_runs(tmp_path):
    from simulations.sweep import Sweep

    (tmp_path / "base.toml").write_text('name = "base"\nnum-sites = 3\n')
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(
        'study = "base.toml"\n[grid]\ndp = ["none", "local-dpsgd"]\n'
        'exchange = ["none", "consortium"]\n'
    )
    with pytest.raises(
        StudyError, match="dp = local-dpsgd cannot be combined with exchange = consortium"
    ):
        Sweep.from_toml(sweep)


@pytest.mark.parametrize("dp", ["client-fixed", "client-adaptive", "server-fixed"])
def test_the_wrapper_noises_for_the_updates_it_averages(dp):
    """build_strategy weights by UNIFORM_WEIGHT; a round where 3 of 4 sampled sites
    replied tells Flower's wrapper 3 (its noise is z C / 3: multiplier z), and an
    aggregation by examples would be recorded as such, with its lower multiplier."""
    from server.strategy import build_strategy, dp_aggregation
    from study.privacy import UNIFORM_WEIGHT

    study = Study(dp=dp, num_sites=4, min_sites=2, dp_noise_multiplier=1.0)
    wrapper = build_strategy(study)
    assert wrapper.strategy.weighted_by_key == UNIFORM_WEIGHT
    assert wrapper.num_sampled_clients == 4
    uniform = dp_aggregation(study, wrapper, [1.0, 1.0, 1.0])
    assert wrapper.num_sampled_clients == 3
    assert uniform["aggregation_weights"] == "uniform"
    assert uniform["effective_noise_multiplier"] == pytest.approx(1.0, rel=1e-12)
    by_examples = dp_aggregation(study, wrapper, [300.0, 100.0, 100.0])
    assert by_examples["aggregation_weights"] == "examples"
    lower = by_examples["effective_noise_multiplier"]
    if dp == "client-adaptive":  # the clipped-count noise keeps part of the budget
        assert 0.5 < lower < 0.65
    else:  # one site holds 3/5 of the mean: z / (3 * 0.6)
        assert lower == pytest.approx(1.0 / 1.8, rel=1e-12)
