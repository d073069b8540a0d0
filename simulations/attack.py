"""`medfed attack updates`: run the attacks of privacy/ on a study's sites.

The attacks, the plan, the DP observers and the outputs live in privacy.attack;
this module binds them to the study as it runs: the sites' training sets
(client.site.Site), the server's held-out images (server.holdout) and, for a
later round, the federation that made its global model (simulations.runner).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from privacy import scores, updates
from privacy.attack import (
    MAX_ITERATIONS,
    MAX_RESTARTS,
    MAX_TV_WEIGHT,
    SCHEMA,
    AttackPlan,
    attack_update,
    attacked_indices,
    attacker_prior,
    local_training,
    observed_update,
    observers_of,
    scored_entry,
    site_update,
    weights_digest,
    write_json,
    write_markdown,
    write_picture,
)
from study.config import DP_MODES, Study
from study.task import build_model, to_float

__all__ = [
    "MAX_ITERATIONS",
    "MAX_RESTARTS",
    "MAX_TV_WEIGHT",
    "AttackPlan",
    "attack_secure_sum",
    "global_weights",
    "held_out_images",
    "plan_from_args",
    "run_attacks",
    "write_picture",
]


def global_weights(
    study: Study, arch: str, attacked_round: int, work_dir: Path
) -> dict[str, torch.Tensor]:
    """The global model the server sends in `attacked_round`: round 1 the
    initial model, seeded as the server seeds it; later rounds the final model
    of the same study run for attacked_round - 1 rounds."""
    if attacked_round == 1:
        torch.manual_seed(study.seed)
        model = build_model(study.modality, arch=arch, image_size=study.image_size)
        return {k: v.detach().clone() for k, v in model.state_dict().items()}
    from simulations.runner import run_simulated_study

    prior = study.replace(num_rounds=attacked_round - 1, out_dir=str(work_dir / "federation"))
    result = run_simulated_study(prior)
    arrays = getattr(result, "arrays", None)
    if not arrays:
        raise RuntimeError(
            f"the federation of rounds 1..{attacked_round - 1} returned no global weights"
        )
    return {k: torch.as_tensor(np.asarray(v)) for k, v in arrays.items()}


def held_out_images(plan: AttackPlan) -> np.ndarray:
    """The server's held-out images as floats on [0, 1] (server.holdout: the
    patients no site holds): what the attacker knows of the images without any
    update. Their mean is the mean guess; their principal components the
    optimisation attack's prior."""
    from server.holdout import study_holdout

    held = study_holdout(plan.study, plan.cache_dir or plan.out_dir / "holdout-cache")
    if len(held.images) < 2:
        raise ValueError(
            f"the study holds out {len(held.images)} image(s): the attacker's mean guess and "
            "image prior need at least 2 (raise phantom-patients or holdout-images)"
        )
    return to_float(held.images, held.bits).numpy()


def run_attacks(
    plan: AttackPlan,
    say: Callable[[str], None] = print,
    *,
    pictures: list[dict] | None = None,
    draw: bool = True,
) -> dict:
    """Run every attack of `plan`; write leakage.json after each one (partial
    results survive an interrupt), then leakage.png and leakage.md (`draw`).
    `pictures`: a list that receives, per attack, its JSON entry with the
    real images ("originals") and the matched reconstructions ("recon")."""
    from client.site import Site

    plan.check()
    s = plan.study
    out = plan.out_dir
    out.mkdir(parents=True, exist_ok=True)
    doc = {"schema": SCHEMA, "study": s.name, "round": plan.attacked_round, "attacks": []}
    pictures = [] if pictures is None else pictures
    weights = {m: global_weights(s, m, plan.attacked_round, out) for m in plan.models}
    doc["global_models"] = {
        m: {
            "source": "the initial model"
            if plan.attacked_round == 1
            else f"the study run for rounds 1..{plan.attacked_round - 1} in {out / 'federation'}",
            "sha256": weights_digest(w),
        }
        for m, w in weights.items()
    }
    public = held_out_images(plan)
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
        site = Site(s, site_id, s.num_sites)
        images_all, targets_all, *_ = site.training_set({})  # what the site trains on
        bits = site.shard.train.bits
        mean_image = to_float(images_all, bits).numpy().mean(axis=0)
        training = local_training(s, site.train_seed(plan.attacked_round), plan.local_optimizer)
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


def attack_secure_sum(plan: AttackPlan, say: Callable[[str], None] = print) -> dict:
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
    from client.site import Site
    from study.privacy import sites_sampled

    plan.check()
    s = plan.study
    b = plan.batch_sizes[0]
    defense = plan.defenses[0]
    k = sites_sampled(s)
    global_state = global_weights(s, "study", plan.attacked_round, plan.out_dir)
    public = held_out_images(plan)
    prior = attacker_prior(plan, public)
    total: dict[str, torch.Tensor] | None = None
    images, targets = [], []
    bits = 8
    for site_id in range(k):
        site = Site(s, site_id, s.num_sites)
        site_images, site_targets, *_ = site.training_set({})
        bits = site.shard.train.bits
        idx = attacked_indices(len(site_images), b, site_id, plan.attacked_round, plan.seed)
        training = local_training(s, site.train_seed(plan.attacked_round), plan.local_optimizer)
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


def plan_from_args(study: Study, args) -> AttackPlan:
    """An AttackPlan from the CLI's parsed arguments."""

    def ints(text: str, flag: str) -> tuple[int, ...]:
        try:
            return tuple(int(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise ValueError(f"{flag} {text!r}: comma-separated integers, e.g. 1,4,16") from None

    def names(text: str) -> tuple[str, ...]:
        return tuple(v.strip() for v in text.split(",") if v.strip())

    defenses = names(args.defenses)
    if defenses == ("study",):
        defenses = (study.dp,)
    elif defenses == ("all",):
        defenses = DP_MODES
    out = Path(args.out) if args.out else Path(study.out_dir) / "leakage"
    inversion = updates.InversionConfig()
    overrides = {
        "iterations": args.iterations,
        "restarts": args.restarts,
        "tv_weight": args.tv_weight,
        "prior_components": args.prior_components,
        "pixel_iterations": args.pixel_iterations,
        "seed": args.seed,
    }
    inversion = replace(inversion, **{k: v for k, v in overrides.items() if v is not None})
    return AttackPlan(
        study=study,
        out_dir=out.absolute(),
        attacked_round=args.round,
        sites=ints(args.sites, "--sites"),
        batch_sizes=ints(args.batch_sizes, "--batch-sizes"),
        models=names(args.model),
        defenses=defenses,
        local_optimizer=args.local_optimizer,
        attacks=names(args.attacks),
        inversion=inversion,
        prior=args.prior,
        seed=args.seed or 0,
    )
