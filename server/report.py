"""report.md with plots, written from the run folder's files through the
results schema's reader (never from in-memory state, so the report shows
exactly what is on disk)."""

from __future__ import annotations

import math
from pathlib import Path

from study.schema import RoundRecord, read_run

KINDS = ("ciphertext_up", "ciphertext_down", "model_up", "model_down")


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display): the one
    way medfed's reports and benchmarks get it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_bandwidth(rounds: list[RoundRecord], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = [r.round for r in rounds]
    bottom = [0.0] * len(rounds)
    for kind in KINDS:
        vals = [r.totals[kind] / 1e6 for r in rounds]
        ax.bar(x, vals, bottom=bottom, label=kind.replace("_", " "))
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax.set(xlabel="round", ylabel="MB (all sites)", title="Bandwidth per round, by kind")
    ax.set_xticks(x)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_recon(rounds: list[RoundRecord], path: Path) -> bool:
    plt = pyplot()
    series: dict[str, list[tuple[int, float]]] = {}
    for r in rounds:
        for s in r.sites:
            if s.ok and not math.isnan(s.recon["psnr"]):
                series.setdefault(s.site, []).append((r.round, s.recon["psnr"]))
    if not series:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.5))
    exact = all(math.isinf(v) for pts in series.values() for _, v in pts)
    for site, pts in sorted(series.items()):
        vals = [100.0 if math.isinf(v) else v for _, v in pts]
        ax.plot([p for p, _ in pts], vals, marker="o", label=site)
    title = "Reconstruction PSNR per site"
    if exact:
        title += " (exact: plotted at 100 dB)"
    ax.set(xlabel="round", ylabel="PSNR (dB)", title=title)
    ax.set_xticks(sorted({p for pts in series.values() for p, _ in pts}))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_task(rounds: list[RoundRecord], metric: str, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = [r.round for r in rounds]
    for key, label in (
        (metric, "server held-out"),
        (f"fed_{metric}", "federated (site test sets)"),
    ):
        vals = [r.global_.get(key, math.nan) for r in rounds]
        ax.plot(x, vals, marker="o", label=label)
    ax.set(xlabel="round", ylabel=metric, title=f"Task metric per round ({metric})")
    ax.set_xticks(x)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(v) -> str:
    if isinstance(v, float):
        if math.isinf(v):
            return "inf"
        if math.isnan(v):
            return "-"
        return f"{v:.4g}"
    return str(v)


def write_report(out: Path) -> Path:
    run = read_run(out)
    out, rounds, summary, config = run.folder, run.rounds, run.summary, run.study
    if summary is None:
        raise FileNotFoundError(f"{out}/summary.json: the study has not ended; no report yet")
    metric = "auroc" if config["modality"] == "xray" else "dice_mean"
    lines = [
        f"# Study `{config['name']}`",
        "",
        f"{config['num-sites']} sites, {summary.rounds} of {config['num-rounds']} rounds, "
        f"modality {config['modality']}, method `{config['method']}`, exchange "
        f"`{config['exchange']}`, strategy {config['strategy']}. Status: **{summary.status}**.",
        "",
    ]
    if rounds:
        plot_bandwidth(rounds, out / "bandwidth.png")
        plot_task(rounds, metric, out / "task.png")
        has_recon = plot_recon(rounds, out / "recon_psnr.png")
        lines += [
            "## Per round",
            "",
            "| round | sites trained / sampled | not sampled | ciphertext up (B) | "
            "ciphertext down (B) | model up (B) | "
            f"model down (B) | {metric} (held-out) | {metric} (federated) | recon PSNR worst (dB) | s |",
            "| " + " | ".join(["---"] * 11) + " |",
        ]
        for r in rounds:
            g, t = r.global_, r.totals
            left_out = len(r.sites) - len(r.sampled_sites)
            lines.append(
                f"| {r.round} | {len(r.trained_sites)}/{len(r.sampled_sites)} | {left_out} | "
                f"{t['ciphertext_up']} | "
                f"{t['ciphertext_down']} | {t['model_up']} | {t['model_down']} | "
                f"{_fmt(g.get(metric, math.nan))} | {_fmt(g.get('fed_' + metric, math.nan))} | "
                f"{_fmt(g.get('recon_psnr_worst', math.nan))} | {r.seconds:.1f} |"
            )
        lines += [
            "",
            "![bandwidth per round](bandwidth.png)",
            "",
            f"![{metric} per round](task.png)",
            "",
        ]
        if has_recon:
            lines += ["![reconstruction PSNR per site](recon_psnr.png)", ""]
        failed = [(r.round, s.site, s.error) for r in rounds for s in r.failed_sites]
        if failed:
            lines += (
                ["## Failed sites", ""] + [f"- round {r}, {s}: {e}" for r, s, e in failed] + [""]
            )
        if any(len(r.sampled_sites) < len(r.sites) for r in rounds):
            lines += [
                f"Sites not sampled (fraction-train = {config.get('fraction-train', 1.0):g}) "
                "took no part in that round's training and are not failures.",
                "",
            ]
    lines += ["## Totals", "", "| kind | bytes | per round |", "| --- | --- | --- |"]
    for k, v in summary.bytes.items():
        lines.append(f"| {k} | {v} | {summary.bytes_per_round[k]:.0f} |")
    lines += ["", "Upload time of the busiest site in the busiest round (serialized messages):", ""]
    for link, s in summary.upload_seconds_per_round.items():
        lines.append(f"- {link}: {s:.3f} s")
    if summary.reason:
        lines += ["", f"Stopped: {summary.reason}"]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
