"""Federation benchmarks: Flower/Ray overhead against a plain PyTorch loop doing the
same work, scaling with the number of sites (wall time, peak memory of the process
tree), and bandwidth per round for each exchange policy and image size."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import PeakRss, Progress, quiet, summarize

LINKS_MBPS = (10, 100, 1000)


def benchmark_study(out_dir: Path, **settings: Any):
    """A Study from snake_case settings (`num_sites=4`), writing to `out_dir`."""
    from study.config import Study

    values = {k.replace("_", "-"): v for k, v in settings.items()}
    values["out-dir"] = str(out_dir)
    return Study.from_mapping(values, source="benchmark")


def run_study(study, progress: Progress = quiet) -> dict[str, Any]:
    """Run `study` on Flower's simulation engine; wall time, peak RSS, rounds."""
    from simulations.runner import prepare_data, run_simulated_study

    start = time.perf_counter()
    prepare_data(study)  # phantom generation is timed apart from the federation
    data_s = time.perf_counter() - start
    with PeakRss() as rss:
        start = time.perf_counter()
        result = run_simulated_study(study)
        wall = time.perf_counter() - start
    rounds = result.rounds
    failed = sum(1 for r in rounds for s in r.sites if not s.ok)
    return {
        "data_prepare_s": data_s,
        "wall_s": wall,
        "round_s": [r.seconds for r in rounds],
        "peak_rss_bytes": rss.peak_bytes,
        "rss_method": rss.method,
        "rss_samples": rss.samples,
        "sites_failed": failed,
        "summary": result.summary.to_json(),
        "rounds": [r.to_json() for r in rounds],
    }


def plain_loop(study) -> dict[str, Any]:
    """The study's work with no Flower and no Ray: for each round, every site
    shares (encrypts/decrypts) its images and trains locally, FedAvg in numpy,
    every site evaluates, the server evaluates its holdout. Uses the same client
    code (client.site.Site, study.task) the ClientApp calls."""
    import torch

    from study.data.home import study_data_root

    s = study
    root = study_data_root(s)
    # Each Ray worker trains with num-cpus torch threads; the loop does the same
    # (more threads than free cores make torch spin and the baseline meaningless).
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, s.num_cpus))
    try:
        return _plain_rounds(s, root)
    finally:
        torch.set_num_threads(threads)


def _plain_rounds(s, root) -> dict[str, Any]:
    import torch

    from client.site import Site
    from study.data import load_holdout
    from study.task import build_model, evaluate, train

    start = time.perf_counter()
    sites = [Site(s, i, s.num_sites) for i in range(s.num_sites)]
    global_model = build_model(s.modality)
    holdout = None
    device = "cuda" if s.num_gpus > 0 and torch.cuda.is_available() else "cpu"
    round_s, train_s = [], []
    for rnd in range(1, s.num_rounds + 1):
        t0 = time.perf_counter()
        states, weights = [], []
        train_sum = 0.0
        for site in sites:
            model = build_model(s.modality)
            model.load_state_dict(global_model.state_dict())
            images, targets, *_ = site.training_set({})
            site.share(rnd)
            result = train(
                model,
                s.modality,
                images,
                targets,
                site.shard.train.bits,
                epochs=s.local_epochs,
                batch_size=s.batch_size,
                learning_rate=s.learning_rate,
                seed=s.seed * 100_003 + rnd * 1009 + site.site_id,
                device=device,
            )
            states.append({k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
            weights.append(result.examples)
            train_sum += result.seconds
        total = float(sum(weights))
        averaged = {
            k: sum(st[k].double() * (w / total) for st, w in zip(states, weights, strict=True)).to(
                states[0][k].dtype
            )
            for k in states[0]
        }
        global_model.load_state_dict(averaged)
        global_model.to(device)
        for site in sites:
            test = site.shard.test
            if len(test):
                evaluate(
                    global_model, s.modality, test.images, test.targets, test.bits, device=device
                )
        if holdout is None:
            holdout = load_holdout(
                root, s.modality, image_size=s.image_size, max_images=s.holdout_images, seed=s.seed
            )
        evaluate(
            global_model,
            s.modality,
            holdout.images,
            holdout.targets,
            holdout.bits,
            device=device,
        )
        round_s.append(time.perf_counter() - t0)
        train_s.append(train_sum)
    return {
        "wall_s": time.perf_counter() - start,
        "round_s": round_s,
        "site_train_s_sum": train_s,
        "torch_threads": torch.get_num_threads(),
    }


def run_overhead(
    *,
    num_sites: int = 4,
    num_rounds: int = 4,
    patients: int = 120,
    image_size: int = 64,
    num_gpus: float = 0.0,
    progress: Progress = quiet,
) -> dict[str, Any]:
    """Demo-like study on Flower vs the plain loop. Round 1 of the federation
    includes Ray's start-up and each site's first data load; the ratio uses
    rounds 2.. (median), start-up is reported apart."""
    if num_rounds < 2:
        raise ValueError(f"overhead needs at least 2 rounds, got {num_rounds}")
    settings = dict(
        num_sites=num_sites,
        num_rounds=num_rounds,
        phantom_patients=patients,
        image_size=image_size,
        min_sites=num_sites,
        num_gpus=num_gpus,
    )
    with tempfile.TemporaryDirectory(prefix="medfed-bench-") as tmp:
        progress(f"federation overhead: Flower study, {num_sites} sites x {num_rounds} rounds")
        fed = run_study(benchmark_study(Path(tmp) / "fed", **settings))
        progress("federation overhead: the same work in a plain PyTorch loop")
        plain = plain_loop(benchmark_study(Path(tmp) / "plain", **settings))
    fed_later, plain_later = fed["round_s"][1:], plain["round_s"][1:]
    ratios = [f / p for f, p in zip(fed_later, plain_later, strict=True)]
    return {
        "settings": settings,
        "federation_round_s": summarize(fed_later),
        "plain_round_s": summarize(plain_later),
        "ratio_after_startup": summarize(ratios),
        "ratio_of_medians": statistics.median(fed_later) / statistics.median(plain_later),
        "federation_round1_s": fed["round_s"][0],
        "plain_round1_s": plain["round_s"][0],
        "startup_s": fed["round_s"][0] - statistics.median(fed_later),
        "federation_wall_s": fed["wall_s"],
        "plain_wall_s": plain["wall_s"],
        "federation_peak_rss_bytes": fed["peak_rss_bytes"],
        "sites_failed": fed["sites_failed"],
        "phases": _phases(fed),
        "plain_site_train_s_sum": plain["site_train_s_sum"],
        "plain_torch_threads": plain["torch_threads"],
        "concurrent_sites": _concurrency(num_sites),
    }


def _concurrency(num_sites: int) -> int:
    """Sites Flower's Ray backend runs at once here (num-cpus = 1 per site)."""
    import os

    return max(1, min(num_sites, os.cpu_count() or 1))


def _phases(fed: dict) -> list[dict]:
    out = []
    for r in fed["rounds"]:
        seconds = [s.get("seconds", {}) for s in r["sites"] if s["ok"]]
        out.append(
            {
                "round": r["round"],
                "round_s": r["seconds"],
                "site_train_s_sum": sum(s.get("train", 0.0) for s in seconds),
                "site_encrypt_s_sum": sum(s.get("encrypt", 0.0) for s in seconds),
            }
        )
    return out


def run_scaling(
    *,
    sites: tuple[int, ...] = (8, 32, 128, 512),
    patients_per_site: int = 3,
    image_size: int = 32,
    share_per_round: int = 2,
    budget_s: float = 1200.0,
    progress: Progress = quiet,
) -> dict[str, Any]:
    """Wall time and peak memory (summed RSS of the process tree) of one round with
    `sites` simulated sites of small shards. A size whose predicted time (linear in
    sites from the last measured one) exceeds what is left of `budget_s` is skipped
    and recorded as such."""
    points, skipped = [], []
    spent = 0.0
    with tempfile.TemporaryDirectory(prefix="medfed-bench-") as tmp:
        for n in sites:
            if points:
                predicted = _predict_s(points, n)
                if spent + predicted > budget_s:
                    skipped.append({"sites": n, "predicted_s": predicted, "budget_s": budget_s})
                    progress(f"scaling: skip {n} sites (predicted {predicted:.0f} s, over budget)")
                    continue
            progress(f"scaling: {n} sites")
            study = benchmark_study(
                Path(tmp) / f"sites-{n}",
                num_sites=n,
                num_rounds=1,
                min_sites=max(1, n // 2),
                phantom_patients=max(n * patients_per_site, 8),
                phantom_size=64,
                image_size=image_size,
                share_per_round=share_per_round,
                holdout_images=32,
                max_slices_per_subject=1,
            )
            res = run_study(study)
            spent += res["wall_s"] + res["data_prepare_s"]
            points.append(
                {
                    "sites": n,
                    "wall_s": res["wall_s"],
                    "round_s": res["round_s"][0],
                    "data_prepare_s": res["data_prepare_s"],
                    "peak_rss_bytes": res["peak_rss_bytes"],
                    "peak_rss_gb": res["peak_rss_bytes"] / 1e9,
                    "rss_method": res["rss_method"],
                    "sites_failed": res["sites_failed"],
                    "s_per_site": res["round_s"][0] / n,
                }
            )
    trend = {}
    if len(points) >= 2:
        x = np.array([p["sites"] for p in points], dtype=float)
        for key in ("round_s", "peak_rss_gb"):
            slope, icpt = np.polyfit(x, [p[key] for p in points], 1)
            trend[key] = {"per_site": float(slope), "intercept": float(icpt)}
            trend[key]["at_512"] = float(icpt + slope * 512)
    return {
        "settings": {
            "patients_per_site": patients_per_site,
            "image_size": image_size,
            "share_per_round": share_per_round,
            "rounds": 1,
        },
        "points": points,
        "skipped": skipped,
        "linear_trend": trend,
    }


def _predict_s(points: list[dict], n: int) -> float:
    """Seconds a run with `n` sites should take: the linear fit of the measured
    runs (fixed start-up + per-site cost), or proportional from a single run."""
    cost = [p["wall_s"] + p["data_prepare_s"] for p in points]
    if len(points) == 1:
        return cost[0] * n / points[0]["sites"]
    slope, icpt = np.polyfit([p["sites"] for p in points], cost, 1)
    return float(max(icpt + slope * n, cost[-1]))


def run_bandwidth(
    *,
    exchanges: tuple[str, ...] = ("none", "archive", "consortium"),
    image_sizes: tuple[int, ...] = (32, 64, 128),
    num_sites: int = 3,
    patients: int = 60,
    share_per_round: int = 8,
    method: str = "aes-gcm",
    rounds: int = 2,
    progress: Progress = quiet,
) -> dict[str, Any]:
    """Bytes of the last of `rounds` rounds (ciphertext, model, serialized messages; up
    and down; summed over sites) and the slowest site's upload seconds at 10/100/1000
    Mbit/s, for each exchange policy and image size. The last round is the steady
    state: consortium peers receive ciphertext from round 2 on."""
    grid = []
    with tempfile.TemporaryDirectory(prefix="medfed-bench-") as tmp:
        for size in image_sizes:
            for exchange in exchanges:
                progress(f"bandwidth: exchange {exchange}, image size {size}")
                study = benchmark_study(
                    Path(tmp) / f"{exchange}-{size}",
                    num_sites=num_sites,
                    num_rounds=rounds,
                    min_sites=num_sites,
                    phantom_patients=patients,
                    image_size=size,
                    exchange=exchange,
                    share_per_round=share_per_round,
                    method=method,
                    holdout_images=32,
                )
                res = run_study(study)
                last = res["rounds"][-1]  # steady state: consortium downlink starts in round 2
                per_site = [{"site": x["site"], **x["bytes"]} for x in last["sites"] if x["ok"]]
                keys = [k for k in per_site[0] if k != "site"] if per_site else []
                max_up = max((x["message_up"] for x in per_site), default=0)
                grid.append(
                    {
                        "exchange": exchange,
                        "image_size": size,
                        "round": last["round"],
                        "bytes_per_round": {k: float(sum(x[k] for x in per_site)) for k in keys},
                        "upload_seconds_per_round": {
                            f"{mbps}mbps": max_up * 8 / (mbps * 1e6) for mbps in LINKS_MBPS
                        },
                        "study_upload_seconds_per_round": res["summary"][
                            "upload_seconds_per_round"
                        ],
                        "per_site_bytes": per_site,
                        "round_s": last["seconds"],
                    }
                )
    return {
        "settings": {
            "num_sites": num_sites,
            "patients": patients,
            "share_per_round": share_per_round,
            "method": method,
            "rounds": rounds,
        },
        "grid": grid,
    }
