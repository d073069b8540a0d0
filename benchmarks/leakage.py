"""The `leakage` benchmark: what a curious server reconstructs from a site's
model update (privacy/updates.py through privacy.attack, the code behind
`medfed attack updates`), per defence and batch size, against epsilon, and
how long the optimisation attack takes per image at each image size.

Each point attacks round 1 (the initial model) of a 2-site phantom study:
site 0's local training on b of its images, the study's own training (Adam,
lr 1e-3, batch size 16: one local step for b <= 16). The optimisation attack
runs on the study model (CNN / U-Net) with the image prior of the server's
held-out images; the analytic attack on the `mlp` reference model. Several
images per point (seeds 0..images-1 pick them); the mean over them is shown.

Epsilon: local DP-SGD at several noise multipliers, epsilon from
study.privacy (Opacus' RDP accountant) for what the attacked site released:
one round of DP-SGD over its b images at clipping norm 1. AUROC against
epsilon needs federated studies with DP and is filled through
`auroc_epsilon_points` (empty until those studies are run).

Timing: seconds per image of the optimisation attack at each size, and the
same as a ratio to one local training step of the same model on one image,
measured in the same process (a machine-independent cost: the attack
simulates the training step and back-propagates through it, every
iteration). Torch runs one thread, as the sites do (num-cpus = 1).
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import Progress, quiet


def _study(tmp: Path, modality: str, patients: int, image_size: int, **extra):
    from study.config import Study

    return Study(
        name=f"leakage-{modality}",
        modality=modality,
        num_sites=2,
        min_sites=1,
        phantom_patients=patients,
        phantom_size=max(64, image_size),
        image_size=image_size,
        exchange="none",
        out_dir=str(tmp / f"{modality}-{image_size}-study"),
        **extra,
    )


def _plan(
    study, out: Path, *, model, attack, defenses, batch_sizes, seed, inversion, optimizer="adam"
):
    from privacy.attack import AttackPlan

    return AttackPlan(
        study=study,
        out_dir=out,
        batch_sizes=tuple(batch_sizes),
        models=(model,),
        defenses=tuple(defenses),
        attacks=(attack,),
        local_optimizer=optimizer,
        inversion=replace(inversion, seed=seed),
        seed=seed,
        cache_dir=Path(study.out_dir) / "holdout-cache",
    )


def _run(plan, say: Progress, pictures: list | None = None) -> list[dict]:
    from simulations.attack import run_attacks

    return run_attacks(plan, say=say, pictures=pictures, draw=False)["attacks"]


def _mean_entries(entries: list[dict]) -> list[dict]:
    """Mean over the attacked images (seeds) of each (model, attack, defence,
    observer, b): PSNR, SSIM, mean guesses, gains, recovered share, seconds."""
    groups: dict[tuple, list[dict]] = {}
    for e in entries:
        key = (
            e["model"],
            e["attack"],
            e["local_optimizer"],
            e["defense"],
            e["observer"],
            e["batch_size"],
        )
        groups.setdefault(key, []).append(e)
    out = []
    for (model, attack, optimizer, defense, observer, b), group in groups.items():
        row: dict[str, Any] = {
            "model": model,
            "attack": attack,
            "local_optimizer": optimizer,
            "defense": defense,
            "observer": observer,
            "batch_size": b,
            "local_steps": group[0]["local_steps"],
            "labels": group[0]["labels"],
            "attacked_batches": len(group),
        }
        for key in ("psnr", "psnr_scale_aligned", "ssim"):
            row[key] = float(np.mean([np.mean(e[key]) for e in group]))
        for key in (
            "mean_guess_psnr",
            "mean_guess_psnr_scale_aligned",
            "gain_db",
            "gain_scale_aligned_db",
            "recovered_share",
            "seconds_per_image",
        ):
            row[key] = float(np.mean([e[key] for e in group]))
        row["gain_db_min"] = float(min(e["gain_db"] for e in group))
        row["gain_scale_aligned_db_min"] = float(min(e["gain_scale_aligned_db"] for e in group))
        out.append(row)
    return out


def _per_image(entries: list[dict]) -> list[dict]:
    """The optimisation attack on one image (b = 1), image by image, with no
    defence and under local DP-SGD: the spread behind the means (seed 0's image
    is the one tests/test_leakage_slow.py attacks)."""
    rows = []
    wanted = {("none", 1, "server", "adam"), ("local-dpsgd", 1, "server", "adam")}
    for e in entries:
        view = (e["defense"], e["batch_size"], e["observer"], e["local_optimizer"])
        if e["attack"] == "optimisation" and view in wanted:
            rows.append(
                {
                    "seed": e["seed"],
                    "defense": e["defense"],
                    "psnr": e["psnr"][0],
                    "mean_guess_psnr": e["mean_guess_psnr"],
                    "gain_db": e["gain_db"],
                    "psnr_scale_aligned": e["psnr_scale_aligned"][0],
                    "mean_guess_psnr_scale_aligned": e["mean_guess_psnr_scale_aligned"],
                    "gain_scale_aligned_db": e["gain_scale_aligned_db"],
                    "ssim": e["ssim"][0],
                    "labels_recovered_correct": e.get("labels_recovered_correct"),
                    "chosen": e.get("chosen"),
                }
            )
    return sorted(rows, key=lambda r: (r["defense"] != "none", r["seed"]))


def iteration_cost(study, inversion, repeats: int = 7) -> dict[str, Any]:
    """One optimisation-attack iteration (the site's simulated Adam step on the
    smooth surrogate, the cosine objective, back-propagation to the image)
    against one local training step of the same model on one image (forward,
    loss, backward, Adam step), timed round-robin in this process
    (common.time_interleaved): seconds of each and their ratio per repeat, a
    cost that holds on a loaded machine."""
    import torch

    from benchmarks.common import summarize, time_interleaved
    from privacy.updates import (
        LocalTraining,
        cosine_distance,
        simulate_update,
        smooth_surrogate,
    )
    from study.task import build_model
    from study.task import loss as _loss

    torch.manual_seed(0)
    model = build_model(study.modality, image_size=study.image_size)
    channels = 1 if study.modality == "xray" else 4
    x = torch.rand(1, channels, study.image_size, study.image_size)
    y = (torch.rand_like(model(x)) < 0.2).float()
    opt = torch.optim.Adam(model.parameters(), lr=study.learning_rate)
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    training = LocalTraining(study.modality, 1, study.batch_size, study.learning_rate, 0)
    observed = {k: torch.randn_like(v) for k, v in start.items()}
    surrogate = smooth_surrogate(model, inversion.smooth_beta)
    image = x.clone().requires_grad_(True)

    def step() -> None:
        opt.zero_grad()
        _loss(study.modality, model(x), y).backward()
        opt.step()

    def iteration() -> None:
        sim = simulate_update(surrogate, start, image, y, training, adam_scale=inversion.adam_scale)
        torch.autograd.grad(cosine_distance(sim, observed), [image])

    times = time_interleaved({"step": step, "iteration": iteration}, repeats=repeats)
    ratios = [i / s for i, s in zip(times["iteration"], times["step"], strict=True)]
    return {
        "training_step_s": summarize(times["step"]),
        "iteration_s": summarize(times["iteration"]),
        "steps_per_iteration": summarize(ratios),
    }


def auroc_epsilon_points(points: Iterable[tuple]) -> list[dict[str, Any]]:
    """AUROC against epsilon, as the result document stores it: (epsilon, macro
    AUROC) points of federated studies trained with DP, optionally with the
    study's dp mode and noise multiplier as a 3rd and 4th element (epsilon from
    study.privacy.epsilon_spent after the last round), sorted by epsilon; an
    infinite epsilon (no DP) is stored as null.
    run_leakage's `auroc_points` hook feeds it (`federated_dp_points` in the
    suite); without it the list stays empty and the report says so."""
    out = []
    for point in points:
        epsilon, auroc = float(point[0]), float(point[1])
        if not (math.isinf(epsilon) or epsilon >= 0) or not 0 <= auroc <= 1:
            raise ValueError(f"AUROC point ({epsilon}, {auroc}): epsilon >= 0, AUROC in [0, 1]")
        entry: dict[str, Any] = {
            "epsilon": None if math.isinf(epsilon) else epsilon,
            "auroc": auroc,
        }
        if len(point) == 4:  # (epsilon, AUROC, dp mode, noise multiplier)
            entry |= {"dp": str(point[2]), "noise_multiplier": float(point[3])}
        out.append(entry)
    return sorted(out, key=lambda p: math.inf if p["epsilon"] is None else p["epsilon"])


def federated_dp_points(
    progress: Progress = quiet,
    *,
    study: str = "simulations/studies/demo.toml",
    settings: Mapping[str, Any] | None = None,
    modes: Mapping[str, Iterable[float]] | None = None,
    work_dir: Path | None = None,
) -> list[tuple[float, float, str, float]]:
    """(epsilon, held-out AUROC, dp mode, noise multiplier) of federated
    studies trained with DP: the study (by default the demo, at 32 px and
    3 rounds) once without DP and
    once per (dp mode, noise multiplier) of `modes`, each on Flower's
    simulation engine in its own process (`medfed run`'s); epsilon is what the
    study wrote to summary.json (Opacus' RDP accountant), infinite without
    DP. The hook `run_leakage` takes as `auroc_points`."""
    from simulations.supervise import run_study_process
    from simulations.sweep import comparison_row
    from study.config import Study

    settings = {"image-size": 32, "num-rounds": 3, "min-sites": 3, **(settings or {})}
    modes = modes or {"local-dpsgd": (0.3, 1.0, 3.0), "client-fixed": (0.03, 0.1, 0.3)}
    runs = [("none", 0.0)] + [(m, float(z)) for m, zs in modes.items() for z in zs]
    points = []
    with tempfile.TemporaryDirectory(prefix="medfed-dp-points-") as tmp:
        base = Path(work_dir) if work_dir else Path(tmp)
        for i, (mode, z) in enumerate(runs, 1):
            label = "no DP" if mode == "none" else f"{mode} z = {z:g}"
            progress(
                f"leakage: federated study {i}/{len(runs)} for AUROC against epsilon ({label})"
            )
            one = Study.from_toml(
                study,
                {
                    **settings,
                    "dp": mode,
                    "dp-noise-multiplier": z if mode != "none" else 1.0,
                    "out-dir": str(base / f"{mode}-{z:g}"),
                },
            )
            summary = run_study_process(one).summary
            row = comparison_row({}, one, summary)  # as a sweep reads a study's outcome
            auroc, epsilon = row.get("auroc", math.nan), row["epsilon"]
            if not math.isfinite(auroc) or epsilon is None or math.isnan(epsilon):
                raise RuntimeError(
                    f"the {label} study reported no AUROC or epsilon ({summary.status})"
                )
            points.append((epsilon, auroc, mode, z))
    return points


def run_leakage(
    *,
    modalities: tuple[str, ...] = ("xray", "mri"),
    patients: int = 120,
    image_size: int = 32,
    images: int = 3,
    mri_images: int = 2,
    defenses: tuple[str, ...] = ("none", "client-fixed", "local-dpsgd"),
    batch_sizes: tuple[int, ...] = (4,),
    batch_defenses: tuple[str, ...] = ("none", "local-dpsgd"),
    noise_multipliers: tuple[float, ...] = (0.01, 0.1, 1.0),
    timing_sizes: tuple[int, ...] = (32, 64),
    iterations: int = 100,
    restarts: int = 2,
    prior_components: int = 40,
    results_dir: Path | None = None,
    auroc_points: Callable[[Progress], Iterable[tuple[float, float]]] | None = None,
    auroc_studies: Mapping[str, Any] | None = None,
    progress: Progress = quiet,
) -> dict[str, Any]:
    """Run the leakage benchmark; returns the result document's `results`.

    b = 1: `images` attacked images (`mri_images` for MRI) under every defence
    of `defenses` at the study's z = 1, C = 1, and under local DP-SGD at each
    of `noise_multipliers`. Each b of `batch_sizes` (X-ray only): one batch
    under `batch_defenses`. `results_dir`: where the pictures of originals
    beside reconstructions go. `auroc_points(progress)`: the hook for AUROC
    against epsilon, a function that trains federated studies with DP and
    returns their (epsilon, macro AUROC) points (see auroc_epsilon_points);
    None leaves that plot empty. `auroc_studies`: keyword arguments of
    `federated_dp_points`, which then is that hook."""
    import torch

    if auroc_points is None and auroc_studies is not None:

        def auroc_points(p: Progress) -> list[tuple[float, float, str, float]]:
            return federated_dp_points(p, **auroc_studies)

    from privacy.updates import InversionConfig

    inversion = InversionConfig(
        iterations=iterations, restarts=restarts, prior_components=prior_components
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def say(line: str) -> None:
        progress("leakage: " + line.strip())

    out: dict[str, Any] = {
        "inversion": asdict(inversion),
        "modalities": {},
        "timing": [],
        "auroc_epsilon": [],
    }
    picture_rows: list[dict] = []
    try:
        with tempfile.TemporaryDirectory(prefix="medfed-bench-leak-") as tmp_name:
            tmp = Path(tmp_name)
            for modality in modalities:
                count = images if modality == "xray" else mri_images
                bs = batch_sizes if modality == "xray" else ()
                entries, curve, shown = _modality(
                    tmp, modality, patients, image_size, count, defenses, bs, batch_defenses,
                    noise_multipliers, inversion, say, progress,
                )  # fmt: skip
                study = _study(tmp, modality, patients, image_size)
                out["modalities"][modality] = {
                    "study": {
                        "phantom_patients": patients,
                        "image_size": image_size,
                        "dp_clipping_norm": study.dp_clipping_norm,
                        "dp_noise_multiplier": study.dp_noise_multiplier,
                        "dp_delta": study.dp_delta,
                        "batch_size": study.batch_size,
                        "learning_rate": study.learning_rate,
                    },
                    "points": _mean_entries(entries),
                    "per_image": _per_image(entries),
                    "epsilon_curve": _epsilon_curve(curve, entries),
                }
                picture_rows += shown
            out["timing"] = _timing(tmp, modalities, patients, timing_sizes, inversion, progress)
        if auroc_points is not None:
            out["auroc_epsilon"] = auroc_epsilon_points(auroc_points(progress))
    finally:
        torch.set_num_threads(threads)
    if results_dir is not None and picture_rows:
        from privacy.attack import write_picture

        results_dir.mkdir(parents=True, exist_ok=True)
        for modality in modalities:
            rows = [p for p in picture_rows if p["modality"] == modality]
            if rows:
                write_picture(
                    results_dir / f"leakage-{modality}.png",
                    rows,
                    modality,
                    title=f"phantom {modality}, {image_size} px: real images and what the "
                    "server reconstructs from one update (no defence / defences at z = 1)",
                )
        out["pictures"] = {m: f"leakage-{m}.png" for m in modalities}
    return out


def _modality(
    tmp, modality, patients, image_size, count, defenses, batch_sizes, batch_defenses,
    noise_multipliers, inversion, say, progress, sgd_reference=True,
    kinds=(("study", "optimisation"), ("mlp", "analytic")),
):  # fmt: skip
    """The attacks on one modality: (entries, epsilon-curve entries, picture rows).
    `kinds`: the (model, attack) pairs to run."""
    from study.privacy import epsilon_spent

    study = _study(tmp, modality, patients, image_size)
    # (b, seed, defences, the site's optimizer): the study's Adam, and plain SGD (the
    # setting of the attacks' papers) once per image without defence
    cells = [(1, seed, tuple(defenses), "adam") for seed in range(count)]
    cells += [(b, 0, tuple(batch_defenses), "adam") for b in batch_sizes]
    cells += [(1, seed, ("none",), "sgd") for seed in range(count) if sgd_reference]
    entries, shown = [], []
    for b, seed, defs, optimizer in cells:
        progress(f"leakage: {modality}, b = {b}, attacked batch {seed + 1}, {optimizer}")
        for model, attack in kinds:
            plan = _plan(
                study, tmp / f"{modality}-{model}-b{b}-{seed}-{optimizer}", model=model,
                attack=attack, defenses=defs, batch_sizes=(b,), seed=seed, inversion=inversion,
                optimizer=optimizer,
            )  # fmt: skip
            pics: list[dict] = []
            entries += [{**e, "seed": seed} for e in _run(plan, say, pics)]
            if seed == 0 and optimizer == "adam":  # the picture: first batch, server's view
                shown += [{**p, "modality": modality} for p in pics if p["observer"] == "server"]
    curve = []
    for z in noise_multipliers:
        noisy = study.replace(dp="local-dpsgd", dp_noise_multiplier=z)
        epsilon = epsilon_spent(noisy, 1, num_examples=1).epsilon
        if z == study.dp_noise_multiplier and "local-dpsgd" in defenses:  # measured above
            same = [
                e
                for e in entries
                if (e["defense"], e["batch_size"], e["local_optimizer"])
                == ("local-dpsgd", 1, "adam")
            ]
            curve += [{**e, "noise_multiplier": z, "epsilon": epsilon} for e in same]
            continue
        progress(f"leakage: {modality}, local DP-SGD at noise multiplier {z:g}")
        for seed in range(count):
            for model, attack in kinds:
                plan = _plan(
                    noisy, tmp / f"{modality}-dp-{z:g}-{model}-{seed}", model=model,
                    attack=attack, defenses=("local-dpsgd",), batch_sizes=(1,), seed=seed,
                    inversion=inversion,
                )  # fmt: skip
                curve += [{**e, "noise_multiplier": z, "epsilon": epsilon} for e in _run(plan, say)]
    return entries, curve, shown


def _epsilon_curve(curve: list[dict], entries: list[dict]) -> list[dict]:
    """Mean over seeds per (model, attack, noise multiplier), plus the no-defence
    points of the same attacks at b = 1 (epsilon infinite, stored as null)."""
    rows = []
    for model, attack in (("study", "optimisation"), ("mlp", "analytic")):
        base = [
            e
            for e in entries
            if (e["model"], e["attack"], e["defense"]) == (model, attack, "none")
            and (e["batch_size"], e["local_optimizer"]) == (1, "adam")
        ]
        groups: dict[float, list[dict]] = {}
        for e in curve:
            if e["model"] == model and e["attack"] == attack:
                groups.setdefault(e["noise_multiplier"], []).append(e)
        for z, group in sorted(groups.items()):
            rows.append(_curve_row(model, attack, z, group[0]["epsilon"], group))
        if base:
            rows.append(_curve_row(model, attack, 0.0, None, base))
    return rows


def _curve_row(model, attack, z, epsilon, group) -> dict:
    return {
        "model": model,
        "attack": attack,
        "noise_multiplier": z,
        "epsilon": epsilon,
        "psnr": float(np.mean([np.mean(e["psnr"]) for e in group])),
        "psnr_scale_aligned": float(np.mean([np.mean(e["psnr_scale_aligned"]) for e in group])),
        "mean_guess_psnr": float(np.mean([e["mean_guess_psnr"] for e in group])),
        "mean_guess_psnr_scale_aligned": float(
            np.mean([e["mean_guess_psnr_scale_aligned"] for e in group])
        ),
        "gain_db": float(np.mean([e["gain_db"] for e in group])),
        "gain_scale_aligned_db": float(np.mean([e["gain_scale_aligned_db"] for e in group])),
        "attacked_batches": len(group),
    }


def _timing(tmp, modalities, patients, sizes, inversion, progress) -> list[dict]:
    """Seconds per image of the optimisation attack (b = 1, no defence) at each
    size, and the cost of one of its iterations in local training steps."""
    rows = []
    for modality in modalities:
        for size in sizes:
            study = _study(tmp, modality, patients, size)
            progress(f"leakage: timing the optimisation attack on {modality} at {size} px")
            plan = _plan(
                study, tmp / f"timing-{modality}-{size}", model="study", attack="optimisation",
                defenses=("none",), batch_sizes=(1,), seed=0, inversion=inversion,
            )  # fmt: skip
            (entry,) = _run(plan, quiet)
            rows.append(
                {
                    "modality": modality,
                    "image_size": size,
                    "seconds_per_image": entry["seconds_per_image"],
                    "iterations": inversion.restarts * inversion.iterations,
                    **iteration_cost(study, inversion),
                    "psnr": float(np.mean(entry["psnr"])),
                    "gain_db": entry["gain_db"],
                    "gain_scale_aligned_db": entry["gain_scale_aligned_db"],
                }
            )
    return rows


ANALYTIC_COMMAND = "python -m benchmarks.leakage --analytic-only"


def remeasure_analytic(
    results_dir: Path | None = None, progress: Progress = quiet
) -> dict[str, Any]:
    """Re-measure the analytic attack's rows (model `mlp`) of the leakage result
    file in place, with the settings the file records (modalities, images,
    batch sizes, defences and noise multipliers of its points), leaving every
    optimisation-attack number as it was: for when only the analytic attack
    changed, since it takes seconds where the whole benchmark takes most of an
    hour. The file's results gain `analytic_remeasured` (command, date,
    seconds, machine), which the section states. Returns the document."""
    import torch

    from benchmarks.common import RESULTS_DIR, write_result
    from privacy.updates import InversionConfig
    from study.schema import loads

    path = Path(results_dir or RESULTS_DIR) / "leakage.json"
    doc = loads(path.read_text(), source=str(path))
    settings, results = doc["settings"], doc["results"]
    inversion = InversionConfig(**results.get("inversion", {}))
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="medfed-bench-leak-") as tmp_name:
            for modality, entry in results["modalities"].items():
                points = entry["points"]
                adam = [p for p in points if p.get("local_optimizer", "adam") == "adam"]
                one = [p for p in adam if p["batch_size"] == 1]
                batch = [p for p in adam if p["batch_size"] > 1]
                count = max(p["attacked_batches"] for p in one)
                entries, curve, _ = _modality(
                    Path(tmp_name), modality, entry["study"]["phantom_patients"],
                    entry["study"]["image_size"], count,
                    tuple(dict.fromkeys(p["defense"] for p in one)),
                    tuple(dict.fromkeys(p["batch_size"] for p in batch)),
                    tuple(dict.fromkeys(p["defense"] for p in batch)),
                    tuple(settings["noise_multipliers"]), inversion,
                    lambda line: progress("leakage: " + line.strip()), progress,
                    sgd_reference=any(p.get("local_optimizer") == "sgd" for p in points),
                    kinds=(("mlp", "analytic"),),
                )  # fmt: skip
                fresh = {_point_key(p): p for p in _mean_entries(entries)}
                entry["points"] = [fresh.pop(_point_key(p), p) for p in points]
                entry["points"] += list(fresh.values())
                entry["epsilon_curve"] = [
                    p for p in entry.get("epsilon_curve", []) if p["model"] != "mlp"
                ] + [p for p in _epsilon_curve(curve, entries) if p["model"] == "mlp"]
    finally:
        torch.set_num_threads(threads)
    results["analytic_remeasured"] = _remeasured(ANALYTIC_COMMAND, t0)
    write_result(doc, path.parent)
    return doc


def _remeasured(command: str, started: float) -> dict[str, Any]:
    """What a partial re-measure records in the result file: how, when, how long, where."""
    from benchmarks.common import machine_info

    return {
        "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
        "seconds": time.perf_counter() - started,
        "machine": machine_info(),
    }


def _point_key(p: Mapping[str, Any]) -> tuple:
    return (
        p["model"],
        p["attack"],
        p.get("local_optimizer", "adam"),
        p["defense"],
        p["observer"],
        p["batch_size"],
    )


AUROC_COMMAND = "python -m benchmarks.leakage --auroc-epsilon-only"


def remeasure_auroc_epsilon(
    results_dir: Path | None = None, progress: Progress = quiet
) -> dict[str, Any]:
    """Re-run the federated studies of AUROC against epsilon (`federated_dp_points`)
    with the settings the leakage result file records (`auroc_studies`), leaving
    every attack number as it was: for when only how a study trains with DP
    changed (client-side DP averaging the sites with equal weights). The file's
    results gain `auroc_remeasured` (command, date, seconds, machine), which the
    section states. Returns the document."""
    from benchmarks.common import RESULTS_DIR, write_result
    from study.schema import loads

    path = Path(results_dir or RESULTS_DIR) / "leakage.json"
    doc = loads(path.read_text(), source=str(path))
    studies = doc["settings"].get("auroc_studies")
    if not studies:
        raise ValueError(f"{path}: settings.auroc_studies is missing: nothing to re-measure")
    t0 = time.perf_counter()
    points = federated_dp_points(progress, **studies)
    doc["results"]["auroc_epsilon"] = auroc_epsilon_points(points)
    doc["results"]["auroc_remeasured"] = _remeasured(AUROC_COMMAND, t0)
    write_result(doc, path.parent)
    return doc


PARTIAL = {"--analytic-only": remeasure_analytic, "--auroc-epsilon-only": remeasure_auroc_epsilon}

if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in PARTIAL:
        sys.exit(
            f"usage: {ANALYTIC_COMMAND} (re-measures the analytic rows of leakage.json) or "
            f"{AUROC_COMMAND} (re-runs the studies of AUROC against epsilon); either then "
            "re-renders docs/BENCHMARKS.md as `medfed bench report` does"
        )
    from benchmarks.report import render_report

    PARTIAL[sys.argv[1]](progress=print)
    print(f"wrote {render_report()}")
