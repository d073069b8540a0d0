"""The optimisation attack's quality on a 32 px phantom X-ray (slow: minutes).

The site is site 0 of a 2-site phantom study, one training image, the study's
own training (Adam, lr 1e-3, one local step) on the untrained study CNN. The
numbers asserted here are the ones docs/BENCHMARKS.md states.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from client.site import Site
from server import leakage
from study.config import Study
from study.task import DpSgd, build_model, to_float, train

pytestmark = pytest.mark.slow

CONFIG = leakage.InversionConfig(iterations=300, restarts=1, seed=0)


@pytest.fixture(scope="module")
def phantom_site(tmp_path_factory):
    root = tmp_path_factory.mktemp("leak")
    mp = pytest.MonkeyPatch()
    mp.setenv("MEDFED_DATA_HOME", str(root / "data"))
    study = Study(
        num_sites=2, phantom_patients=40, phantom_size=64, image_size=32, out_dir=str(root / "run")
    )
    site = Site(study, 0, 2)
    _ = site.shard
    yield study, site
    mp.undo()


def attack(study, site, dp_sgd=None):
    train_set = site.shard.train
    images, targets = train_set.images[:1], train_set.targets[:1]
    torch.manual_seed(study.seed)
    start = {k: v.clone() for k, v in build_model("xray").state_dict().items()}
    model = build_model("xray")
    model.load_state_dict(start)
    seed = site.train_seed(1)
    train(model, "xray", images, targets, train_set.bits, epochs=1, batch_size=16,
          learning_rate=1e-3, seed=seed, dp_sgd=dp_sgd)  # fmt: skip
    update = leakage.parameter_update(start, model)
    training = leakage.LocalTraining("xray", 1, 16, 1e-3, seed, optimizer="adam")
    prior = to_float(train_set.images, train_set.bits).numpy().mean(axis=0)
    inv = leakage.invert_update(
        build_model("xray"), start, update, training, 1, (1, 32, 32), prior=prior, config=CONFIG
    )
    originals = to_float(images, train_set.bits).numpy()
    return leakage.score(inv.images, originals), leakage.mean_guess_psnr(prior, originals), inv


def test_optimisation_attack_reconstructs_a_32px_phantom_xray(phantom_site):
    score, guess, inv = attack(*phantom_site)
    np.testing.assert_array_equal(inv.labels, phantom_site[1].shard.train.targets[:1])
    assert score.psnr_scale_aligned[0] >= guess + 3.0
    assert score.ssim[0] >= 0.85


def test_local_dpsgd_noise_1_leaves_the_attack_at_the_mean_guess(phantom_site):
    score, guess, _ = attack(*phantom_site, dp_sgd=DpSgd(1.0, 1.0, noise_seed=0))
    assert score.psnr_scale_aligned[0] <= guess + 1.0
