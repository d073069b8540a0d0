"""What a curious server reads from the sites' updates: the plan of `medfed
attack updates`, the site's update, what each observer holds of it, the
attacks on it and their outputs (the CLI's binding to a running study:
simulations/attack.py).

For the attacked round and each chosen site, model and batch size b, the site
trains exactly as the study does (study.task.train with the site's seed, its
local epochs, batch size, learning rate and optimizer) on b of its training
images, which gives local-epochs x ceil(b / batch-size) local steps. What the
server then holds is computed under each defence, and both attacks of
privacy/updates.py reconstruct the images from it.

Who observes what, per `dp` defence (Flower 1.42's DP wrappers and mods):

| defence | the server sees | a holder of the global model sees |
| --- | --- | --- |
| none | the raw update | the average (here: the update itself, the worst case) |
| client-fixed, client-adaptive | the update clipped by the client mod, NO noise | clipped update + the server's noise |
| server-fixed | the raw update (it clips and noises after receiving) | clipped update + noise |
| local-dpsgd | the update trained with DP-SGD (noise added at the site) | the same |

The "global-model" observer is DP's worst case: it knows every other site's
contribution to the noised average and subtracts it, which leaves the target's
clipped update plus Gaussian noise of standard deviation z * C (the noise
Flower adds to the average, z * C / n, times the n sampled sites). Only
`local-dpsgd` adds noise before an update leaves the site, so it is the one
defence that protects against the server itself.

Clipping and the noise's standard deviation come from Flower's own functions
(flwr.supercore.differential_privacy); the noise is drawn from a seeded numpy
generator so that results are reproducible.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from privacy import scores, updates
from privacy.report import write_markdown, write_picture
from study import dp
from study.config import DP_MODES, Study
from study.schema import LeakageDocument, write_leakage
from study.task import MODEL_ARCHS, OPTIMIZERS, DpSgd, build_model, to_float, train

SCHEMA = 1
OBSERVERS = dp.OBSERVERS
CENTRAL_DP = dp.CENTRAL_MODES  # the server noises the mean of clipped updates
# "holdout": the server's held-out images (what the coordinator has; never the
# attacked site's) fit the optimisation attack's image prior; "none": raw pixels
PRIORS = ("holdout", "none")
# Bounds of `medfed attack updates`' numbers (its --help states them): far above
# any useful setting, low enough that a typo cannot start an attack of days
MAX_ROUND = 1000
MAX_BATCH_SIZE = 4096
MAX_ITERATIONS = 100_000  # --iterations and --pixel-iterations
MAX_RESTARTS = 100
MAX_TV_WEIGHT = 1000.0
MAX_PRIOR_COMPONENTS = 4096
MAX_SEED = 2**31 - 1


@dataclass(frozen=True)
class AttackPlan:
    """What `medfed attack updates` attacks."""

    study: Study
    out_dir: Path
    attacked_round: int = 1
    sites: tuple[int, ...] = (0,)
    batch_sizes: tuple[int, ...] = (1,)
    models: tuple[str, ...] = ("study",)
    defenses: tuple[str, ...] = ("none",)
    local_optimizer: str = "adam"
    attacks: tuple[str, ...] = ("analytic", "optimisation")
    inversion: updates.InversionConfig = field(default_factory=updates.InversionConfig)
    prior: str = "holdout"  # the optimisation attack's image prior: PRIORS
    cache_dir: Path | None = None  # decoded held-out images (None: out_dir/holdout-cache)
    seed: int = 0  # seeds the choice of images and the simulated DP noise

    def check(self) -> None:
        """Every setting within its range (the MAX_* bounds); a ValueError
        names the flag, the value and the range."""
        s = self.study
        inv = self.inversion
        for flag, value, least, most in (
            ("--round", self.attacked_round, 1, MAX_ROUND),
            *(("--batch-sizes", b, 1, MAX_BATCH_SIZE) for b in self.batch_sizes),
            ("--iterations", inv.iterations, 1, MAX_ITERATIONS),
            ("--restarts", inv.restarts, 1, MAX_RESTARTS),
            ("--prior-components", inv.prior_components, 0, MAX_PRIOR_COMPONENTS),
            ("--pixel-iterations", inv.pixel_iterations, 0, MAX_ITERATIONS),
            ("--seed", self.seed, 0, MAX_SEED),
            ("--seed", inv.seed, 0, MAX_SEED),
        ):
            if not least <= value <= most:
                raise ValueError(f"{flag} {value}: from {least} to {most}")
        if not (math.isfinite(inv.tv_weight) and 0 <= inv.tv_weight <= MAX_TV_WEIGHT):
            raise ValueError(
                f"--tv-weight {inv.tv_weight}: a finite number from 0 to {MAX_TV_WEIGHT:g}"
            )
        for site in self.sites:
            if not 0 <= site < s.num_sites:
                raise ValueError(f"--sites: site {site} is outside 0..{s.num_sites - 1}")
        for m in self.models:
            if m not in MODEL_ARCHS:
                raise ValueError(f"--model {m!r}: one of {', '.join(MODEL_ARCHS)}")
        for d in self.defenses:
            if d not in DP_MODES:
                raise ValueError(f"--defenses {d!r}: one of {', '.join(DP_MODES)}")
        for a in self.attacks:
            if a not in ("analytic", "optimisation"):
                raise ValueError(f"--attacks {a!r}: analytic or optimisation")
        if self.prior not in PRIORS:
            raise ValueError(f"--prior {self.prior!r}: one of {', '.join(PRIORS)}")
        if self.local_optimizer not in OPTIMIZERS:
            raise ValueError(f"--local-optimizer: one of {', '.join(OPTIMIZERS)}")
        if "mlp" in self.models and self.attacked_round > 1:
            raise ValueError(
                "--model mlp is attacked in round 1 only: the federation trains the study "
                "model, so there is no global mlp of a later round"
            )


# --------------------------------------------------------------- the round
def weights_digest(weights: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names and float32 bytes of a model's weights, in name
    order: which global model an attack ran against."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(weights):
        h.update(name.encode())
        h.update(np.ascontiguousarray(torch.as_tensor(weights[name]).float().numpy()).tobytes())
    return h.hexdigest()


def attacked_indices(num_train: int, batch_size: int, site: int, rnd: int, seed: int) -> np.ndarray:
    """Which of the site's training images make the attacked batch (seeded)."""
    if batch_size > num_train:
        raise ValueError(
            f"--batch-sizes {batch_size}: site {site} holds only {num_train} training images"
        )
    rng = np.random.default_rng([seed, site, rnd, batch_size])
    return np.sort(rng.choice(num_train, size=batch_size, replace=False))


def local_training(study: Study, site_seed: int, optimizer: str) -> updates.LocalTraining:
    return updates.LocalTraining(
        modality=study.modality,
        epochs=study.local_epochs,
        batch_size=study.batch_size,
        learning_rate=study.learning_rate,
        seed=site_seed,
        optimizer=optimizer,
        proximal_mu=study.proximal_mu if study.strategy == "FedProx" else 0.0,
    )


def site_update(
    study: Study,
    arch: str,
    global_state: dict[str, torch.Tensor],
    images: np.ndarray,
    targets: np.ndarray,
    bits: int,
    training: updates.LocalTraining,
    defense: str,
    noise_seed: int,
) -> dict[str, torch.Tensor]:
    """Train as the site would (study.task.train, the study's settings) and
    return local - global. Under local-dpsgd the training is DP-SGD."""
    model = build_model(study.modality, arch=arch, image_size=study.image_size)
    model.load_state_dict(global_state)
    dp_sgd = None
    if defense == "local-dpsgd":
        dp_sgd = DpSgd(study.dp_noise_multiplier, study.dp_clipping_norm, noise_seed=noise_seed)
    train(
        model,
        study.modality,
        images,
        targets,
        bits,
        epochs=training.epochs,
        batch_size=training.batch_size,
        learning_rate=training.learning_rate,
        seed=training.seed,
        proximal_mu=training.proximal_mu,
        optimizer=training.optimizer,
        dp_sgd=dp_sgd,
    )
    return updates.parameter_update(global_state, model)


def observers_of(defense: str) -> tuple[str, ...]:
    """Observers whose views differ under `defense` (see the module table)."""
    return OBSERVERS if defense in CENTRAL_DP else ("server",)


def observed_update(
    update: dict[str, torch.Tensor],
    defense: str,
    observer: str,
    study: Study,
    rng: np.random.Generator,
) -> dict[str, torch.Tensor]:
    """What `observer` holds of the site's update under `defense`."""
    from flwr.supercore.differential_privacy import (
        clip_inputs_inplace,
        compute_adaptive_noise_params,
        compute_stdv,
    )

    mode = dp.dp_mode(defense)
    names = list(update)
    arrays = [update[k].numpy().copy() for k in names]
    if mode.central and (mode.clipped_by == "site" or observer == "global-model"):
        # the client mod (or, for server-fixed, the server) clips the update;
        # round 1 of adaptive clipping uses the initial norm
        clip_inputs_inplace(arrays, study.dp_clipping_norm)
    if observer == "global-model" and mode.central:
        from study.privacy import sites_sampled

        n = sites_sampled(study)
        z = study.dp_noise_multiplier
        if mode.adaptive:
            # the clipped-count noise the server's wrapper is built with
            _, z = compute_adaptive_noise_params(z, n, dp.clipped_count_stddev(z, n))
        # Flower's noise on the average, in units of one site's contribution
        std = compute_stdv(z, study.dp_clipping_norm, n) * n
        arrays = [a + rng.normal(0.0, std, a.shape).astype(a.dtype) for a in arrays]
    return {k: torch.from_numpy(a) for k, a in zip(names, arrays, strict=True)}


# ------------------------------------------------------------------ running
@dataclass(frozen=True)
class SiteData:
    """What a site trains on in the attacked round: its training set as stored
    (integers of `bits` bits) and its training seed that round."""

    images: np.ndarray
    targets: np.ndarray
    bits: int
    train_seed: int


@dataclass(frozen=True)
class Federation:
    """What the attacks read of a study as it runs, supplied by the caller
    (the CLI binds it to the study: simulations.attack.study_federation).
    `site_data(site)`: the site's SiteData in the attacked round;
    `global_weights(arch)`: the global model the server sends in that round;
    `held_out()`: the server's held-out images as floats on [0, 1], what the
    attacker knows of the images without any update (their mean is the mean
    guess, their principal components the optimisation attack's prior)."""

    site_data: Callable[[int], SiteData]
    global_weights: Callable[[str], dict[str, torch.Tensor]]
    held_out: Callable[[], np.ndarray]


def run_attacks(
    plan: AttackPlan,
    federation: Federation,
    say: Callable[[str], None] = print,
    *,
    pictures: list[dict] | None = None,
    draw: bool = True,
) -> dict:
    """Run every attack of `plan` on what `federation` holds; write leakage.json after each one (partial
    results survive an interrupt), then leakage.png and leakage.md (`draw`).
    `pictures`: a list that receives, per attack, its JSON entry with the
    real images ("originals") and the matched reconstructions ("recon")."""
    plan.check()
    s = plan.study
    out = plan.out_dir
    out.mkdir(parents=True, exist_ok=True)
    doc = {"schema": SCHEMA, "study": s.name, "round": plan.attacked_round, "attacks": []}
    pictures = [] if pictures is None else pictures
    weights = {m: federation.global_weights(m) for m in plan.models}
    doc["global_models"] = {
        m: {
            "source": "the initial model"
            if plan.attacked_round == 1
            else f"the study run for rounds 1..{plan.attacked_round - 1} in {out / 'federation'}",
            "sha256": weights_digest(w),
        }
        for m, w in weights.items()
    }
    public = federation.held_out()
    mean_guess = public.mean(axis=0)
    doc["mean_guess"] = {"source": "the server's held-out images", "images": len(public)}
    prior = attacker_prior(plan, public)
    if prior is not None:
        doc["prior"] = {
            "source": "the server's held-out images",
            "reference_images": prior.reference_images,
            "components": prior.components,
        }
    for site_id in plan.sites:
        site = federation.site_data(site_id)  # what the site trains on
        images_all, targets_all, bits = site.images, site.targets, site.bits
        mean_image = to_float(images_all, bits).numpy().mean(axis=0)
        training = local_training(s, site.train_seed, plan.local_optimizer)
        for arch in plan.models:
            global_state = weights[arch]
            for b in plan.batch_sizes:
                idx = attacked_indices(len(images_all), b, site_id, plan.attacked_round, plan.seed)
                images, targets = images_all[idx], targets_all[idx]
                originals = to_float(images, bits).numpy()
                guess = scores.mean_guess_psnr(mean_guess, originals)
                guess_aligned = scores.mean_guess_psnr_scale_aligned(mean_guess, originals)
                for defense in plan.defenses:
                    noise_seed = plan.seed * 7919 + site_id * 31 + b
                    update = site_update(
                        s, arch, global_state, images, targets, bits, training, defense, noise_seed
                    )
                    for observer in observers_of(defense):
                        rng = np.random.default_rng([plan.seed, site_id, b, 1])
                        seen = observed_update(update, defense, observer, s, rng)
                        base = {
                            "model": arch,
                            "defense": defense,
                            "observer": observer,
                            "site": site_id,
                            "batch_size": b,
                            "local_steps": training.steps(b),
                            "local_optimizer": training.optimizer,
                            "mean_guess_psnr": guess,
                            "mean_guess_psnr_scale_aligned": guess_aligned,
                            # for reference: guessing the site's own mean training image
                            "site_mean_psnr": scores.mean_guess_psnr(mean_image, originals),
                        }
                        for entry, recon in attack_update(
                            plan,
                            arch,
                            global_state,
                            seen,
                            training,
                            originals,
                            targets,
                            prior,
                            say,
                            base,
                            bits=bits,
                        ):
                            doc["attacks"].append(entry)
                            pictures.append({**entry, "originals": originals, "recon": recon})
                            write_json(out / "leakage.json", doc)
    write_json(out / "leakage.json", doc)
    if pictures and draw:
        write_picture(out / "leakage.png", pictures, s.modality)
        write_markdown(out / "leakage.md", doc, plan)
    return doc


def attack_secure_sum(
    plan: AttackPlan, federation: Federation, say: Callable[[str], None] = print
) -> dict:
    """The optimisation attack on what a SecAgg+ server holds: the sum of the
    sampled sites' updates, never one site's.

    Each of the K sites Flower samples (sites 0..K-1) trains as the study does
    on b = `plan.batch_sizes[0]` of its images under the first of
    `plan.defenses` (as the site would send it: client-side clipping, local
    DP-SGD); SecAgg+ reveals their example-weighted sum. The attacker treats
    that sum as the update of one batch of the K * b images (it knows K, b and
    every label: an upper bound) and reconstructs them all; each reconstruction
    is matched to one real image. Returns the JSON entry of that attack, with
    `observer` "server (secure sum)"."""
    from study.privacy import sites_sampled

    plan.check()
    s = plan.study
    b = plan.batch_sizes[0]
    defense = plan.defenses[0]
    k = sites_sampled(s)
    global_state = federation.global_weights("study")
    public = federation.held_out()
    prior = attacker_prior(plan, public)
    total: dict[str, torch.Tensor] | None = None
    images, targets = [], []
    bits = 8
    for site_id in range(k):
        site = federation.site_data(site_id)
        site_images, site_targets, bits = site.images, site.targets, site.bits
        idx = attacked_indices(len(site_images), b, site_id, plan.attacked_round, plan.seed)
        training = local_training(s, site.train_seed, plan.local_optimizer)
        update = site_update(
            s, "study", global_state, site_images[idx], site_targets[idx], bits, training,
            defense, plan.seed * 7919 + site_id * 31 + b,
        )  # fmt: skip
        rng = np.random.default_rng([plan.seed, site_id, b, 1])
        seen = observed_update(update, defense, "server", s, rng)
        weighted = {name: v * float(b) for name, v in seen.items()}
        total = weighted if total is None else {n: total[n] + weighted[n] for n in total}
        images.append(site_images[idx])
        targets.append(site_targets[idx])
    assert total is not None
    batch, labels = np.concatenate(images), np.concatenate(targets)
    originals = to_float(batch, bits).numpy()
    training = local_training(s, 0, plan.local_optimizer)
    base = {
        "model": "study",
        "defense": defense,
        "secure_aggregation": "secagg+",
        "observer": "server (secure sum)",
        "site": None,
        "sites_summed": k,
        "batch_size": len(batch),
        "local_steps": training.steps(len(batch)),
        "local_optimizer": training.optimizer,
        "mean_guess_psnr": scores.mean_guess_psnr(public.mean(axis=0), originals),
        "mean_guess_psnr_scale_aligned": scores.mean_guess_psnr_scale_aligned(
            public.mean(axis=0), originals
        ),
    }
    model = build_model(s.modality, arch="study", image_size=s.image_size)
    model.load_state_dict(global_state)
    inv = updates.invert_update(
        model,
        global_state,
        total,
        training,
        len(batch),
        originals.shape[1:],
        targets=labels,
        prior=prior,
        config=plan.inversion,
    )
    label = f"secure sum of {k} sites x b={b} {defense}"
    entry, _ = scored_entry(
        base, "optimisation", inv.images, originals, inv.seconds, "given", say, label
    )
    return entry


def attacker_prior(plan: AttackPlan, public: np.ndarray) -> updates.ImagePrior | None:
    """The optimisation attack's image prior (PCA of `public`), or None."""
    if plan.prior == "none" or "optimisation" not in plan.attacks:
        return None
    return updates.ImagePrior.fit(public, plan.inversion.prior_components)


def attack_update(
    plan, arch, global_state, seen, training, originals, targets, prior, say, base, bits=None
):
    """Both attacks on one observed update: yields (JSON entry, reconstructions).
    `bits`: the bit depth the images are stored at (the analytic attack snaps
    its estimate to that grid, privacy.updates.snap_to_grid)."""
    s = plan.study
    b = len(originals)
    model = build_model(s.modality, arch=arch, image_size=s.image_size)
    model.load_state_dict(global_state)
    label = (
        f"site {base['site']} {arch} b={b} {base['defense']}/{base['observer']} "
        f"({base['local_steps']} local steps)"
    )
    layer = updates.first_linear_layer(model)
    if layer is not None and "analytic" in plan.attacks:
        t0 = time.perf_counter()
        recon = updates.analytic_recovery(
            seen, training, layer, b, originals.shape[1:], global_state=global_state, bits=bits
        )
        yield scored_entry(
            base, "analytic", recon, originals, time.perf_counter() - t0, "none", say, label
        )
    if "optimisation" not in plan.attacks:
        return
    targets_given = None if (s.modality == "xray" and b == 1) else targets
    last = [0.0]

    def progress(done: int, total: int) -> None:
        if time.perf_counter() - last[0] > 10:
            last[0] = time.perf_counter()
            say(f"  {label}: optimisation {done}/{total} iterations")

    inv = updates.invert_update(
        model,
        global_state,
        seen,
        training,
        b,
        originals.shape[1:],
        targets=targets_given,
        prior=prior,
        config=plan.inversion,
        progress=progress,
    )
    if inv.labels_source == "recovered":
        labels_right = float(np.mean(inv.labels == np.asarray(targets, dtype=np.float32)))
    else:
        labels_right = None
    yield scored_entry(
        {
            **base,
            "labels_recovered_correct": labels_right,
            "objective": inv.objective,
            "prior_mean_objective": inv.mean_objective,
            "chosen": inv.chosen,
        },
        "optimisation",
        inv.images,
        originals,
        inv.seconds,
        inv.labels_source,
        say,
        label,
    )


def scored_entry(base, attack, recon, originals, seconds, labels, say, label):
    sc = scores.score(recon, originals)
    entry = {
        **base,
        "attack": attack,
        "labels": labels,
        "psnr": sc.psnr,
        "ssim": sc.ssim,
        "psnr_scale_aligned": sc.psnr_scale_aligned,
        # the headline: how far the reconstruction beats guessing the mean image,
        # as the attacker outputs it and with both scored on the intensity factor
        # no update can reveal (see privacy.scores.score)
        "gain_db": float(np.mean(sc.psnr)) - base["mean_guess_psnr"],
        "gain_scale_aligned_db": float(np.mean(sc.psnr_scale_aligned))
        - base["mean_guess_psnr_scale_aligned"],
        "recovered_share": scores.recovered_share(sc.psnr),
        "seconds": seconds,
        "seconds_per_image": seconds / len(originals),
    }
    say(
        f"{label} {attack}: PSNR {np.mean(sc.psnr):.1f} dB against the mean guess "
        f"{base['mean_guess_psnr']:.1f} ({entry['gain_db']:+.1f}); scale-aligned "
        f"{np.mean(sc.psnr_scale_aligned):.1f} against {base['mean_guess_psnr_scale_aligned']:.1f} "
        f"({entry['gain_scale_aligned_db']:+.1f}); SSIM {np.mean(sc.ssim):.3f}, "
        f"recovered {entry['recovered_share']:.0%}, {seconds:.1f} s"
    )
    return entry, recon[sc.matched]


def write_json(path: Path, doc: dict) -> None:
    """leakage.json through study.schema's one writer (strict JSON, atomic)."""
    write_leakage(path, LeakageDocument.from_json(doc, source=str(path)))
