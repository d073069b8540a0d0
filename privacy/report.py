"""The outputs of `medfed attack updates` beside leakage.json: the picture of
originals beside their reconstructions (leakage.png), the table
(leakage.md) and the terminal's summary lines."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from privacy.attack import AttackPlan


def write_picture(
    path: Path, pictures: list[dict], modality: str, max_images: int = 4, title: str = ""
) -> None:
    """Originals beside their reconstructions: for each attacked batch a block
    with one row per image (at most `max_images`), the real image first, then
    one column per attack on it (headed by model, defence, observer, attack;
    each panel gives its PSNR). MRI: the FLAIR channel."""
    import textwrap

    from matplotlib.figure import Figure  # no pyplot: no global figure state, no backend

    groups: dict[tuple, list[dict]] = {}
    for p in pictures:  # attacks on the same images share one column of originals
        key = (p["site"], p["batch_size"], p["originals"].tobytes()[:4096])
        groups.setdefault(key, []).append(p)
    cols = 1 + max(len(g) for g in groups.values())
    rows = sum(min(max_images, len(g[0]["originals"])) for g in groups.values())
    fig = Figure(figsize=(1.45 * cols, 1.75 * rows + 0.5))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    channel = -1 if modality == "mri" else 0
    r = 0
    for group in groups.values():
        first = group[0]
        n = min(max_images, len(first["originals"]))
        columns = [
            (first["originals"], None, f"real\nsite {first['site']}, b={first['batch_size']}")
        ]
        columns += [
            (p["recon"], p, f"{p['model']} {p['defense']}\n{p['observer']}, {p['attack']}")
            for p in group
        ]
        for c, (images, p, label) in enumerate(columns):
            for i in range(n):
                ax = axes[r + i, c]
                ax.imshow(images[i, channel], cmap="gray", vmin=0, vmax=1)
                ax.axis("on")
                ax.set_xticks([])
                ax.set_yticks([])
                if p is not None:
                    ax.set_xlabel(f"{p['psnr'][i]:.1f} dB", fontsize=6, labelpad=1)
                if i == 0:
                    ax.set_title(label, fontsize=6)
        r += n
    top_in = 0.8 if title else 0.1
    fig.subplots_adjust(
        left=0.02, right=0.98, bottom=0.15 / fig.get_figheight(),
        top=1 - top_in / fig.get_figheight(), wspace=0.08, hspace=0.45,
    )  # fmt: skip
    if title:
        fig.suptitle(textwrap.fill(title, int(14 * cols)), fontsize=7)
    fig.savefig(path, dpi=90)


def write_markdown(path: Path, doc: dict, plan: AttackPlan) -> None:
    """leakage.md: one table row per attack of `doc`, then the picture."""
    lines = [
        f"# Update leakage: study {doc['study']}, round {doc['round']}",
        "",
        "What a curious server reconstructs from one site's model update "
        f"(local optimizer {plan.local_optimizer}); PSNR/SSIM per real image, matched "
        "one to one; recovered: share above 20 dB. `gain`: PSNR minus the PSNR of guessing "
        "the mean of the server's held-out images (what the attacker knows without the "
        "update); `aligned`: both scored after the least-squares "
        "intensity factor to the real image (the study CNN and U-Net cannot see a global "
        "intensity factor: this is what the update itself reveals).",
        "",
        "| model | defence | observer | site | b | local steps | attack | labels | PSNR dB "
        "| mean guess dB | gain dB | aligned dB | aligned guess dB | aligned gain dB | SSIM "
        "| recovered | s/image |",
        "| --- | --- | --- | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: | ---: | ---: |",
    ]
    for a in doc["attacks"]:
        lines.append(
            f"| {a['model']} | {a['defense']} | {a['observer']} | {a['site']} | "
            f"{a['batch_size']} | {a['local_steps']} | {a['attack']} | {a['labels']} | "
            f"{np.mean(a['psnr']):.1f} | {a['mean_guess_psnr']:.1f} | {a['gain_db']:+.1f} | "
            f"{np.mean(a['psnr_scale_aligned']):.1f} | "
            f"{a['mean_guess_psnr_scale_aligned']:.1f} | {a['gain_scale_aligned_db']:+.1f} | "
            f"{np.mean(a['ssim']):.3f} | {a['recovered_share']:.0%} | "
            f"{a['seconds_per_image']:.1f} |"
        )
    if "prior" in doc:
        p = doc["prior"]
        lines += [
            "",
            f"Image prior of the optimisation attack: {p['components']} principal components "
            f"of {p['reference_images']} of {p['source']}.",
        ]
    lines += ["", "![originals beside reconstructions](leakage.png)", ""]
    path.write_text("\n".join(lines))


def summary_lines(doc: dict) -> list[str]:
    """One line per attack for the terminal."""
    return [
        f"{a['model']:5} {a['defense']:15} {a['observer']:12} site {a['site']} "
        f"b={a['batch_size']:<3} {a['attack']:12} PSNR {np.mean(a['psnr']):6.1f} dB "
        f"(mean guess {a['mean_guess_psnr']:.1f}, gain {a['gain_db']:+.1f}; scale-aligned "
        f"gain {a['gain_scale_aligned_db']:+.1f}) recovered {a['recovered_share']:.0%}"
        for a in doc["attacks"]
    ]
