"""Encryption sections of docs/BENCHMARKS.md: speed (with the learned
encryptors' FLOPs against the machine's convolution throughput), rate-distortion,
and the security statistics with the known-plaintext attack.

Each section function takes the loaded result documents, `add` (appends one
paragraph to the page), and where it draws, the plot folder and its path
relative to the page."""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from pathlib import Path

from benchmarks.document import Docs, documents
from benchmarks.plots import plot_rate_distortion, plot_speed
from benchmarks.result_types import RateDistortionResults, SpeedResults
from benchmarks.tables import (
    failure_line,
    fmt,
    med,
    ratio_spread,
    reproduce_line,
    shows_results,
    spread,
    table,
)
from benchmarks.verdicts import kpa_informative, secure_verdict

# torch-profiler categories of one encrypt call -> column headings
_BREAKDOWN = {
    "convolution": "convolutions %",
    "normalization": "normalisation %",
    "other_torch": "other torch ops %",
    "outside_torch": "outside torch %",
}


def speed_section(docs: Docs, add: Callable[[str], None], plot_dir: Path, rel: Path) -> None:
    """Encryption speed against aes-gcm, and the learned encryptors' FLOPs and time breakdown."""
    doc = documents(docs).get("speed")
    add("## Encryption speed\n")
    if not shows_results(doc, "speed", add):
        return
    r: SpeedResults = doc.result
    add(
        f"{r.images} phantom chest X-rays of {r.size} x {r.size} px ({r.bits}-bit), "
        f"one container per call, {doc.settings['repeats']} repeats interleaved with aes-gcm "
        f"(round-robin, so load bursts hit every method alike). MB are raw pixel bytes (10^6).\n"
    )
    rows = [
        [
            f"`{n}`",
            spread(m["encrypt_mb_s"]),
            spread(m["decrypt_mb_s"]),
            spread(m["encrypt_images_s"], 1),
            ratio_spread(m["encrypt_ratio_to_aes"]),
            ratio_spread(m["decrypt_ratio_to_aes"]),
        ]
        for n, m in r.methods.items()
    ]
    add(
        table(
            [
                "method",
                "encrypt MB/s",
                "decrypt MB/s",
                "encrypt images/s",
                "enc x AES",
                "dec x AES",
            ],
            rows,
        )
        + "\n"
    )
    if plot_speed(r, plot_dir / "speed.png"):
        add(f"![encryption speed relative to AES-GCM]({rel / 'speed.png'})\n")
    conv = r.conv
    conv_gflops = {  # the summarize() dict in GFLOP/s (n stays an int; raw values left out)
        k: (v / 1e9 if isinstance(v, float) else v)
        for k, v in conv["flops_per_s"].items()
        if k != "values"
    }
    add("### Learned encryptors: FLOPs and the machine's convolution throughput\n")
    add(
        f"Reference: a plain {conv['shape'][1]}-channel 3x3 convolution on {tuple(conv['shape'])} "
        f"in the same run: {spread(conv_gflops, 2)} GFLOP/s on {conv['device']}.\n"
    )
    rows = [
        [
            f"`{n}`",
            fmt((m.get("flops_per_image") or math.nan) / 1e6, 1),
            spread(m["encrypt_images_s"], 1),
            fmt(med(m.get("achieved_flops_s")) / 1e9, 3),
            fmt(100 * med(m.get("fraction_of_conv")), 2),
            fmt(m.get("conv_ceiling_images_s"), 1),
        ]
        for n, m in r.methods.items()
        if m["learned"]
    ]
    header = [
        "method",
        "MFLOPs / image",
        "images/s",
        "achieved GFLOP/s",
        "% of conv",
        "images/s at 100 % of conv",
    ]
    add(table(header, rows) + "\n")
    add(
        "The last column is the ceiling that this machine's measured convolution throughput "
        "sets for the method's FLOP count: where it is below the 100 images/s target, no "
        "implementation of that network reaches the target on this machine.\n"
    )
    rows = [
        [f"`{n}`", *(fmt(100 * m["time_breakdown"][k], 1) for k in _BREAKDOWN)]
        for n, m in r.methods.items()
        if m.get("time_breakdown")
    ]
    if rows:
        add("Where one encrypt call's time goes (torch profiler, % of the call's wall time):\n")
        add(table(["method", *(_BREAKDOWN[k] for k in _BREAKDOWN)], rows) + "\n")
        add(
            "Only the convolutions do the FLOPs counted above. Normalisation layers (the "
            "instance norms of the CycleGAN generator) and other tensor ops (padding, "
            "activations, quantisation) move memory without counted FLOPs; outside torch are "
            "entropy coding, chaos maps, the container and AES. A method whose convolution "
            "share is small cannot reach half the convolution throughput whatever its "
            "convolutions do. Convolutions run in an equivalent faster form "
            "picked per layer by fixed rules (`encryption/inference.py`).\n"
        )
    add(reproduce_line(doc, "speed") + "\n")


def rate_distortion_section(
    docs: Docs, add: Callable[[str], None], plot_dir: Path, rel: Path
) -> None:
    """Bits per pixel, PSNR and SSIM of every method per source, with the codec references."""
    doc = documents(docs).get("rate-distortion")
    add("## Rate-distortion\n")
    if not shows_results(doc, "rate-distortion", add):
        return
    r: RateDistortionResults = doc.result
    trained = (
        "with their default number of epochs" if r.epochs is None else f"for {r.epochs} epochs"
    )
    if r.fit_time_limit_s:
        clock = "CPU " if r.fit_clock == "cpu" else ""
        trained += f", each fit capped at {r.fit_time_limit_s:g} {clock}s,"
    add(
        f"{r.images} images per source at {r.size} x {r.size} px; learned methods fitted "
        f"{trained} on {r.fit_images} other images of the same site (other "
        f"patients; see the learning curves for more). Exact methods have "
        f"PSNR inf (plotted at the top). Reference lines: raw pixels and the lossless codecs "
        f"(PNG level 9, JPEG-LS, reversible JPEG 2000, imagecodecs; each plane coded alone).\n"
    )
    if plot_rate_distortion(r, plot_dir / "rate_distortion.png"):
        add(f"![bits per pixel against PSNR and SSIM]({rel / 'rate_distortion.png'})\n")
    for source, entry in r.sources.items():
        add(f"### {source}\n")
        if "error" in entry:
            add(f"Not available here: {entry['error']}\n")
            continue
        refs = ", ".join(f"{k} {fmt(v)}" for k, v in entry["references_bpp"].items())
        add(f"Shape {tuple(entry['shape'])}, {entry['bits']}-bit. Reference bpp: {refs}.\n")
        rows = []
        for n, m in entry["methods"].items():
            if "error" in m:
                rows.append([f"`{n}`", "error", m["error"], "", "", ""])
                continue
            rows.append(
                [
                    f"`{n}`",
                    fmt(m["bpp"], 3),
                    fmt(m["kb_per_image"], 2),
                    fmt(m["psnr"]),
                    fmt(m["ssim"], 4),
                    fmt(m.get("fit_s"), 1),
                ]
            )
        for p in entry.get("learned_codec_curve") or []:
            rows.append(
                [
                    f"`learned-codec-aes` target {p['config'].get('target_psnr_db')} dB",
                    fmt(p["bpp"], 3),
                    fmt(p["kb_per_image"]),
                    fmt(p["psnr"]),
                    fmt(p["ssim"], 4),
                    fmt(p.get("fit_s"), 1),
                ]
            )
        add(table(["method", "bpp", "kB / image", "PSNR dB", "SSIM", "fit s"], rows) + "\n")
    add(reproduce_line(doc, "rate-distortion") + "\n")


def security_section(
    docs: Docs,
    add: Callable[[str], None],
    plot_dir: Path | None = None,
    rel: Path | None = None,
    results_dir: Path | None = None,
) -> None:
    """Security statistics, known-plaintext attack and verdict of every method per
    source, and the method pictures the benchmark wrote beside its result file
    (copied from `results_dir` into `plot_dir`)."""
    doc = documents(docs).get("rate-distortion")
    add("## Security statistics and known-plaintext attack\n")
    if doc is None or failure_line(doc):
        add(reproduce_line(doc, "rate-distortion") + "\n")
        return
    rd: RateDistortionResults = doc.result
    for source, entry in rd.sources.items():
        ev = entry.get("evaluate")
        if not ev:
            continue
        add(f"### {source}\n")
        add(
            "From `encryption.evaluate` (the same code as `medfed bench encryption`), on the "
            "method's cipher view. KPA: a network trained on leaked (plaintext, ciphertext) pairs "
            "of the site reconstructs unseen ciphertext; compare with guessing the mean image.\n"
        )
        rows = []
        for n, m in ev["methods"].items():
            s, a = m["security"], m["attack"]
            ok, failed = secure_verdict(m)
            rows.append(
                [
                    f"`{n}`",
                    fmt(s["entropy"], 3),
                    fmt(s["npcr"]),
                    fmt(s["uaci"]),
                    fmt(s["npcr_key"]),
                    fmt(max(abs(s[k]) for k in ("corr_h", "corr_v", "corr_d")), 3),
                    fmt(s["chi2"], 0),
                    fmt(s["deterministic"]),
                    fmt(a["kpa_psnr"]) + ("" if kpa_informative(m) else " *"),
                    fmt(a["mean_guess_psnr"]),
                    fmt(m["details"].get("kpa", {}).get("steps")),
                    "yes" if ok else "no: " + ", ".join(failed),
                ]
            )
        add(
            table(
                [
                    "method",
                    "entropy",
                    "NPCR %",
                    "UACI %",
                    "key NPCR %",
                    "max abs corr",
                    "chi2",
                    "det.",
                    "KPA PSNR",
                    "mean-guess PSNR",
                    "KPA steps",
                    "secure",
                ],
                rows,
            )
            + "\n"
        )
        picture = Path(results_dir or ".") / entry.get("pictures", "")
        if entry.get("pictures") and plot_dir is not None and picture.is_file():
            plot_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(picture, plot_dir / picture.name)
            add(
                "What each method does to one unseen image: original, cipher view (what the "
                "statistics above and the attacker see), decrypted image (its PSNR), the "
                "absolute difference (scaled to its maximum), and the known-plaintext "
                "attacker's reconstruction (its PSNR); channel 0 of multi-channel images.\n"
            )
            add(f"![method pictures on {source}]({(rel or plot_dir) / picture.name})\n")
    add(reproduce_line(doc, "rate-distortion") + "\n")
