"""Render docs/BENCHMARKS.md (and its plots) from benchmarks/results/*.json only.

Every number in the document comes from a result file; each section prints
the command that regenerates its file. `render_report` never measures."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from simulations.benchmarks.common import RESULTS_DIR, load_results

DOC_PATH = Path("docs") / "BENCHMARKS.md"
PLOT_DIR = Path("docs") / "bench"
SECURITY_SOURCE = "phantom-xray"
# learned encryptors' targets (issue): images/s at 128 x 128 and share of conv throughput
TARGET_IMAGES_S = 100.0
TARGET_CONV_FRACTION = 0.5
TARGET_OVERHEAD = 1.5
TARGET_MEMORY_GB = 16.0
TARGET_SCALING_SITES = 512
TARGET_CODEC_PSNR = 40.0
# secure-by-the-metrics: the rule, stated once, applied to the evaluate() entry
CORR_LIMIT = 0.05
KPA_MARGIN_DB = 3.0
VERDICT_ALPHA = 0.01
KPA_MIN_STEPS = 100


def fmt(value: Any, digits: int = 2) -> str:
    """A table cell: yes/no, n/a for NaN/None, inf, fixed digits."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.{digits}f}"
    return str(value)


def fmt_ratio(value: Any) -> str:
    """A speed ratio: 2 decimals from 0.01 up, '1/N' below (AES is N times faster)."""
    if value is None or not isinstance(value, (int, float)) or math.isnan(value):
        return "n/a"
    if value >= 0.01:
        return f"{value:.2f}"
    return f"1/{1 / value:,.0f}" if value > 0 else "0"


def ratio_spread(stats: Any) -> str:
    if not isinstance(stats, Mapping) or not stats.get("n"):
        return fmt_ratio(med(stats))
    return (
        f"{fmt_ratio(stats['median'])} ({fmt_ratio(stats['min'])}..{fmt_ratio(stats['max'])},"
        f" n={stats['n']})"
    )


def med(stats: Any) -> float:
    """Median of a summarize() dict (or the number itself)."""
    if isinstance(stats, Mapping):
        return float(stats.get("median", math.nan))
    return math.nan if stats is None else float(stats)


def spread(stats: Any, digits: int = 2) -> str:
    """'median (min..max, n=K)' of a summarize() dict."""
    if not isinstance(stats, Mapping) or not stats.get("n"):
        return fmt(med(stats), digits)
    return (
        f"{fmt(stats['median'], digits)} ({fmt(stats['min'], digits)}..{fmt(stats['max'], digits)},"
        f" n={stats['n']})"
    )


def table(header: list[str], rows: list[list[Any]]) -> str:
    for r in rows:
        if len(r) != len(header):
            raise ValueError(f"table row has {len(r)} cells for {len(header)} columns: {r[:2]}")
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += [
        "| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in r) + " |" for r in rows
    ]
    return "\n".join(lines)


def chi2_critical(alpha: float = VERDICT_ALPHA, dof: int = 255) -> float:
    """Chi-square critical value of the 8-bit histogram test (255 degrees of freedom)."""
    try:
        from scipy.stats import chi2

        return float(chi2.ppf(1 - alpha, dof))
    except ImportError:  # the design's alpha 0.05 value
        return 293.25


def kpa_informative(entry: Mapping[str, Any]) -> bool:
    """Did the known-plaintext attack train enough to say anything?"""
    return int(entry["details"].get("kpa", {}).get("steps", 0)) >= KPA_MIN_STEPS


def secure_verdict(entry: Mapping[str, Any]) -> tuple[bool, list[str]]:
    """(secure?, failed criteria) for one method's encryption.evaluate entry.

    Tests at alpha 0.01: at 0.05 each of six tests flags a perfect cipher one
    time in twenty. An under-trained attack (fewer than KPA_MIN_STEPS steps)
    passes the KPA criterion vacuously; the table says so."""
    sec, det, att = entry["security"], entry["details"], entry["attack"]
    a = VERDICT_ALPHA
    checks = {
        "NPCR": det.get(f"npcr_pass_{a}", False),
        "UACI": det.get(f"uaci_pass_{a}", False),
        "key NPCR": det.get(f"key_npcr_pass_{a}", False),
        "chi2": sec["chi2"] < chi2_critical(a),
        "correlation": max(abs(sec[k]) for k in ("corr_h", "corr_v", "corr_d")) < CORR_LIMIT,
        "KPA": not (att["kpa_psnr"] > att["mean_guess_psnr"] + KPA_MARGIN_DB),
    }
    failed = [k for k, ok in checks.items() if not ok]
    return not failed, failed


def _reproduce(doc: Mapping[str, Any] | None, name: str) -> str:
    if doc is None:
        return f"_Not measured yet: run `medfed bench {name}`._"
    return (
        f"_Reproduce: `{doc['command']}` ({doc['created']}, {doc['seconds']:.0f} s; "
        f"file `benchmarks/results/{name}.json`)._"
    )


def _err(doc: Mapping[str, Any] | None) -> str | None:
    if doc is not None and "error" in doc["results"]:
        return f"**This benchmark failed:** {doc['results']['error']}"
    return None


# -- plots ------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_rate_distortion(rd: Mapping[str, Any], path: Path) -> bool:
    """Bits per pixel against PSNR (top row) and SSIM (bottom row), one column per
    source, with raw size and the lossless codecs as vertical reference lines."""
    sources = {k: v for k, v in rd["sources"].items() if "methods" in v}
    if not sources:
        return False
    plt = _plt()
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
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def plot_speed(speed: Mapping[str, Any], path: Path) -> bool:
    methods = speed["methods"]
    plt = _plt()
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
    ax.set_title(f"Encryption throughput relative to AES-GCM, {speed['size']} px")
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def plot_scaling(scaling: Mapping[str, Any], path: Path) -> bool:
    pts = scaling["points"]
    if not pts:
        return False
    plt = _plt()
    fig, ax1 = plt.subplots(figsize=(6, 3.5))
    x = [p["sites"] for p in pts]
    ax1.plot(x, [p["round_s"] for p in pts], "o-", color="tab:blue", label="round wall s")
    ax1.set_xscale("log", base=2)
    ax1.set_xlabel("simulated sites")
    ax1.set_ylabel("seconds (1 round)", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(x, [p["peak_rss_gb"] for p in pts], "s--", color="tab:red", label="peak RSS GB")
    ax2.set_ylabel("peak RSS of process tree, GB", color="tab:red")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def plot_bandwidth(bw: Mapping[str, Any], path: Path) -> bool:
    grid = bw["grid"]
    if not grid:
        return False
    plt = _plt()
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


# -- sections ---------------------------------------------------------------
def _security_entries(docs) -> dict[str, Any]:
    rd = docs.get("rate-distortion")
    if rd is None or "sources" not in rd["results"]:
        return {}
    src = rd["results"]["sources"].get(SECURITY_SOURCE, {})
    return src.get("evaluate", {}).get("methods", {})


def headline(docs) -> str:
    speed = docs.get("speed")
    rd = docs.get("rate-distortion")
    sec = _security_entries(docs)
    smethods = speed["results"].get("methods", {}) if speed else {}
    rd_src = (
        rd["results"]["sources"].get(SECURITY_SOURCE, {})
        if rd and "sources" in rd["results"]
        else {}
    )
    names = list(dict.fromkeys([*rd_src.get("methods", {}), *smethods]))
    rows = []
    for name in names:
        point = rd_src.get("methods", {}).get(name, {})
        secure = secure_verdict(sec[name]) if name in sec else None
        s = smethods.get(name, {})
        rows.append(
            [
                f"`{name}`",
                fmt(point.get("kb_per_image")),
                fmt(point.get("psnr")),
                "n/a"
                if secure is None
                else ("yes" if secure[0] else "no (" + ", ".join(secure[1]) + ")")
                + ("" if kpa_informative(sec[name]) else " *"),
                fmt(med(s.get("encrypt_mb_s"))),
                fmt_ratio(med(s.get("encrypt_ratio_to_aes"))),
            ]
        )
    size = rd["results"]["size"] if rd else "?"
    ssize = speed["results"].get("size", "?") if speed else "?"
    return (
        table(
            [
                "method",
                "kB / image",
                "PSNR dB",
                "secure by the metrics",
                "encrypt MB/s",
                "x AES-GCM",
            ],
            rows,
        )
        + f"\n\nkB and PSNR: {SECURITY_SOURCE}, {size} x {size} px "
        f"(`{rd['command'] if rd else 'medfed bench rate-distortion'}`); speed: {ssize} x {ssize} px, "
        f"median of the repeats, ratio to aes-gcm measured in the same run "
        f"(`{speed['command'] if speed else 'medfed bench speed'}`). "
        f"Secure by the metrics = NPCR, UACI (one-pixel change) and key NPCR (one-bit key "
        f"change) pass at alpha {VERDICT_ALPHA}, histogram chi-square below "
        f"{chi2_critical():.2f} (alpha {VERDICT_ALPHA}), every adjacent-pixel |correlation| < "
        f"{CORR_LIMIT}, and the known-plaintext attack does no better than {KPA_MARGIN_DB:g} dB "
        f"above guessing the mean image; the failed criteria are listed. Marked * where the "
        f"attack ran fewer than {KPA_MIN_STEPS} training steps (too short to be informative)."
    )


def targets(docs) -> str:
    rows = []
    speed = docs.get("speed")
    if speed and "methods" in speed["results"]:
        for name, m in speed["results"]["methods"].items():
            if not m["learned"]:
                continue
            ips = med(m["encrypt_images_s"])
            frac = med(m.get("fraction_of_conv"))
            rows.append(
                [
                    f"`{name}` >= {TARGET_IMAGES_S:g} images/s at {speed['results']['size']} px",
                    f"{ips:.1f} images/s (conv ceiling {m.get('conv_ceiling_images_s', math.nan):.0f})",
                    "yes"
                    if ips >= TARGET_IMAGES_S
                    else f"no, {ips / TARGET_IMAGES_S:.2f}x of target",
                ]
            )
            rows.append(
                [
                    f"`{name}` >= {TARGET_CONV_FRACTION:.0%} of conv FLOP/s",
                    f"{frac:.1%}" if not math.isnan(frac) else "n/a",
                    "n/a"
                    if math.isnan(frac)
                    else (
                        "yes"
                        if frac >= TARGET_CONV_FRACTION
                        else f"no, {frac / TARGET_CONV_FRACTION:.2f}x of target"
                    ),
                ]
            )
    over = docs.get("federation-overhead")
    if over and "ratio_of_medians" in over["results"]:
        res = over["results"]
        r = res["ratio_of_medians"]
        fed_train = [p["site_train_s_sum"] for p in res.get("phases", [])[1:]]
        plain_train = res.get("plain_site_train_s_sum", [])[1:]
        work = ""
        if fed_train and plain_train:
            work = (
                f" (site training per round: {sum(fed_train) / len(fed_train):.2f} s in Ray "
                f"workers vs {sum(plain_train) / len(plain_train):.2f} s in the loop)"
            )
        rows.append(
            [
                f"federation round <= {TARGET_OVERHEAD:g}x plain loop after start-up",
                f"{r:.2f}x{work}",
                "yes" if r <= TARGET_OVERHEAD else f"no, {r / TARGET_OVERHEAD:.2f}x of the limit",
            ]
        )
    sc = docs.get("federation-scaling")
    if sc and "points" in sc["results"]:
        pts = {p["sites"]: p for p in sc["results"]["points"]}
        if TARGET_SCALING_SITES in pts:
            gb = pts[TARGET_SCALING_SITES]["peak_rss_gb"]
            rows.append(
                [
                    f"{TARGET_SCALING_SITES} sites within {TARGET_MEMORY_GB:g} GB",
                    f"{gb:.2f} GB measured",
                    "yes" if gb <= TARGET_MEMORY_GB else "no",
                ]
            )
        else:
            trend = sc["results"].get("linear_trend", {}).get("peak_rss_gb")
            est = f"{trend['at_512']:.2f} GB by the linear trend" if trend else "n/a"
            rows.append(
                [
                    f"{TARGET_SCALING_SITES} sites within {TARGET_MEMORY_GB:g} GB",
                    est + f" (largest run: {max(pts)} sites)" if pts else est,
                    "not measured in this run"
                    + (", trend within" if trend and trend["at_512"] <= TARGET_MEMORY_GB else ""),
                ]
            )
    rd = docs.get("rate-distortion")
    if rd and "sources" in rd["results"]:
        for source in ("phantom-xray", "phantom-mri"):
            m = rd["results"]["sources"].get(source, {}).get("methods", {})
            c, ref = m.get("learned-codec-aes", {}), m.get("lossless-aes", {})
            if "bpp" in c and "bpp" in ref:
                ok = c["bpp"] < ref["bpp"] and c["psnr"] >= TARGET_CODEC_PSNR
                rows.append(
                    [
                        f"learned-codec-aes < lossless-aes at PSNR >= {TARGET_CODEC_PSNR:g} dB ({source})",
                        f"{c['kb_per_image']:.2f} vs {ref['kb_per_image']:.2f} kB/image at {c['psnr']:.1f} dB",
                        "yes" if ok else f"no, {c['bpp'] / ref['bpp']:.2f}x the lossless size",
                    ]
                )
    return table(["target", "measured", "met?"], rows) if rows else "_No results yet._"


def render_report(
    results_dir: Path = RESULTS_DIR, doc_path: Path = DOC_PATH, plot_dir: Path = PLOT_DIR
) -> Path:
    """Write docs/BENCHMARKS.md and its plots from the result files; returns the doc path."""
    docs = load_results(results_dir)
    doc_path, plot_dir = Path(doc_path), Path(plot_dir)
    plot_dir.mkdir(parents=True, exist_ok=True)
    rel = Path("bench") if plot_dir.parent == doc_path.parent else plot_dir
    out: list[str] = []
    add = out.append
    add("# medfed benchmarks\n")
    add(
        "Generated by `medfed bench report` from `benchmarks/results/*.json` (no number here is "
        "typed by hand). `make bench` (= `medfed bench all`) re-measures everything and "
        "re-renders this page; `medfed bench all --quick` is the reduced suite (fewer repeats, "
        "sizes and sites). Each section names the command that regenerates its numbers. Speeds "
        "are medians of repeated runs with min..max and the repeat count; every speed is also a "
        "ratio to a baseline measured in the same process and run, because the machine is shared "
        "and absolute numbers drift.\n"
    )
    quick = sorted({d["settings"].get("quick", False) for d in docs.values()})
    total_s = sum(float(d.get("seconds", 0.0)) for d in docs.values())
    add(
        f"Suite mode of the files below: {', '.join('quick' if q else 'full' for q in quick)}; "
        f"measuring time of these {len(docs)} files together: {total_s / 60:.1f} min "
        f"(`make bench` also sets up the environment first).\n"
    )
    add("## Headline\n")
    add(headline(docs) + "\n")
    add("## Targets\n")
    add(targets(docs) + "\n")
    add(_TARGET_NOTES)
    _machine(docs, add)
    _speed_section(docs, add, plot_dir, rel)
    _rd_section(docs, add, plot_dir, rel)
    _security_section(docs, add)
    _data_section(docs, add)
    _fed_section(docs, add, plot_dir, rel)
    _gpu_section(docs, add)
    doc_path.parent.mkdir(parents=True, exist_ok=True)
    doc_path.write_text("\n".join(out).rstrip() + "\n")
    return doc_path


_TARGET_NOTES = """Why targets are missed where they are (read with the sections below):
the learned encryptors run here as small-batch PyTorch inference on shared CPU
cores, so their images/s is bounded by the machine's measured convolution
FLOP/s (section "Learned encryptors") times the fraction they reach; networks
with few channels, strided/transposed convolutions and per-call Python work
(padding, quantization, container, AES) reach a smaller fraction than the
64-channel reference convolution; the column "images/s at 100 % of conv"
says whether the images/s target is reachable here at all. Where the federation
is slower than the plain loop, the difference is Ray actor dispatch and message
(de)serialization, a fixed cost per site and round that weighs more the smaller
the shard; where it is faster, Ray ran sites concurrently on the cores. The learned codec's size depends on how
long it was trained (`epochs` in the rate-distortion settings): the quick suite
trains for a few epochs only.
"""


def _machine(docs, add: Callable[[str], None]) -> None:
    any_doc = next(iter(docs.values()))
    m = any_doc["machine"]
    add("## Machine\n")
    add(
        table(
            ["item", "value"],
            [
                ["CPU", f"{m['cpu']} ({m['cpu_count']} logical cores)"],
                ["memory", f"{m['memory_gb']} GB"],
                ["GPU", ", ".join(m["gpus"]) or "none (CPU only)"],
                ["platform", m["platform"]],
                ["Python", m["python"]],
                ["torch threads", fmt(m["torch_threads"])],
                ["git commit", m["git_commit"]],
                *[[f"`{k}`", v or "not installed"] for k, v in m["packages"].items()],
            ],
        )
        + "\n"
    )


def _speed_section(docs, add, plot_dir: Path, rel: Path) -> None:
    doc = docs.get("speed")
    add("## Encryption speed\n")
    if doc is None or _err(doc):
        add((_err(doc) or "") + "\n" + _reproduce(doc, "speed") + "\n")
        return
    r = doc["results"]
    add(
        f"{r['images']} phantom chest X-rays of {r['size']} x {r['size']} px ({r['bits']}-bit), "
        f"one container per call, {doc['settings']['repeats']} repeats interleaved with aes-gcm "
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
        for n, m in r["methods"].items()
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
    conv = r["conv"]
    add("### Learned encryptors: FLOPs and the machine's convolution throughput\n")
    add(
        f"Reference: a plain {conv['shape'][1]}-channel 3x3 convolution on {tuple(conv['shape'])} "
        f"in the same run: {spread({k: (v / 1e9 if isinstance(v, float) else v) for k, v in conv['flops_per_s'].items() if k != 'values'}, 2)} GFLOP/s "
        f"on {conv['device']}.\n"
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
        for n, m in r["methods"].items()
        if m["learned"]
    ]
    header = ["method", "MFLOPs / image", "images/s", "achieved GFLOP/s", "% of conv"]
    add(table([*header, "images/s at 100 % of conv"], rows) + "\n")
    add(
        "The last column is the ceiling that this machine's measured convolution throughput "
        "sets for the method's FLOP count: where it is below the 100 images/s target, no "
        "implementation of that network reaches the target on this machine.\n"
    )
    rows = [
        [f"`{n}`", *(fmt(100 * m["time_breakdown"][k], 1) for k in _BREAKDOWN)]
        for n, m in r["methods"].items()
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
            "convolutions do. Convolutions run in the fastest of their equivalent forms, "
            "chosen per layer and input shape (`encryption/inference.py`).\n"
        )
    add(_reproduce(doc, "speed") + "\n")


_BREAKDOWN = {
    "convolution": "convolutions %",
    "normalization": "normalisation %",
    "other_torch": "other torch ops %",
    "outside_torch": "outside torch %",
}


def _rd_section(docs, add, plot_dir: Path, rel: Path) -> None:
    doc = docs.get("rate-distortion")
    add("## Rate-distortion\n")
    if doc is None or _err(doc):
        add((_err(doc) or "") + "\n" + _reproduce(doc, "rate-distortion") + "\n")
        return
    r = doc["results"]
    trained = (
        "with their default number of epochs"
        if r["epochs"] is None
        else f"for {r['epochs']} epochs"
    )
    if r.get("fit_time_limit_s"):
        trained += f", each fit capped at {r['fit_time_limit_s']:g} s,"
    add(
        f"{r['images']} images per source at {r['size']} x {r['size']} px; learned methods fitted "
        f"{trained} on a disjoint sample of the same source. Exact methods have "
        f"PSNR inf (plotted at the top). Reference lines: raw pixels and the lossless codecs "
        f"(PNG level 9, JPEG-LS, reversible JPEG 2000, imagecodecs; each plane coded alone).\n"
    )
    if plot_rate_distortion(r, plot_dir / "rate_distortion.png"):
        add(f"![bits per pixel against PSNR and SSIM]({rel / 'rate_distortion.png'})\n")
    for source, entry in r["sources"].items():
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
    add(_reproduce(doc, "rate-distortion") + "\n")


def _security_section(docs, add) -> None:
    doc = docs.get("rate-distortion")
    add("## Security statistics and known-plaintext attack\n")
    if doc is None or _err(doc):
        add(_reproduce(doc, "rate-distortion") + "\n")
        return
    for source, entry in doc["results"]["sources"].items():
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
    add(_reproduce(doc, "rate-distortion") + "\n")


def _data_section(docs, add) -> None:
    doc = docs.get("data")
    add("## Data decode\n")
    if doc is None or _err(doc):
        add((_err(doc) or "") + "\n" + _reproduce(doc, "data") + "\n")
        return
    r = doc["results"]
    rows = [[f"`{k}`", spread(v, 2)] for k, v in r["metrics"].items()]
    add("From `client.data.bench.run_data_bench`, repeated; median (min..max, n).\n")
    add(table(["metric", "value"], rows) + "\n")
    add("Counts: " + ", ".join(f"{k} = {v}" for k, v in r["counts"].items()) + ".\n")
    add(_reproduce(doc, "data") + "\n")


def _fed_section(docs, add, plot_dir: Path, rel: Path) -> None:
    add("## Federation\n")
    add("### Flower/Ray overhead against a plain PyTorch loop\n")
    doc = docs.get("federation-overhead")
    if doc is None or _err(doc):
        add((_err(doc) or "") + "\n" + _reproduce(doc, "federation-overhead") + "\n")
    else:
        r = doc["results"]
        s = r["settings"]
        add(
            f"The demo study shape ({s['num_sites']} sites, {s['num_rounds']} rounds, "
            f"{s['phantom_patients']} phantom patients, {s['image_size']} px, aes-gcm, archive) on "
            f"Flower's simulation engine, and the same work (share, train, FedAvg, site and "
            f"holdout evaluation, through the same client code) in a plain loop in one process. "
            f"Round 1 of the federation includes Ray's start-up and the sites' first data load; "
            f"the ratio compares rounds 2 to {s['num_rounds']}. Ray runs one site per CPU core at "
            f"once, each with num-cpus (1) torch thread; the plain loop runs the sites one after "
            f"another with the same thread count, so the federation can beat it by up to the "
            f"number of concurrent sites; the summed site training seconds show the work itself.\n"
        )
        add(
            table(
                ["quantity", "value"],
                [
                    ["federation round s (rounds 2..)", spread(r["federation_round_s"])],
                    ["plain loop round s (rounds 2..)", spread(r["plain_round_s"])],
                    ["ratio of medians", fmt(r["ratio_of_medians"])],
                    ["per-round ratio", spread(r["ratio_after_startup"])],
                    ["federation round 1 s", fmt(r["federation_round1_s"])],
                    ["plain loop round 1 s", fmt(r["plain_round1_s"])],
                    ["start-up s (round 1 - later median)", fmt(r["startup_s"])],
                    [
                        "federation wall s / plain wall s",
                        f"{fmt(r['federation_wall_s'])} / {fmt(r['plain_wall_s'])}",
                    ],
                    [
                        "federation peak RSS GB (process tree)",
                        fmt(r["federation_peak_rss_bytes"] / 1e9),
                    ],
                    [
                        "site training s summed per round, federation (rounds 2..)",
                        ", ".join(fmt(p["site_train_s_sum"]) for p in r.get("phases", [])[1:]),
                    ],
                    [
                        "site training s summed per round, plain loop (rounds 2..)",
                        ", ".join(fmt(v) for v in r.get("plain_site_train_s_sum", [])[1:]),
                    ],
                    ["sites at once in the federation", fmt(r.get("concurrent_sites"))],
                    ["torch threads per site (both)", fmt(r.get("plain_torch_threads"))],
                ],
            )
            + "\n"
        )
        add(_reproduce(doc, "federation-overhead") + "\n")
    add("### Scaling with the number of sites\n")
    doc = docs.get("federation-scaling")
    if doc is None or _err(doc):
        add((_err(doc) or "") + "\n" + _reproduce(doc, "federation-scaling") + "\n")
    else:
        r = doc["results"]
        st = r["settings"]
        add(
            f"One round (so the round time includes Ray's start-up), "
            f"{st['patients_per_site']} phantom patients per site, {st['image_size']} px, "
            f"{st['share_per_round']} shared images per site. Peak memory is the summed RSS of this "
            f"process and all its descendants (Ray included), sampled every 0.25 s.\n"
        )
        rows = [
            [
                p["sites"],
                fmt(p["round_s"], 1),
                fmt(p["s_per_site"], 3),
                fmt(p["peak_rss_gb"], 2),
                fmt(p["data_prepare_s"], 1),
                p["sites_failed"],
            ]
            for p in r["points"]
        ]
        add(
            table(
                [
                    "sites",
                    "round s",
                    "s per site",
                    "peak RSS GB",
                    "phantom generation s",
                    "sites failed",
                ],
                rows,
            )
            + "\n"
        )
        for sk in r["skipped"]:
            add(
                f"- {sk['sites']} sites not run in this suite: predicted {sk['predicted_s']:.0f} s, "
                f"over the {sk['budget_s']:.0f} s budget of this benchmark.\n"
            )
        for key, t in r.get("linear_trend", {}).items():
            add(
                f"- linear trend of {key}: {t['per_site']:.4g} per site + {t['intercept']:.3g}; at 512 sites: {t['at_512']:.3g}.\n"
            )
        if plot_scaling(r, plot_dir / "scaling.png"):
            add(f"![wall time and memory against sites]({rel / 'scaling.png'})\n")
        add(_reproduce(doc, "federation-scaling") + "\n")
    add("### Bandwidth per round\n")
    doc = docs.get("bandwidth")
    if doc is None or _err(doc):
        add((_err(doc) or "") + "\n" + _reproduce(doc, "bandwidth") + "\n")
        return
    r = doc["results"]
    st = r["settings"]
    add(
        f"{st['num_sites']} sites, method {st['method']}, {st['share_per_round']} shared images "
        f"per site; bytes of round {st.get('rounds', 1)} (the steady state: consortium peers "
        f"receive ciphertext from round 2 on) summed over sites (kB = 1000 bytes), from "
        f"rounds.jsonl; upload time is the slowest site's serialized uplink at each speed.\n"
    )
    rows = []
    for g in r["grid"]:
        b, up = g["bytes_per_round"], g["upload_seconds_per_round"]
        rows.append(
            [
                g["exchange"],
                g["image_size"],
                fmt(b["ciphertext_up"] / 1e3, 1),
                fmt(b["ciphertext_down"] / 1e3, 1),
                fmt(b["model_up"] / 1e3, 1),
                fmt(b["message_up"] / 1e3, 1),
                fmt(b["message_down"] / 1e3, 1),
                *[fmt(up.get(k), 3) for k in ("10mbps", "100mbps", "1000mbps")],
            ]
        )
    add(
        table(
            [
                "exchange",
                "px",
                "ciphertext up kB",
                "ciphertext down kB",
                "model up kB",
                "message up kB",
                "message down kB",
                "upload s @10 Mbit/s",
                "@100",
                "@1000",
            ],
            rows,
        )
        + "\n"
    )
    if plot_bandwidth(r, plot_dir / "bandwidth.png"):
        add(f"![bytes per round]({rel / 'bandwidth.png'})\n")
    add("Per-site bytes of each run are in the result file (`per_site_bytes`).\n")
    add(_reproduce(doc, "bandwidth") + "\n")


def _gpu_section(docs, add) -> None:
    doc = docs.get("gpu")
    add("## GPU\n")
    if doc is None or _err(doc):
        add((_err(doc) or "") + "\n" + _reproduce(doc, "gpu") + "\n")
        return
    r = doc["results"]
    if not r.get("available"):
        add(
            f"Skipped on this machine: {r.get('reason')}. On a machine with CUDA the same command runs "
            "encryption speed on the GPU and the overhead study with sites sharing one GPU "
            "(fractional num-gpus = 0.25).\n"
        )
        add(_reproduce(doc, "gpu") + "\n")
        return
    add(f"Devices: {', '.join(r['devices'])}.\n")
    sp = r["speed"]
    rows = [
        [
            f"`{n}`",
            spread(m["encrypt_images_s"], 1),
            ratio_spread(m["encrypt_ratio_to_aes"]),
            fmt(100 * med(m.get("fraction_of_conv")), 2),
        ]
        for n, m in sp["methods"].items()
    ]
    add(
        table(["method (GPU)", "encrypt images/s", "x AES-GCM (CPU AES)", "% of GPU conv"], rows)
        + "\n"
    )
    o = r["overhead"]
    add(
        f"Study with sites sharing the GPU: federation round {spread(o['federation_round_s'])} s, "
        f"plain loop {spread(o['plain_round_s'])} s, ratio {fmt(o['ratio_of_medians'])}, start-up "
        f"{fmt(o['startup_s'])} s.\n"
    )
    add(_reproduce(doc, "gpu") + "\n")
