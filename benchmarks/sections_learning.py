"""Learning-curve section of docs/BENCHMARKS.md (`medfed bench learning-curves`):
PSNR on the fit and on unseen images against the number of training images
and epochs, per learned method, with whether more data or compute would help
and what its paper reports. The figures: one PNG per image source."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from benchmarks.document import Docs, documents
from benchmarks.learning_curves import target_rows
from benchmarks.result_types import LearningCurvesResults
from benchmarks.tables import fmt, reproduce_line, shows_results, table


def _verdict(flag: Any, why: str) -> str:
    head = "n/a" if flag is None else ("yes" if flag else "no")
    return f"{head}: {why}"


def plot_learning_curves(entry: Mapping[str, Any], source: str, path: Path) -> bool:
    """One panel per lossy method: held-out PSNR (solid) and PSNR on training
    images (dashed) against epochs, one colour per fit-set size, the unseen
    PSNR of the final weights as a dot at the end; a last panel: unseen PSNR
    against the number of training images."""
    from server.report import pyplot

    methods = {
        label: m
        for label, m in entry.get("methods", {}).items()
        if any("error" not in p and math.isfinite(p["unseen"]["psnr"]) for p in m["points"])
    }
    if not methods:
        return False
    plt = pyplot()
    cols = len(methods) + 1
    fig, axes = plt.subplots(1, cols, figsize=(3.6 * cols, 3.4), squeeze=False)
    colours = {}
    for ax, (label, m) in zip(axes[0], methods.items(), strict=False):
        codec = m["method"] == "learned-codec-aes"
        for p in m["points"]:
            if "error" in p:
                continue
            colour = colours.setdefault(p["images"], f"C{len(colours)}")
            curve = [c for c in p["curve"] if "val_psnr_db" in c]
            if curve:
                epochs = [c["epoch"] for c in curve]
                ax.plot(epochs, [c["val_psnr_db"] for c in curve], color=colour, lw=1.2,
                        label=f"{p['images']} images")  # fmt: skip
                ax.plot(epochs, [c.get("fit_psnr_db", math.nan) for c in curve], color=colour,
                        lw=0.8, ls="--")  # fmt: skip
            if not codec:
                ax.plot([p["epochs"]], [p["unseen"]["psnr"]], "o", color=colour, ms=4)
        title = f"{label}: PSNR before the residual" if codec else label
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("PSNR dB")
        ax.legend(fontsize=7, loc="lower right")
    ax = axes[0][-1]
    for label, m in methods.items():
        pts = [(p["images"], p["unseen"]["psnr"]) for p in m["points"] if "error" not in p]
        ax.plot(*zip(*pts, strict=True), "o-", label=label, ms=4)
    ax.set_xscale("log", base=2)
    ax.set_title("unseen images, final weights", fontsize=9)
    ax.set_xlabel("training images")
    ax.set_ylabel("PSNR dB")
    ax.legend(fontsize=7)
    fig.suptitle(f"{source}: solid = held-out, dashed = training images, dot = unseen", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def learning_curves_section(
    docs: Docs, add: Callable[[str], None], plot_dir: Path, rel: Path
) -> None:
    doc = documents(docs).get("learning-curves")
    add("## Learned encryptors at their best: learning curves\n")
    if not shows_results(doc, "learning-curves", add):
        return
    r: LearningCurvesResults = doc.result
    add(
        f"Are the learned methods measured at their best? Each is fitted on the first "
        f"{', '.join(str(n) for n in r.sizes)} images of one site ({r.size} x {r.size} "
        f"px; fit and {r.test_images} unseen images from the same scanner, disjoint by "
        f"patient) under one budget: its own epochs and convergence criterion (a key-chosen "
        f"hold-out of up to 32 of the fit images, at most an eighth; the learning rate drops 5x "
        f"after 4 checks without a 1 % better held-out loss, at most twice, then 4 more such "
        f"checks stop the fit; the best held-out weights are kept), and a compute budget of "
        f"{r.cpu_s_per_image:g} CPU seconds per fit image (at least {r.min_cpu_s:g} s; "
        f"CPU time of its process, so other programs' load does not shrink it; the fits ran in "
        f"{r.jobs} process(es) of {r.torch_threads} torch thread(s)). The fit "
        f"curve is the method's own record (`fit_report`). PSNR of exact methods is inf.\n"
    )
    add(
        "The paper preset of `deepedn` is sized for a GPU (its papers train CycleGAN-size "
        "generators for 200 epochs); this machine has none, so under the same budget it runs a "
        "few epochs only, and the verdict gives the time 200 epochs would take here.\n"
    )
    rows = target_rows(r)
    if rows:
        add("Targets (unseen phantom X-rays, 64 px, after fitting the largest set):\n")
        add(
            table(
                ["method", "target", "measured", "how", "met?"],
                [
                    [
                        f"`{label}`",
                        f">= {target:g} dB",
                        "n/a" if got is None else f"{got:.2f} dB",
                        how,
                        "n/a"
                        if got is None
                        else ("yes" if got >= target else f"no, {target - got:.2f} dB short"),
                    ]  # fmt: skip
                    for label, target, got, how in rows
                ],
            )
            + "\n"
        )
    for source, entry in r.sources.items():
        add(f"### {source}\n")
        if "error" in entry:
            add(f"Not available here: {entry['error']}\n")
            continue
        add(
            f"Images {tuple(entry['shape'])}, {entry['bits']}-bit; fit pool {entry['fit_pool']}, "
            f"unseen {entry['unseen_images']}.\n"
        )
        name = f"learning_curves_{source}.png"
        if plot_learning_curves(entry, source, plot_dir / name):
            add(f"![learning curves on {source}]({rel / name})\n")
        rows = []
        for label, m in entry["methods"].items():
            for p in m["points"]:
                if "error" in p:
                    rows.append([f"`{label}`", p["images"], "error", p["error"], *[""] * 7])
                    continue
                rows.append(
                    [
                        f"`{label}`",
                        p["images"],
                        p["epochs"],
                        p["stopped"],
                        fmt(p["fit_cpu_s"], 0),
                        fmt(p["fit"]["psnr"]),
                        fmt(p["unseen"]["psnr"]),
                        fmt(p["fit"]["ssim"], 3),
                        fmt(p["unseen"]["ssim"], 3),
                        fmt(p["unseen"]["bpp"]),
                        fmt(p["report_metrics"].get("val_psnr_db")),
                    ]
                )
        add(
            table(
                [
                    "method",
                    "images",
                    "epochs",
                    "stopped by",
                    "fit CPU s",
                    "PSNR fit",
                    "PSNR unseen",
                    "SSIM fit",
                    "SSIM unseen",
                    "bpp unseen",
                    "held-out PSNR",
                ],
                rows,
            )
            + "\n"
        )
        verdicts = []
        for label, m in entry["methods"].items():
            a = m["assessment"]
            verdicts.append(
                [
                    f"`{label}`",
                    _verdict(a["data"], a["why_data"]),
                    _verdict(a["compute"], a["why_compute"]) + _paper_epochs(m),
                ]
            )
        add(table(["method", "more data would help?", "more compute would help?"], verdicts) + "\n")
    add("What each method's paper reports (its abstract; other data, sizes and hardware):\n")
    add("\n".join(f"- `{label}`: {text}" for label, text in r.papers.items()) + "\n")
    add(reproduce_line(doc, "learning-curves") + "\n")


def _paper_epochs(m: Mapping[str, Any]) -> str:
    """For a variant with fewer epochs than its configuration asks: the time the
    configured epochs would take on the largest set at the measured pace."""
    points = [p for p in m["points"] if "error" not in p]
    if not points:
        return ""
    p = points[-1]
    want = int(p["budget"].get("epochs", 0))
    if p["stopped"] != "time limit" or want <= p["epochs"]:
        return ""
    hours = want * p["cpu_s_per_epoch"] / 3600
    return f"; its {want} epochs would take {hours:.1f} CPU hours here"
