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

from privacy import attack, updates
from privacy.attack import AttackPlan, Federation, SiteData
from study.config import DP_MODES, Study
from study.task import build_model, to_float


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


def study_federation(plan: AttackPlan) -> Federation:
    """The study of `plan` as the attacks read it: its sites (client.site.Site),
    its global model of the attacked round and the server's held-out images."""
    from client.site import Site

    s = plan.study

    def site_data(site_id: int) -> SiteData:
        site = Site(s, site_id, s.num_sites)
        images, targets, *_ = site.training_set({})  # what the site trains on
        bits = site.shard.train.bits
        return SiteData(images, targets, bits, site.train_seed(plan.attacked_round))

    return Federation(
        site_data=site_data,
        global_weights=lambda arch: global_weights(s, arch, plan.attacked_round, plan.out_dir),
        held_out=lambda: held_out_images(plan),
    )


def run_attacks(
    plan: AttackPlan,
    say: Callable[[str], None] = print,
    *,
    pictures: list[dict] | None = None,
    draw: bool = True,
) -> dict:
    """privacy.attack.run_attacks on the study of `plan` (study_federation)."""
    return attack.run_attacks(plan, study_federation(plan), say, pictures=pictures, draw=draw)


def attack_secure_sum(plan: AttackPlan, say: Callable[[str], None] = print) -> dict:
    """privacy.attack.attack_secure_sum on the study of `plan` (study_federation)."""
    return attack.attack_secure_sum(plan, study_federation(plan), say)


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
