"""Figures of docs/BENCHMARKS.md (matplotlib, Agg backend, written as PNG).

Each plot_* function takes the typed results of one benchmark document and a path,
and returns whether it drew anything (False where there is nothing to plot)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from benchmarks.result_types import (
    BandwidthResults,
    RateDistortionResults,
    ScalingResults,
    SpeedResults,
)
from benchmarks.tables import med
from server.report import pyplot


def plot_rate_distortion(rd: RateDistortionResults, path: Path) -> bool:
    """Bits per pixel against PSNR (top row) and SSIM (bottom row), one column per
    source, with raw size and the lossless codecs as vertical reference lines."""
    sources = {k: v for k, v in rd.sources.items() if "methods" in v}
    if not sources:
        return False
    plt = pyplot()
    cap = 60.0
    fig, axes = plt.subplots(2, len(sources), figsize=(4.2 * len(sources), 7), squeeze=False)
    for col, (source, entry) in enumerate(sources.items()):
        for row, (key, top, label) in enumerate(
            (("psnr", cap, f"PSNR dB (exact = {cap:g})"), ("ssim", 1.0, "SSIM"))
        ):
            ax = axes[row][col]
            for name, m in entry["methods"].items():
                if "bpp" in m:
                    ax.scatter(m["bpp"], min(m[key], top), label=name, s=30)
            curve = entry.get("learned_codec_curve") or []
            if curve:
                pts = sorted((p["bpp"], min(p[key], top)) for p in curve)
                ax.plot(*zip(*pts, strict=True), "k--", lw=1, label="learned-codec-aes curve")
            for ref, bpp in entry["references_bpp"].items():
                if not math.isnan(bpp):
                    ax.axvline(bpp, ls=":", lw=1, color="grey")
                    ax.text(bpp, top * 0.05, ref, rotation=90, fontsize=7, color="grey")
            ax.set_title(f"{source} ({entry['bits']}-bit)")
            ax.set_xlabel("bits per pixel")
            ax.set_ylabel(label)
            ax.set_ylim(0, top * 1.05)
    # one legend for every panel: variants and the codec curve may appear in one source only
    legend: dict[str, Any] = {}
    for ax in axes[0]:
        for handle, name in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(name, handle)
    axes[0][-1].legend(legend.values(), legend.keys(), fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def plot_speed(speed: SpeedResults, path: Path) -> bool:
    methods = speed.methods
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = list(methods)
    vals = [med(methods[n]["encrypt_ratio_to_aes"]) for n in names]
    lo = [
        v - methods[n]["encrypt_ratio_to_aes"].get("min", v)
        for n, v in zip(names, vals, strict=True)
    ]
    hi = [
        methods[n]["encrypt_ratio_to_aes"].get("max", v) - v
        for n, v in zip(names, vals, strict=True)
    ]
    ax.bar(names, vals, yerr=[lo, hi], color="tab:blue")
    ax.set_yscale("log")
    ax.axhline(1.0, color="k", lw=1)
    ax.set_ylabel("encrypt speed / aes-gcm")
    ax.set_title(f"Encryption throughput relative to AES-GCM, {speed.size} px")
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def plot_scaling(scaling: ScalingResults, path: Path) -> bool:
    pts = scaling.points
    if not pts:
        return False
    plt = pyplot()
    fig, ax1 = plt.subplots(figsize=(6, 3.5))
    x = [p["sites"] for p in pts]
    ax1.plot(x, [p["round_s"] for p in pts], "o-", color="tab:blue")
    ax1.set_xscale("log", base=2)
    ax1.set_xlabel("simulated sites")
    ax1.set_ylabel("seconds (1 round)", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(x, [p["peak_rss_gb"] for p in pts], "s--", color="tab:red")
    ax2.set_ylabel("peak RSS of process tree, GB", color="tab:red")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def plot_bandwidth(bw: BandwidthResults, path: Path) -> bool:
    grid = bw.grid
    if not grid:
        return False
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for exchange in dict.fromkeys(g["exchange"] for g in grid):
        rows = sorted((g["image_size"], g) for g in grid if g["exchange"] == exchange)
        total = [
            (g["bytes_per_round"]["message_up"] + g["bytes_per_round"]["message_down"]) / 1e6
            for _, g in rows
        ]
        ax.plot([s for s, _ in rows], total, "o-", label=exchange)
    ax.set_xlabel("image size (px)")
    ax.set_ylabel("MB per round (up + down)")
    ax.set_xscale("log", base=2)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True
