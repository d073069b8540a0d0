"""Site and study sections of docs/BENCHMARKS.md: data decode, the federation
(Flower/Ray overhead against a plain loop, scaling with sites, bandwidth per
round) and the GPU runs.

Each section function takes the loaded result documents, `add` (appends one
paragraph to the page), and where it draws, the plot folder and its path
relative to the page."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from benchmarks.document import BenchDocument, Docs, documents
from benchmarks.plots import plot_bandwidth, plot_scaling
from benchmarks.result_types import (
    BandwidthResults,
    DataResults,
    GpuResults,
    OverheadResults,
    ScalingResults,
)
from benchmarks.tables import (
    fmt,
    med,
    ratio_spread,
    reproduce_line,
    shows_results,
    spread,
    table,
)


def data_section(docs: Docs, add: Callable[[str], None]) -> None:
    """Decode speed and counts of the site data pipeline."""
    doc = documents(docs).get("data")
    add("## Data decode\n")
    if not shows_results(doc, "data", add):
        return
    r: DataResults = doc.result
    rows = [[f"`{k}`", spread(v, 2)] for k, v in r.metrics.items()]
    add("From `benchmarks.data.run_data_bench`, repeated; median (min..max, n).\n")
    add(table(["metric", "value"], rows) + "\n")
    add("Counts: " + ", ".join(f"{k} = {v}" for k, v in r.counts.items()) + ".\n")
    add(reproduce_line(doc, "data") + "\n")


def federation_section(docs: Docs, add: Callable[[str], None], plot_dir: Path, rel: Path) -> None:
    """Flower/Ray overhead, scaling with the number of sites, and bandwidth per round."""
    docs = documents(docs)
    add("## Federation\n")
    _overhead(docs, add)
    _scaling(docs, add, plot_dir, rel)
    _bandwidth(docs, add, plot_dir, rel)


def _overhead(docs: Mapping[str, BenchDocument], add: Callable[[str], None]) -> None:
    add("### Flower/Ray overhead against a plain PyTorch loop\n")
    doc = docs.get("federation-overhead")
    if not shows_results(doc, "federation-overhead", add):
        return
    r: OverheadResults = doc.result
    s = r.settings
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
                ["federation round s (rounds 2..)", spread(r.federation_round_s)],
                ["plain loop round s (rounds 2..)", spread(r.plain_round_s)],
                ["ratio of medians", fmt(r.ratio_of_medians)],
                ["per-round ratio", spread(r.ratio_after_startup)],
                ["federation round 1 s", fmt(r.federation_round1_s)],
                ["plain loop round 1 s", fmt(r.plain_round1_s)],
                ["start-up s (round 1 - later median)", fmt(r.startup_s)],
                [
                    "federation wall s / plain wall s",
                    f"{fmt(r.federation_wall_s)} / {fmt(r.plain_wall_s)}",
                ],
                [
                    "federation peak RSS GB (process tree)",
                    fmt(r.federation_peak_rss_bytes / 1e9),
                ],
                [
                    "site training s summed per round, federation (rounds 2..)",
                    ", ".join(fmt(p["site_train_s_sum"]) for p in r.phases[1:]),
                ],
                [
                    "site training s summed per round, plain loop (rounds 2..)",
                    ", ".join(fmt(v) for v in r.plain_site_train_s_sum[1:]),
                ],
                ["sites at once in the federation", fmt(r.concurrent_sites)],
                ["torch threads per site (both)", fmt(r.plain_torch_threads)],
            ],
        )
        + "\n"
    )
    add(reproduce_line(doc, "federation-overhead") + "\n")


def _scaling(
    docs: Mapping[str, BenchDocument], add: Callable[[str], None], plot_dir: Path, rel: Path
) -> None:
    add("### Scaling with the number of sites\n")
    doc = docs.get("federation-scaling")
    if not shows_results(doc, "federation-scaling", add):
        return
    r: ScalingResults = doc.result
    st = r.settings
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
        for p in r.points
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
    for sk in r.skipped:
        add(
            f"- {sk['sites']} sites not run in this suite: predicted {sk['predicted_s']:.0f} s, "
            f"over the {sk['budget_s']:.0f} s budget of this benchmark.\n"
        )
    for key, t in r.linear_trend.items():
        add(
            f"- linear trend of {key}: {t['per_site']:.4g} per site + {t['intercept']:.3g}; "
            f"at 512 sites: {t['at_512']:.3g}.\n"
        )
    if plot_scaling(r, plot_dir / "scaling.png"):
        add(f"![wall time and memory against sites]({rel / 'scaling.png'})\n")
    add(reproduce_line(doc, "federation-scaling") + "\n")


def _bandwidth(
    docs: Mapping[str, BenchDocument], add: Callable[[str], None], plot_dir: Path, rel: Path
) -> None:
    add("### Bandwidth per round\n")
    doc = docs.get("bandwidth")
    if not shows_results(doc, "bandwidth", add):
        return
    r: BandwidthResults = doc.result
    st = r.settings
    add(
        f"{st['num_sites']} sites, method {st['method']}, {st['share_per_round']} shared images "
        f"per site; bytes of round {st.get('rounds', 1)} (the steady state: consortium peers "
        f"receive ciphertext from round 2 on) summed over sites (kB = 1000 bytes), from "
        f"rounds.jsonl; upload time is the slowest site's serialized uplink at each speed.\n"
    )
    rows = []
    for g in r.grid:
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
    add(reproduce_line(doc, "bandwidth") + "\n")


def gpu_section(docs: Docs, add: Callable[[str], None]) -> None:
    """Encryption speed and the overhead study on a GPU, or why they were skipped."""
    doc = documents(docs).get("gpu")
    add("## GPU\n")
    if not shows_results(doc, "gpu", add):
        return
    r: GpuResults = doc.result
    if not r.available:
        add(
            f"Skipped on this machine: {r.reason}. On a machine with CUDA the same "
            "command runs encryption speed on the GPU and the overhead study with sites "
            "sharing one GPU (fractional num-gpus = 0.25).\n"
        )
        add(reproduce_line(doc, "gpu") + "\n")
        return
    add(f"Devices: {', '.join(r.devices)}.\n")
    sp = r.speed
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
    o = r.overhead
    add(
        f"Study with sites sharing the GPU: federation round {spread(o['federation_round_s'])} s, "
        f"plain loop {spread(o['plain_round_s'])} s, ratio {fmt(o['ratio_of_medians'])}, start-up "
        f"{fmt(o['startup_s'])} s.\n"
    )
    add(reproduce_line(doc, "gpu") + "\n")
