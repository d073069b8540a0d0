"""The optimisation attack's quality on 32 px phantom X-rays (slow: a minute or two).

The site is site 0 of a 2-site phantom study (120 patients), attacked in round
1 through the study's own training (Adam, lr 1e-3, one local step on one
image) of the untrained study CNN; the image is the one `medfed attack
updates --seed S` picks. The attacker's image prior is the server's held-out
set. The numbers asserted here are the ones docs/BENCHMARKS.md states: on the
seed-0 image the attack reaches at least 24 dB (the mean guess: 15.1 dB), and
it beats the mean guess by at least 3 dB both as output and with both scored
on the intensity factor no update reveals.

The analytic attack (server.updates.analytic_recovery) on the demo study's
`mlp` update, as it is (64 px) and at 32 px, against the reading it replaced
(median over all rows) and the reading from the rows whose bias step is not
saturated.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from client.site import Site
from privacy import scores, updates
from privacy.attack import attacked_indices
from server.holdout import study_holdout
from study.config import Study
from study.task import DpSgd, build_model, to_float, train

pytestmark = pytest.mark.slow

# seed 0's image; the section of docs/BENCHMARKS.md states it and the spread over images
from benchmarks.sections_leakage import STATED_PSNR_DB  # noqa: E402


@pytest.fixture(scope="module")
def phantom_site(tmp_path_factory):
    root = tmp_path_factory.mktemp("leak")
    mp = pytest.MonkeyPatch()
    mp.setenv("MEDFED_DATA_HOME", str(root / "data"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    study = Study(
        num_sites=2, phantom_patients=120, phantom_size=64, image_size=32, out_dir=str(root / "run")
    )
    site = Site(study, 0, 2)
    held = study_holdout(study, root / "holdout")
    prior = updates.ImagePrior.fit(
        to_float(held.images, held.bits).numpy(), updates.InversionConfig().prior_components
    )
    yield study, site, prior
    torch.set_num_threads(threads)
    mp.undo()


def attack(study, site, prior, seed=0, dp_sgd=None):
    """One image's update (as `medfed attack updates --seed seed` picks it) and the
    optimisation attack on it: (score, mean guess, aligned mean guess, inversion)."""
    train_set = site.shard.train
    (i,) = attacked_indices(len(train_set.images), 1, 0, 1, seed)
    images, targets = train_set.images[i : i + 1], train_set.targets[i : i + 1]
    torch.manual_seed(study.seed)
    start = {k: v.clone() for k, v in build_model("xray").state_dict().items()}
    model = build_model("xray")
    model.load_state_dict(start)
    train_seed = site.train_seed(1)
    train(model, "xray", images, targets, train_set.bits, epochs=1, batch_size=16,
          learning_rate=1e-3, seed=train_seed, dp_sgd=dp_sgd)  # fmt: skip
    update = updates.parameter_update(start, model)
    training = updates.LocalTraining("xray", 1, 16, 1e-3, train_seed, optimizer="adam")
    inv = updates.invert_update(
        build_model("xray"), start, update, training, 1, (1, 32, 32), prior=prior,
        config=updates.InversionConfig(seed=seed),
    )  # fmt: skip
    originals = to_float(images, train_set.bits).numpy()
    mean_image = prior.mean  # the held-out images' mean: the attacker's guess without the update
    return (
        scores.score(inv.images, originals),
        scores.mean_guess_psnr(mean_image, originals),
        scores.mean_guess_psnr_scale_aligned(mean_image, originals),
        inv,
        targets,
    )


def test_optimisation_attack_reconstructs_a_32px_phantom_xray(phantom_site):
    # Execute
    score, guess, guess_aligned, inv, targets = attack(*phantom_site)
    # Assert: the findings come back (iDLG), the image beats guessing the site's mean
    np.testing.assert_array_equal(inv.labels, targets)
    assert score.psnr[0] >= STATED_PSNR_DB
    assert score.psnr[0] >= guess + 3.0
    assert score.psnr_scale_aligned[0] >= guess_aligned + 3.0


def test_optimisation_attack_beats_the_mean_guess_on_average_over_images(phantom_site):
    # Execute: the images seeds 1 and 2 pick (seed 0's is the test above)
    gains = []
    for seed in (1, 2):
        score, guess, _, _, _ = attack(*phantom_site, seed=seed)
        gains.append(score.psnr[0] - guess)
    # Assert
    assert np.mean(gains) >= 3.0


def test_local_dpsgd_noise_1_leaves_the_attack_at_the_mean_guess(phantom_site):
    score, guess, guess_aligned, _, _ = attack(*phantom_site, dp_sgd=DpSgd(1.0, 1.0, noise_seed=0))
    assert score.psnr[0] <= guess + 1.0
    assert score.psnr_scale_aligned[0] <= guess_aligned + 1.0


# ------------------------------------------------------- the analytic attack
def analytic_cases(study, seeds):
    """(global weights, update, training, originals) of site 0's update of the
    `mlp` in round 1 for the images `medfed attack updates --model mlp --seed S`
    picks, made as that command makes them (privacy.attack)."""
    from privacy.attack import local_training, site_update
    from simulations.attack import global_weights

    site = Site(study, 0, study.num_sites)
    images, targets, *_ = site.training_set({})
    bits = site.shard.train.bits
    training = local_training(study, site.train_seed(1), "adam")
    start = global_weights(study, "mlp", 1, Path(study.out_dir))
    for seed in seeds:
        idx = attacked_indices(len(images), 1, 0, 1, seed)
        update = site_update(
            study, "mlp", start, images[idx], targets[idx], bits, training, "none", 0
        )
        yield start, update, training, to_float(images[idx], bits).numpy()


def analytic_readings(start, update, training, originals):
    """PSNR of the analytic attack as `medfed attack updates` runs it (snapped to
    the 8-bit grid of the phantoms); of the same estimate unsnapped; of its
    former reading (Adam's step inverted, median over all active rows); and of
    the best over thresholds tau of the reading from the rows whose bias step
    is not saturated, |delta_b| < (1 - tau) * lr (median over those rows)."""
    shape = originals.shape[1:]
    layer = ("first.weight", "first.bias")
    lr = training.learning_rate
    snapped = updates.analytic_recovery(
        update, training, layer, 1, shape, global_state=start, bits=8
    )
    unsnapped = updates.analytic_recovery(update, training, layer, 1, shape, global_state=start)
    gw = updates.adam_first_step_gradient(update[layer[0]], lr).double()
    gb = updates.adam_first_step_gradient(update[layer[1]], lr).double()
    active = update[layer[1]] != 0
    rows = gw[active] / gb[active, None]

    def psnr(x):
        return scores.score(x.clamp(0, 1).reshape(1, *shape).numpy(), originals).psnr[0]

    unsaturated = []
    for tau in (1e-5, 3e-5, 1e-4, 3e-4):
        keep = active & (update[layer[1]].abs() < (1 - tau) * lr)
        if keep.any():
            unsaturated.append(psnr((gw[keep] / gb[keep, None]).median(dim=0).values))
    return (
        scores.score(snapped, originals).psnr[0],
        scores.score(unsnapped, originals).psnr[0],
        psnr(rows.median(dim=0).values),
        max(unsaturated, default=0.0),
    )


# The analytic attack before the grid (median over rows: 44.2 / 37.3 / 34.4 dB; the
# precision-weighted rank-one fit: 61.5 / 67.4 / 56.2 dB), and the figures an
# independent check read from the unsaturated rows alone at 32 px (issue 27: 73.7 /
# 55.0 dB); the snapped attack measured 64.2 / 75.2 / 64.8 dB
PREVIOUS_DB = {(64, 0): 61.5, (32, 0): 67.4, (32, 1): 56.2}
REQUIRED_DB = {(64, 0): 63.0, (32, 0): 73.7, (32, 1): 60.0}


@pytest.mark.parametrize(
    ("image_size", "seeds"),
    [(64, (0,)), (32, (0, 1))],  # the demo study as it is, and at 32 px
)
def test_analytic_attack_on_the_demo_reads_far_more_than_the_median_over_rows(
    tmp_path, monkeypatch, image_size, seeds
):
    # Prepare: the demo study, one image per seed, the sites' Adam (one local step)
    monkeypatch.setenv("MEDFED_DATA_HOME", str(tmp_path / "data"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    study = Study.from_toml(
        "simulations/studies/demo.toml",
        {"image-size": image_size, "out-dir": str(tmp_path / "run")},
    )
    try:
        cases = list(analytic_cases(study, seeds))
    finally:
        torch.set_num_threads(threads)
    for seed, (start, update, training, originals) in zip(seeds, cases, strict=True):
        # Execute
        snapped, unsnapped, median, unsaturated = analytic_readings(
            start, update, training, originals
        )
        # Assert: above the unsaturated rows' figures, and the grid's gain over the
        # attack it replaced and over the same estimate unsnapped
        assert snapped >= REQUIRED_DB[image_size, seed]
        assert snapped >= PREVIOUS_DB[image_size, seed] + 1.5
        assert snapped >= unsnapped + 1.5
        assert unsnapped >= median + 15.0
        assert snapped >= unsaturated
