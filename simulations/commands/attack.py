"""`medfed attack updates STUDY.toml ...`: reconstruct the sites' training
images from their model updates, as a curious server could (privacy/updates.py),
under the study's defences; writes leakage.json, leakage.md and leakage.png."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "attack",
        help="attack the sites' model updates (gradient inversion)",
        description="Attacks on what a study sends. `updates`: reconstruct training images "
        "from one round's model updates.",
    )
    kinds = p.add_subparsers(dest="attack_kind", metavar="KIND", required=True)
    u = kinds.add_parser(
        "updates",
        help="reconstruct training images from the sites' model updates",
        description="Run the sites' local training of one round as the study does, on b "
        "training images each, and reconstruct the images from what the server receives: "
        "analytically (fully connected first layer with bias: --model mlp) and by "
        "optimisation (Inverting Gradients). Writes DIR/leakage.json, leakage.md, leakage.png.",
    )
    from simulations.commands.run import add_study_args

    add_study_args(u)
    u.add_argument("--round", type=int, default=1, help="round to attack, at most 1000 (default 1)")
    u.add_argument("--sites", default="0", help="sites to attack, e.g. 0,2 (default 0)")
    u.add_argument(
        "--batch-sizes",
        default="1",
        help="images per attacked update, e.g. 1,4,16, each at most 4096; each gives "
        "local-epochs x ceil(b / batch-size) local steps (default 1)",
    )
    u.add_argument(
        "--model",
        default="study",
        help="study (the study's CNN / U-Net), mlp (reference model with a fully connected "
        "first layer), or study,mlp (default study)",
    )
    u.add_argument(
        "--defenses",
        default="study",
        help="dp modes to attack: study (the study's dp), all, or a list such as "
        "none,client-fixed,local-dpsgd (default study)",
    )
    u.add_argument(
        "--local-optimizer",
        choices=("adam", "sgd"),
        default="adam",
        help="the sites' optimizer: adam is what medfed's sites run; sgd is the setting of "
        "the attacks' papers (default adam)",
    )
    u.add_argument(
        "--attacks",
        default="analytic,optimisation",
        help="which attacks: analytic (models with a fully connected first layer), "
        "optimisation, or both (default both)",
    )
    u.add_argument(
        "--iterations", type=int, help="optimisation iterations per restart, at most 100000"
    )
    u.add_argument(
        "--restarts", type=int, help="optimisation restarts (best objective kept), at most 100"
    )
    u.add_argument(
        "--tv-weight", type=float, help="total-variation prior weight, 0 to at most 1000"
    )
    u.add_argument(
        "--prior",
        choices=("holdout", "none"),
        default="holdout",
        help="the optimisation attack's image prior: holdout (principal components of the "
        "server's held-out images) or none (raw pixels from noise) (default holdout)",
    )
    u.add_argument(
        "--prior-components", type=int, help="principal components of the prior, at most 4096"
    )
    u.add_argument(
        "--pixel-iterations",
        type=int,
        help="pixel-level refinement after the prior's descent, at most 100000",
    )
    u.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seeds image choice, restarts, noise: 0 to at most 2147483647 (default 0)",
    )
    u.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from rich.console import Console

    from privacy.report import summary_lines
    from simulations.attack import plan_from_args, run_attacks
    from simulations.commands.run import load_study

    study = load_study(args.study, args.overrides, None)
    plan = plan_from_args(study, args)
    console = Console(stderr=True)
    console.print(
        f"[bold]medfed attack updates[/] study [cyan]{study.name}[/] round {plan.attacked_round}: "
        f"sites {list(plan.sites)}, b {list(plan.batch_sizes)}, models {list(plan.models)}, "
        f"defences {list(plan.defenses)} -> {plan.out_dir}"
    )
    doc = run_attacks(plan, say=lambda line: console.print(line, highlight=False))
    for line in summary_lines(doc):
        print(line)
    console.print(f"results: {plan.out_dir / 'leakage.json'}")
    return 0
