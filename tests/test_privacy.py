"""study.privacy: the epsilon medfed reports is the accountant library's own."""

from __future__ import annotations

import math

import pytest
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from study.config import Study
from study.privacy import epsilon_spent, local_steps_per_epoch, sites_sampled


def opacus_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """Opacus used the ordinary way: one accountant step per mechanism use."""
    accountant = RDPAccountant()
    for _ in range(steps):
        accountant.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)
    return accountant.get_epsilon(delta=delta)


@pytest.mark.parametrize("dp", ["client-fixed", "client-adaptive", "server-fixed"])
def test_central_dp_epsilon_is_opacus_rdp_over_sampled_sites(dp):
    # Prepare: 10 sites, half sampled per round
    study = Study(dp=dp, num_sites=10, min_sites=2, fraction_train=0.5, dp_noise_multiplier=1.1)
    # Execute
    spent = epsilon_spent(study, rounds_done=7)
    # Assert
    assert spent.sample_rate == 0.5 and spent.steps == 7 and spent.level == "site"
    assert spent.epsilon == pytest.approx(opacus_epsilon(1.1, 0.5, 7, 1e-5), rel=1e-12)
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
