"""Update-leakage section of docs/BENCHMARKS.md (`medfed bench leakage`):
per defence and batch size what the server reconstructs from one update,
leakage PSNR against epsilon, AUROC against epsilon (when federated studies
with DP have been measured), the attack's seconds per image at each size,
and originals beside reconstructions."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from benchmarks.document import Docs, documents
from benchmarks.result_types import LeakageResults
from benchmarks.tables import fmt, reproduce_line, shows_results, spread, table

# what tests/test_leakage_slow.py asserts on seed 0's 32 px phantom X-ray (no defence)
STATED_PSNR_DB = 24.0

HOW_TO_READ = (
    "What a curious server reconstructs from one site's model update "
    "(`medfed attack updates`, `privacy/updates.py`): round 1 of a 2-site phantom study, site 0 "
    "trains as the study does (Adam, lr 1e-3, batch size 16, so one local step) on b of its "
    "images. The optimisation attack (Inverting Gradients: cosine distance between the "
    "update it simulates and the one observed, descent on the coefficients of an image prior, "
    "restarts ranked on the exact model; when none explains the update better than the "
    "prior's mean image by {accept} in cosine distance, the attacker answers that mean) attacks "
    "the study model (the CNN for X-rays, the U-Net for MRI); its prior is the principal "
    "components of the server's held-out images, "
    "never the site's. The analytic attack (row / bias ratio of a fully connected first "
    "layer) attacks the `mlp` reference model; under Adam it inverts the step element by "
    "element, weighs each element by the precision float32 left it (a step saturated at the "
    "full learning rate carries none), fits the image to all rows at once (rank one) and "
    "snaps it to the images' 8-bit levels where its fit shows them (exact images count at "
    "the 200 dB cap), batches grouped by rows that agree within their noise. One X-ray's "
    "findings come back from the update (iDLG); batches and MRI masks are given to the "
    "attacker (an upper bound). PSNR and SSIM on [0, 1], each reconstruction matched one to "
    "one to its real image (Hungarian assignment), averaged over the attacked batches.\n\n"
    "Two PSNRs, two baselines. **PSNR** scores the image the attacker outputs; its baseline, "
    "the **mean guess**, is the mean of the server's held-out images: what the attacker "
    "knows of the images without the update (the same images give the optimisation attack "
    "its prior), so the gain is what the update added. "
    "**Aligned** scores both after the least-squares intensity factor to the real image: the "
    "study CNN and U-Net start with a convolution without bias followed by GroupNorm, so an "
    "image x and a * x give the same update and no attack can read the global intensity "
    "factor from it; aligned PSNR against the aligned mean guess is what the update itself "
    "reveals about the image's shape. The plain gain also counts the intensities the "
    "attacker's prior attaches to the recovered shape (e.g. which scanner's response curve "
    "it shows); the aligned gain does not. Defences at the study's noise multiplier z and "
    "clipping norm C; who observes what: "
    "`server` is the coordinator (under client-side clipping it sees the clipped update "
    "without noise; `server-fixed` gives it the raw update, as `none` does), `global-model` "
    "is DP's worst case among holders of the noised global model (the target's clipped "
    "update plus all of Flower's noise); only `local-dpsgd` adds noise before the update "
    "leaves the site.\n"
)


def _gain(value: float, minimum: float | None = None) -> str:
    cell = f"{value:+.1f}"
    return cell if minimum is None else f"{cell} (min {minimum:+.1f})"


def _points_table(points: list[Mapping[str, Any]]) -> str:
    rows = []
    for p in points:
        rows.append(
            [
                p["model"],
                p["attack"],
                p.get("local_optimizer", "adam"),
                p["defense"],
                p["observer"],
                str(p["batch_size"]),
                fmt(p["psnr"], 1),
                fmt(p["mean_guess_psnr"], 1),
                _gain(p["gain_db"], p.get("gain_db_min")),
                fmt(p["psnr_scale_aligned"], 1),
                fmt(p["mean_guess_psnr_scale_aligned"], 1),
                _gain(p["gain_scale_aligned_db"], p.get("gain_scale_aligned_db_min")),
                fmt(p["ssim"], 3),
                f"{p['recovered_share']:.0%}",
                str(p["attacked_batches"]),
            ]
        )
    return table(
        [
            "model",
            "attack",
            "site optimizer",
            "defence",
            "observer",
            "b",
            "PSNR dB",
            "mean guess dB",
            "gain dB",
            "aligned dB",
            "aligned guess dB",
            "aligned gain dB",
            "SSIM",
            "recovered (> 20 dB)",
            "batches",
        ],
        rows,
    )


def plot_leakage_epsilon(results: LeakageResults, path: Path) -> bool:
    """Leakage PSNR (gain over the mean guess, plain and aligned) against epsilon
    of local DP-SGD, one panel per modality; no defence drawn at the right edge."""
    from server.report import pyplot

    mods = {m: r for m, r in results.modalities.items() if r.get("epsilon_curve")}
    if not mods:
        return False
    plt = pyplot()
    fig, axes = plt.subplots(1, len(mods), figsize=(5.0 * len(mods), 3.6), squeeze=False)
    for ax, (modality, r) in zip(axes[0], mods.items(), strict=True):
        finite = [p["epsilon"] for p in r["epsilon_curve"] if p["epsilon"] is not None]
        edge = max(finite) * 10 if finite else 1.0
        kinds = ((("study", "optimisation"), "C0"), (("mlp", "analytic"), "C1"))
        for (model, attack), colour in kinds:
            pts = sorted(
                (p["epsilon"] if p["epsilon"] is not None else edge, p)
                for p in r["epsilon_curve"]
                if p["model"] == model and p["attack"] == attack
            )
            if not pts:
                continue
            xs = [x for x, _ in pts]
            ax.plot(xs, [p["gain_db"] for _, p in pts], "o-", color=colour,
                    label=f"{attack} ({model}): PSNR gain")  # fmt: skip
            ax.plot(xs, [p["gain_scale_aligned_db"] for _, p in pts], "s--", color=colour,
                    label=f"{attack} ({model}): aligned gain", ms=4)  # fmt: skip
        ax.axhline(0, color="grey", lw=1)
        ax.axhline(1, color="grey", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel("epsilon of local DP-SGD (delta 1e-5); right edge: no defence")
        ax.set_ylabel("dB over the mean guess")
        ax.set_title(f"phantom {modality}, b = 1", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_auroc_epsilon(points: list[Mapping[str, Any]], path: Path) -> bool:
    """Macro AUROC of federated studies against their epsilon (the hook's points)."""
    from server.report import pyplot

    finite = [p for p in points if p["epsilon"] is not None]
    if not finite:
        return False
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    modes = list(dict.fromkeys(p.get("dp", "DP") for p in finite))
    for mode in modes:  # one curve per dp mode: their epsilons protect different units
        mine = sorted((p for p in finite if p.get("dp", "DP") == mode), key=lambda p: p["epsilon"])
        ax.plot([p["epsilon"] for p in mine], [p["auroc"] for p in mine], "o-", label=mode)
    for p in points:
        if p["epsilon"] is None:
            ax.axhline(p["auroc"], color="grey", ls=":", label="no DP")
    ax.set_xscale("log")
    ax.set_xlabel("epsilon after the last round")
    ax.set_ylabel("macro AUROC")
    if len(modes) > 1 or any(p["epsilon"] is None for p in points):
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def leakage_section(
    docs: Docs,
    add: Callable[[str], None],
    plot_dir: Path,
    rel: Path,
    results_dir: Path | None = None,
) -> None:
    doc = documents(docs).get("leakage")
    add("## Update leakage: what the server reconstructs from one update\n")
    if not shows_results(doc, "leakage", add):
        return
    r: LeakageResults = doc.result
    inversion = r.inversion or {}
    add(HOW_TO_READ.replace("{accept}", fmt(inversion.get("accept_margin"), 2)))
    if inversion:
        add(
            f"Optimisation attack settings: {inversion['restarts']} restarts x "
            f"{inversion['iterations']} iterations, {inversion['prior_components']} prior "
            f"components, smoothing beta {fmt(inversion['smooth_beta'], 0)}, Adam's eps "
            f"smoothed to {fmt(inversion['adam_scale'], 2)} x the gradient's RMS.\n"
        )
    for modality, entry in r.modalities.items():
        s = entry["study"]
        add(f"### phantom {modality}, {s['image_size']} px\n")
        add(
            f"{s['phantom_patients']} phantom patients; defences at z = "
            f"{fmt(s['dp_noise_multiplier'], 1)}, C = {fmt(s['dp_clipping_norm'], 1)}. "
            "`gain`: mean over the attacked batches (and, in brackets, the smallest).\n"
        )
        add(_points_table(entry["points"]) + "\n")
        per_image = entry.get("per_image") or []
        if per_image:
            add(
                "The optimisation attack image by image (b = 1; the image of seed 0 is the one "
                f"`tests/test_leakage_slow.py` attacks: it asserts PSNR >= {STATED_PSNR_DB:g} dB "
                "on the X-ray and a gain of at least 3 dB both ways; under local DP-SGD at "
                "z = 1 both gains at most 1 dB):\n"
            )
            add(
                table(
                    [
                        "defence",
                        "seed",
                        "PSNR dB",
                        "mean guess dB",
                        "gain dB",
                        "aligned dB",
                        "aligned guess dB",
                        "aligned gain dB",
                        "SSIM",
                        "findings right",
                        "answer",
                    ],
                    [
                        [
                            p["defense"],
                            str(p["seed"]),
                            fmt(p["psnr"], 1),
                            fmt(p["mean_guess_psnr"], 1),
                            _gain(p["gain_db"]),
                            fmt(p["psnr_scale_aligned"], 1),
                            fmt(p["mean_guess_psnr_scale_aligned"], 1),
                            _gain(p["gain_scale_aligned_db"]),
                            fmt(p["ssim"], 3),
                            "n/a"
                            if p["labels_recovered_correct"] is None
                            else f"{p['labels_recovered_correct']:.0%}",
                            p.get("chosen") or "",
                        ]
                        for p in per_image
                    ],
                )
                + "\n"
            )
        curve = entry.get("epsilon_curve") or []
        if curve:
            add(
                table(
                    [
                        "attack (model)",
                        "noise multiplier",
                        "epsilon",
                        "PSNR dB",
                        "gain dB",
                        "aligned gain dB",
                    ],
                    [
                        [
                            f"{p['attack']} ({p['model']})",
                            fmt(p["noise_multiplier"], 3) if p["epsilon"] is not None else "none",
                            "inf" if p["epsilon"] is None else f"{p['epsilon']:.3g}",
                            fmt(p["psnr"], 1),
                            _gain(p["gain_db"]),
                            _gain(p["gain_scale_aligned_db"]),
                        ]
                        for p in curve
                    ],
                )
                + "\n"
            )
        picture = Path(results_dir or ".") / (r.pictures or {}).get(modality, "")
        if (r.pictures or {}).get(modality) and picture.is_file():
            plot_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(picture, plot_dir / picture.name)
            add(
                f"![{modality}: real images beside the server's reconstructions]"
                f"({rel / picture.name})\n"
            )
    if plot_leakage_epsilon(r, plot_dir / "leakage_epsilon.png"):
        add("### Leakage against epsilon\n")
        add(
            "Gain over the mean guess of each attack on one image against the epsilon of local "
            "DP-SGD (what the site released: one round of DP-SGD over its b images, Opacus' RDP "
            "accountant through `study/privacy.py`); the right-most point of each curve is no "
            "defence. Dotted line: 1 dB over the mean guess.\n"
        )
        add(f"![leakage against epsilon]({rel / 'leakage_epsilon.png'})\n")
    add("### AUROC against epsilon\n")
    points = r.auroc_epsilon or []
    if plot_auroc_epsilon(points, plot_dir / "auroc_epsilon.png"):
        add(
            "Held-out macro AUROC of the demo study (4 sites, 32 px, 3 rounds, phantom "
            "X-rays) trained with each dp mode at several noise multipliers z (C = 1), against "
            "the epsilon it reported after its last round (Opacus' RDP accountant); the "
            "dotted line is the same study without DP. The modes' epsilons bound different "
            "things: `local-dpsgd` one training image (sample level, against the server too), "
            "`client-fixed` one whole site's contribution (against holders of the global "
            "model, not the server), so compare curves for their shape, not point by point.\n"
        )
        add(f"![AUROC against epsilon]({rel / 'auroc_epsilon.png'})\n")
        if any("dp" in p for p in points):
            add(
                table(
                    ["dp", "z", "epsilon", "AUROC"],
                    [
                        [
                            p.get("dp", "-"),
                            fmt(p.get("noise_multiplier"), 2) if p.get("dp") != "none" else "-",
                            "inf" if p["epsilon"] is None else fmt(p["epsilon"], 2),
                            fmt(p["auroc"], 3),
                        ]
                        for p in points
                    ],
                )
                + "\n"
            )
    else:
        add(
            "Not measured yet: it needs federated studies trained with DP at several noise "
            "multipliers; their (epsilon, AUROC) points go in through the `auroc_points` hook of "
            "`run_leakage` (`benchmarks/leakage.py`).\n"
        )
    timing = r.timing or []
    if timing:
        add("### Optimisation attack: seconds per image\n")
        add(
            table(
                [
                    "modality",
                    "size px",
                    "iterations",
                    "s per image",
                    "s per iteration",
                    "training step s",
                    "training steps per iteration",
                    "gain dB",
                ],
                [
                    [
                        t["modality"],
                        str(t["image_size"]),
                        str(t["iterations"]),
                        fmt(t["seconds_per_image"], 1),
                        # files from before the round-robin timing hold one step time
                        spread(t.get("iteration_s"), 3),
                        spread(t["training_step_s"], 4),
                        spread(
                            t.get("steps_per_iteration", t.get("training_steps_per_iteration")), 1
                        ),
                        _gain(t["gain_db"]),
                    ]
                    for t in timing
                ],
            )  # fmt: skip
            + "\n"
        )
        add(
            "One torch thread, b = 1, no defence; s per image is the whole attack (restarts x "
            "iterations, plus ranking) on one image. An iteration simulates the site's training "
            "step and back-propagates through it to the image: its cost in training steps of the "
            "same model, timed round-robin in the same process (median, min..max, repeats), "
            "holds on another machine where the absolute seconds do not.\n"
        )
    partial = [
        ("analytic_remeasured", "The analytic attack's rows (model `mlp`, both tables and "
         "the epsilon curve)"),
        ("auroc_remeasured", "The studies of AUROC against epsilon (client-side DP now "
         "averages the sites with equal weights)"),
    ]  # fmt: skip
    redone = [(getattr(r, key), what) for key, what in partial if getattr(r, key)]
    for run, what in redone:
        m = run.get("machine", {})
        gpus = ", ".join(m.get("gpus") or []) or "no GPU"
        add(
            f"{what} were re-measured on {run['created']} with `{run['command']}` "
            f"({run['seconds']:.0f} s; {m.get('cpu_count', '?')} cores, {gpus}).\n"
        )
    if redone:
        add("Every other number, and the pictures, are from the run below.\n")
    add(reproduce_line(doc, "leakage") + "\n")
