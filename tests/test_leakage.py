"""privacy.updates: the attacks on a site's model update, on small in-memory data.

The site's update is always made by study.task.train, the study's own
training; the attacks see only the global weights, the update and the
training settings a server configures.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import smooth_images

from privacy import scores, updates
from study.task import DpSgd, build_model, to_float, train

SIZE = 16


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models: one thread is fastest, and on a shared machine several
    threads per test mostly wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def xray_batch(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    images = smooth_images(n, 1, SIZE, 8, seed=seed)
    targets = (np.random.default_rng(seed).random((n, 14)) < 0.3).astype(np.float32)
    return images, targets


def site_update(arch, images, targets, training, *, dp_sgd=None, modality="xray"):
    """What the server receives: global weights and local - global."""
    torch.manual_seed(0)
    model = build_model(modality, arch=arch, image_size=SIZE)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    train(
        model,
        modality,
        images,
        targets,
        8,
        epochs=training.epochs,
        batch_size=training.batch_size,
        learning_rate=training.learning_rate,
        seed=training.seed,
        optimizer=training.optimizer,
        proximal_mu=training.proximal_mu,
        dp_sgd=dp_sgd,
    )
    return start, updates.parameter_update(start, model)


def sgd(epochs=1, batch_size=16, seed=3):
    return updates.LocalTraining("xray", epochs, batch_size, 1e-3, seed, optimizer="sgd")


def test_analytic_attack_reads_one_image_back_from_the_mlp_update():
    # Prepare: one image, plain SGD, two local epochs (two steps)
    images, targets = xray_batch(1)
    training = sgd(epochs=2)
    start, update = site_update("mlp", images, targets, training)
    model = build_model("xray", arch="mlp", image_size=SIZE)
    # Execute
    layer = updates.first_linear_layer(model)
    recon = updates.analytic_recovery(update, training, layer, 1, (1, SIZE, SIZE))
    # Assert
    assert layer == ("first.weight", "first.bias")
    assert scores.score(recon, to_float(images, 8).numpy()).psnr[0] >= 60.0


def test_analytic_attack_separates_images_that_alone_fire_a_unit():
    # Prepare: four images in one step: rows fired by one image repeat it exactly
    images, targets = xray_batch(4, seed=1)
    training = sgd()
    _, update = site_update("mlp", images, targets, training)
    # Execute
    recon = updates.analytic_recovery(
        update, training, ("first.weight", "first.bias"), 4, (1, SIZE, SIZE)
    )
    score = scores.score(recon, to_float(images, 8).numpy())
    # Assert: every image comes back (ReLU units fired by one image only exist for each)
    assert sorted(score.matched) == [0, 1, 2, 3]
    assert min(score.psnr) >= 60.0


def test_adam_does_not_hide_the_image_from_the_analytic_attack():
    # Prepare: the same kind of update with the study's optimizer: Adam's first
    # step moves every weight by about lr * sign(g)
    images, targets = xray_batch(1)
    training = updates.LocalTraining("xray", 1, 16, 1e-3, 3, optimizer="adam")
    start, update = site_update("mlp", images, targets, training)
    # Execute: invert lr * g / (|g| + eps) element by element, then read the rows back
    recon = updates.analytic_recovery(
        update, training, ("first.weight", "first.bias"), 1, (1, SIZE, SIZE), global_state=start
    )
    # Assert: the step is sign-like, yet the magnitudes near eps survive float32
    # rounding well enough
    assert torch.allclose(update["first.bias"].abs().max(), torch.tensor(1e-3), rtol=1e-3)
    assert scores.score(recon, to_float(images, 8).numpy()).psnr[0] >= 60.0


def median_over_rows(update, training) -> np.ndarray:
    """The analytic attack before it weighed elements by their precision: Adam's
    first step inverted, then the median over all active rows of row / bias."""
    gw = updates.adam_first_step_gradient(update["first.weight"], training.learning_rate)
    gb = updates.adam_first_step_gradient(update["first.bias"], training.learning_rate)
    active = update["first.bias"] != 0
    rows = gw[active].double() / gb[active, None].double()
    return rows.median(dim=0).values.clamp(0, 1).reshape(1, 1, SIZE, SIZE).numpy()


@pytest.mark.parametrize("seed", [2, 3])
def test_adam_analytic_attack_beats_the_median_over_all_rows(seed):
    # Prepare: one image, one Adam step; most elements' steps saturate at lr, and
    # the median over every row mixes the rows of saturated, imprecise gradients
    images, targets = xray_batch(1, seed=seed)
    training = updates.LocalTraining("xray", 1, 16, 1e-3, 3, optimizer="adam")
    start, update = site_update("mlp", images, targets, training)
    originals = to_float(images, 8).numpy()
    # Execute
    recon = updates.analytic_recovery(
        update, training, ("first.weight", "first.bias"), 1, (1, SIZE, SIZE), global_state=start
    )
    # Assert: each element weighted by what float32 left of its gradient, the
    # rank-one fit over all rows reads the image back far better (seed 2: 40.3 dB
    # before, 57.8 after; seed 3: 33.4 before, 61.4 after)
    before = scores.score(median_over_rows(update, training), originals).psnr[0]
    after = scores.score(recon, originals).psnr[0]
    assert after >= 50.0
    assert after >= before + 10.0


def test_adam_analytic_attack_reads_back_a_batch_of_four():
    # Prepare: four images in one Adam step
    images, targets = xray_batch(4, seed=0)
    training = updates.LocalTraining("xray", 1, 16, 1e-3, 3, optimizer="adam")
    start, update = site_update("mlp", images, targets, training)
    # Execute
    recon = updates.analytic_recovery(
        update, training, ("first.weight", "first.bias"), 4, (1, SIZE, SIZE), global_state=start
    )
    score = scores.score(recon, to_float(images, 8).numpy())
    # Assert: rows grouped by agreement within their own noise (before: groups of
    # rows equal to 1e-3, which Adam's noise never met: 14.6 dB on average)
    assert float(np.mean(score.psnr)) >= 30.0
    assert max(score.psnr) >= 40.0


def test_adam_step_gradient_knows_which_elements_saturated():
    # Prepare: one Adam step of three weights at 0.5 with gradients far below,
    # near and far above Adam's eps
    before = torch.full((3,), 0.5)
    g = torch.tensor([1e-10, 1e-8, 1.0])
    after = before - 1e-3 * g / (g.abs() + updates.ADAM_EPS)
    # Execute
    gradient, deviation = updates.adam_step_gradient(after - before, before, 1e-3)
    # Assert: the small gradients come back within their deviation; the large one
    # saturated (the step rounds to lr) and carries no weight
    assert torch.allclose(gradient[:2], g[:2].double(), rtol=0.05)
    assert bool((deviation[:2] < 0.05 * g[:2].double()).all())
    assert math.isinf(float(deviation[2]))


def test_adam_analytic_attack_needs_the_global_weights():
    images, targets = xray_batch(1)
    training = updates.LocalTraining("xray", 1, 16, 1e-3, 3, optimizer="adam")
    _, update = site_update("mlp", images, targets, training)
    with pytest.raises(ValueError, match="global_state"):
        updates.analytic_recovery(update, training, ("first.weight", "first.bias"), 1, (1, 4, 4))


def test_study_cnn_cannot_tell_an_image_from_a_scaled_copy():
    # Prepare: bias-free first convolution + GroupNorm
    images, targets = xray_batch(1, seed=8)
    training = sgd()
    start, update = site_update("study", images, targets, training)
    x = to_float(images, 8)
    # Execute
    same = [
        updates.simulate_update(
            build_model("xray"), start, a * x, torch.from_numpy(targets), training
        )
        for a in (1.0, 0.7)
    ]
    shifted = updates.simulate_update(
        build_model("xray"), start, x + 0.1, torch.from_numpy(targets), training
    )
    # Assert: a global factor leaves the update unchanged, an offset does not
    assert float(updates.cosine_distance(same[1], same[0]).detach()) < 1e-3  # GroupNorm eps
    assert float(updates.cosine_distance(shifted, update).detach()) > 0.01


def test_study_cnn_has_no_fully_connected_first_layer():
    assert updates.first_linear_layer(build_model("xray")) is None
    assert updates.first_linear_layer(build_model("mri")) is None


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_simulated_training_reproduces_the_sites_update(optimizer):
    # Prepare: 3 images, batch 2, 2 epochs: 4 local steps, as FedAvg takes them
    images, targets = xray_batch(3, seed=2)
    training = updates.LocalTraining("xray", 2, 2, 1e-3, 11, optimizer=optimizer)
    start, update = site_update("study", images, targets, training)
    # Execute
    simulated = updates.simulate_update(
        build_model("xray"), start, to_float(images, 8), torch.from_numpy(targets), training
    )
    # Assert
    assert training.steps(3) == 4 and len(training.batches(3)) == 4
    assert float(updates.cosine_distance(simulated, update).detach()) < 1e-5
    other = updates.simulate_update(
        build_model("xray"),
        start,
        torch.rand(3, 1, SIZE, SIZE),
        torch.from_numpy(targets),
        training,
    )
    assert float(updates.cosine_distance(other, update).detach()) > 0.01


def test_labels_come_back_from_the_head_bias_update():
    images, targets = xray_batch(1, seed=4)
    for optimizer in ("sgd", "adam"):
        training = updates.LocalTraining("xray", 1, 16, 1e-3, 5, optimizer=optimizer)
        _, update = site_update("study", images, targets, training)
        labels = updates.recover_labels(build_model("xray"), update, 14)
        np.testing.assert_array_equal(labels, targets)


def test_score_matches_reconstructions_one_to_one():
    # Prepare: the originals in another order, one of them slightly off
    originals = to_float(smooth_images(3, 1, SIZE, 8, seed=5), 8).numpy()
    recon = originals[[2, 0, 1]].copy()
    recon[0] += 0.01
    # Execute
    score = scores.score(recon, originals)
    # Assert
    assert score.matched == [1, 2, 0]
    assert score.psnr[1] == scores.PSNR_CAP_DB and score.psnr[2] == pytest.approx(40.0, abs=0.01)
    assert score.ssim[0] == pytest.approx(1.0)
    assert scores.recovered_share([25.0, 19.0, 40.0, 10.0]) == 0.5
    # a reconstruction off by a global intensity factor only (invisible to the CNN)
    dim = scores.score(originals * 0.8, originals)
    assert dim.psnr[0] < 30.0 and dim.psnr_scale_aligned[0] > 150.0
    assert scores.mean_guess_psnr(originals.mean(0), originals) < 40.0


def test_optimisation_attack_runs_and_improves_its_objective():
    # Prepare: one image, the study CNN, a few iterations (speed, not quality)
    images, targets = xray_batch(1, seed=6)
    training = sgd()
    start, update = site_update("study", images, targets, training)
    config = updates.InversionConfig(iterations=6, restarts=2, seed=1)
    calls = []
    # Execute
    inv = updates.invert_update(
        build_model("xray"),
        start,
        update,
        training,
        1,
        (1, SIZE, SIZE),
        config=config,
        progress=lambda done, total: calls.append((done, total)),
    )
    # Assert
    assert inv.images.shape == (1, 1, SIZE, SIZE) and 0 <= inv.images.min() <= inv.images.max() <= 1
    assert inv.labels_source == "recovered"
    np.testing.assert_array_equal(inv.labels, targets)
    assert calls[-1] == (12, 12)
    assert inv.objective < 1.0


def test_image_prior_spans_its_reference_images():
    # Prepare: 6 reference images -> at most 5 principal components
    refs = to_float(smooth_images(6, 1, SIZE, 8, seed=9), 8).numpy()
    # Execute
    prior = updates.ImagePrior.fit(refs, components=40)
    coefficients, *_ = np.linalg.lstsq(
        prior.basis.T.astype(np.float64), (refs - prior.mean).reshape(6, -1).T, rcond=None
    )
    decoded = prior.decode(torch.from_numpy(coefficients.T).float()).numpy()
    # Assert: k = N - 1 components reproduce every reference; zero is the mean
    assert prior.components == 5 and prior.reference_images == 6
    np.testing.assert_allclose(prior.decode(torch.zeros(1, 5)).numpy()[0], refs.mean(0), atol=1e-6)
    assert min(scores.psnr_db(d, r) for d, r in zip(decoded, refs, strict=True)) > 60
    with pytest.raises(ValueError, match="at least 2 reference images"):
        updates.ImagePrior.fit(refs[:1], 4)


def test_optimisation_attack_in_the_prior_improves_on_the_prior_mean():
    # Prepare: the attacker's prior from other images than the site's
    images, targets = xray_batch(1, seed=6)
    training = sgd()
    start, update = site_update("study", images, targets, training)
    refs = to_float(smooth_images(12, 1, SIZE, 8, seed=10), 8).numpy()
    prior = updates.ImagePrior.fit(refs, components=8)
    config = updates.InversionConfig(iterations=8, restarts=2, prior_components=8, seed=2)
    y = torch.from_numpy(targets)
    at_mean = updates.simulate_update(
        build_model("xray"), start, torch.from_numpy(prior.mean[None]), y, training
    )
    # Execute
    inv = updates.invert_update(
        build_model("xray"), start, update, training, 1, (1, SIZE, SIZE), prior=prior,
        config=config,
    )  # fmt: skip
    # Assert: restart 0 starts at the prior's mean; the chosen restart fits the update better
    assert len(inv.restart_objectives) == 2 and inv.objective == min(inv.restart_objectives)
    assert inv.chosen == "reconstruction"
    assert inv.objective < inv.mean_objective - config.accept_margin
    assert inv.mean_objective == pytest.approx(
        float(updates.cosine_distance(at_mean, update).detach()), abs=1e-6
    )
    with pytest.raises(ValueError, match="image prior of shape"):
        updates.invert_update(
            build_model("xray"), start, update, training, 1, (1, 8, 8), prior=prior, config=config
        )


def test_an_update_of_noise_leaves_the_attacker_at_the_prior_mean():
    # Prepare: what the server sees under heavy local noise: no trace of the image
    images, targets = xray_batch(1, seed=6)
    training = sgd()
    start, update = site_update("study", images, targets, training)
    noise = {k: torch.randn(v.shape, generator=torch.Generator().manual_seed(1)) for k, v in
             update.items()}  # fmt: skip
    refs = to_float(smooth_images(12, 1, SIZE, 8, seed=10), 8).numpy()
    prior = updates.ImagePrior.fit(refs, components=8)
    config = updates.InversionConfig(iterations=8, restarts=2, prior_components=8, seed=2)
    # Execute
    inv = updates.invert_update(
        build_model("xray"), start, noise, training, 1, (1, SIZE, SIZE), prior=prior,
        targets=targets, config=config,
    )  # fmt: skip
    # Assert: no restart explains the noise by the margin: the answer is the mean image
    assert inv.chosen == "prior mean" and inv.objective == inv.mean_objective
    np.testing.assert_allclose(inv.images[0], prior.mean, atol=1e-6)
    assert min(inv.restart_objectives) > inv.mean_objective - config.accept_margin


def test_mean_guess_is_scored_both_ways():
    originals = to_float(smooth_images(3, 1, SIZE, 8, seed=11), 8).numpy()
    mean = originals.mean(0)
    plain = scores.mean_guess_psnr(mean, originals)
    aligned = scores.mean_guess_psnr_scale_aligned(mean, originals)
    assert aligned >= plain
    assert scores.mean_guess_psnr_scale_aligned(originals[0] * 0.5, originals[:1]) > 150


def test_dp_sgd_update_carries_the_noise_of_its_multiplier():
    # Prepare: one image; DP-SGD clips its gradient to 1 and adds N(0, z^2) per coordinate
    images, targets = xray_batch(1, seed=7)
    training = sgd()
    _, plain = site_update("mlp", images, targets, training)
    _, noised = site_update("mlp", images, targets, training, dp_sgd=DpSgd(1.0, 1.0, noise_seed=3))
    _, again = site_update("mlp", images, targets, training, dp_sgd=DpSgd(1.0, 1.0, noise_seed=3))
    # Execute
    recon = updates.analytic_recovery(
        noised, training, ("first.weight", "first.bias"), 1, (1, SIZE, SIZE)
    )
    psnr = scores.score(recon, to_float(images, 8).numpy()).psnr[0]
    # Assert: lr * (clipped gradient + noise): the noise dominates the clipped signal
    per_coordinate = noised["first.weight"].std() / 1e-3
    assert 0.9 < float(per_coordinate) < 1.1
    assert any(bool(v.abs().max() > 0) for v in plain.values()) and psnr < 20.0
    assert all(torch.equal(noised[k], again[k]) for k in noised)  # a given noise_seed repeats


@pytest.mark.parametrize("arch", ["study", "mlp"])
def test_the_attacks_simulated_update_is_the_sites_update_bit_for_bit(arch):
    # Prepare: the demo's model (the study CNN) and the mlp, Adam, FedProx's term,
    # 3 images in batches of 2 over 2 epochs: 4 steps in the site's own batch order
    images, targets = xray_batch(3, seed=2)
    training = updates.LocalTraining("xray", 2, 2, 1e-3, 11, optimizer="adam", proximal_mu=0.1)
    start, update = site_update(arch, images, targets, training)
    seen = []
    torch.manual_seed(0)
    check = build_model("xray", arch=arch, image_size=SIZE)
    train(
        check, "xray", images, targets, 8, epochs=2, batch_size=2, learning_rate=1e-3, seed=11,
        proximal_mu=0.1, step_hook=lambda step, batch, loss: seen.append(batch),
    )  # fmt: skip
    # Execute
    simulated = updates.simulate_update(
        build_model("xray", arch=arch, image_size=SIZE), start, to_float(images, 8),
        torch.from_numpy(targets), training,
    )  # fmt: skip
    # Assert: every tensor equal to the last bit; the attacker's batches are the site's
    assert set(simulated) == set(update)
    assert all(torch.equal(simulated[k], update[k]) for k in update)
    assert [b.tolist() for b in training.batches(3)] == [b.tolist() for b in seen]
    assert len(seen) == training.steps(3) == 4


def test_train_takes_a_batch_sampler_and_refuses_one_under_dp_sgd():
    images, targets = xray_batch(4, seed=3)
    seen = []
    model = build_model("xray", arch="mlp", image_size=SIZE)
    train(
        model, "xray", images, targets, 8, epochs=1, batch_size=2, learning_rate=1e-3,
        batch_sampler=lambda n, b, e, s: [torch.tensor([3]), torch.tensor([0, 1, 2])],
        step_hook=lambda step, batch, loss: seen.append((step, batch.tolist())),
    )  # fmt: skip
    assert seen == [(1, [3]), (2, [0, 1, 2])]
    with pytest.raises(ValueError, match="Poisson batches"):
        train(model, "xray", images, targets, 8, epochs=1, batch_size=2, learning_rate=1e-3,
              dp_sgd=DpSgd(1.0, 1.0, noise_seed=0), step_hook=lambda *a: None)  # fmt: skip


def test_snap_to_grid_fits_scale_and_offset_and_refuses_what_has_no_grid():
    # Prepare: an 8-bit image read back 0.3 % too dark, 0.1 level high, with
    # noise of 0.1 level; and noise with no grid in it
    gen = torch.Generator().manual_seed(0)
    k = torch.randint(0, 256, (1024,), generator=gen).double()
    estimate = 0.997 * (k + 0.1) + 0.1 * torch.randn(1024, generator=gen, dtype=torch.float64)
    # Execute
    snapped, fit = updates.snap_to_grid(estimate / 255, 8)
    noise, nofit = updates.snap_to_grid(torch.rand(1024, generator=gen, dtype=torch.float64), 8)
    # Assert: every pixel back exactly; the noise is returned unchanged
    assert fit.snapped and fit.resultant > 0.8 and abs(fit.scale - 0.997) < 5e-4
    assert torch.equal(snapped * 255, k)
    assert not nofit.snapped and nofit.resultant < updates.GRID_MIN_RESULTANT
    assert not updates.snap_to_grid(estimate / 65535, 16)[1].snapped  # finer than 8 bits


def test_the_global_model_view_under_adaptive_clipping_has_the_servers_noise():
    # Prepare: 2 sites at z = 1, where Flower's default clipped-count noise
    # (sites / 20) cannot be split off; the server then uses max(sites / 20, z)
    from flwr.supercore.differential_privacy import compute_adaptive_noise_params

    from privacy.attack import observed_update
    from study.config import Study

    study = Study(num_sites=2, dp="client-adaptive", dp_noise_multiplier=1.0)
    update = {"w": torch.full((200_000,), 1e-6)}  # well inside the clipping norm
    # Execute
    seen = observed_update(
        update, "client-adaptive", "global-model", study, np.random.default_rng(0)
    )
    # Assert: the noise of one site's share of Flower's noised mean (z_eff * C)
    _, z_eff = compute_adaptive_noise_params(1.0, 2, 1.0)
    assert float(seen["w"].std()) == pytest.approx(z_eff * study.dp_clipping_norm, rel=0.01)
