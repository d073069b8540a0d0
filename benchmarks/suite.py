"""The suite: which benchmarks exist, their full and --quick settings, and
running them (each writes benchmarks/results/<name>.json)."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, Progress, quiet, result_document, summarize, write_result


def _methods() -> list[str]:
    from encryption.registry import list_encryptors

    return list_encryptors()


def _speed(s: dict, progress: Progress) -> dict:
    from benchmarks.encryption import run_speed

    return run_speed(_methods(), progress=progress, **s)


def _rate_distortion(s: dict, progress: Progress, results_dir: Path = RESULTS_DIR) -> dict:
    from benchmarks.encryption import run_rate_distortion

    # the method pictures go beside the result file (the report copies them)
    return run_rate_distortion(_methods(), progress=progress, pictures_dir=results_dir, **s)


def _learning_curves(s: dict, progress: Progress) -> dict:
    from benchmarks.learning_curves import run_learning_curves

    return run_learning_curves(progress=progress, **s)


def _lossless_codecs(s: dict, progress: Progress) -> dict:
    from benchmarks.lossless_codecs import run_lossless_codecs

    return run_lossless_codecs(progress=progress, **s)


def _data(s: dict, progress: Progress) -> dict:
    from benchmarks.data import run_data_bench

    runs = []
    for i in range(s["repeats"]):
        progress(f"data: run {i + 1}/{s['repeats']}")
        runs.append(run_data_bench(items=s["items"], size=s["size"], image_size=s["image_size"]))
    keys = [k for k, v in runs[0].items() if isinstance(v, float)]
    return {
        "metrics": {k: summarize(r[k] for r in runs) for k in keys},
        "counts": {k: v for k, v in runs[0].items() if not isinstance(v, float)},
    }


def _overhead(s: dict, progress: Progress) -> dict:
    from benchmarks.federation import run_overhead

    return run_overhead(progress=progress, **s)


def _scaling(s: dict, progress: Progress) -> dict:
    from benchmarks.federation import run_scaling

    return run_scaling(progress=progress, **s)


def _bandwidth(s: dict, progress: Progress) -> dict:
    from benchmarks.federation import run_bandwidth

    return run_bandwidth(progress=progress, **s)


def _leakage(s: dict, progress: Progress, results_dir: Path = RESULTS_DIR) -> dict:
    from benchmarks.leakage import run_leakage

    # the pictures of originals beside reconstructions go beside the result file
    return run_leakage(progress=progress, results_dir=results_dir, **s)


def _secagg(s: dict, progress: Progress) -> dict:
    from benchmarks.secagg import run_secagg_overhead

    return run_secagg_overhead(progress=progress, **s)


def _gpu(s: dict, progress: Progress) -> dict:
    """The GPU path: encryption speed on the GPU and a study whose sites share one
    GPU through fractional num-gpus. On a CPU-only machine: says so and skips."""
    import torch

    if not torch.cuda.is_available():
        progress("gpu: no CUDA device on this machine, skipped")
        return {"available": False, "reason": "no CUDA device (torch.cuda.is_available() is False)"}
    from benchmarks.encryption import run_speed
    from benchmarks.federation import run_overhead

    speed = run_speed(_methods(), device="cuda", progress=progress, **s["speed"])
    study = run_overhead(progress=progress, **s["overhead"])
    return {
        "available": True,
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "speed": speed,
        "overhead": study,
    }


def _deploy_round(s: dict, progress: Progress) -> dict:
    from benchmarks.deploy_round import run_deploy_round

    return run_deploy_round(progress=progress, **s)


# name -> (function, full settings, --quick settings)
BENCHMARKS: dict[str, tuple[Callable[[dict, Progress], dict], dict, dict]] = {
    "speed": (
        _speed,
        {"size": 128, "images": 32, "repeats": 7},
        {"size": 128, "images": 16, "repeats": 3},
    ),
    "rate-distortion": (
        _rate_distortion,
        {
            "size": 64,
            "images": 24,
            "epochs": None,
            # a demo site's shard; each fit 0.5 CPU s per image as in learning-curves
            "fit_images": 96,
            "kpa_seconds": 60.0,
            "security_sources": ("phantom-xray", "phantom-mri"),
            "variant_sources": ("phantom-xray",),
            "codec_targets": (30.0, 35.0, 45.0),
            "fit_time_limit_s": 48.0,
            "fit_clock": "cpu",
            "variants": {
                "deepedn (paper)": {
                    "method": "deepedn",
                    "config": {"preset": "paper", "time_limit_s": 300.0, "time_clock": "cpu"},
                }
            },
        },
        {
            "size": 64,
            "images": 12,
            "epochs": 5,
            "kpa_seconds": 5.0,
            "security_sources": ("phantom-xray", "phantom-mri"),
            "variant_sources": ("phantom-xray",),
            "codec_targets": (),
            "fit_time_limit_s": 10.0,
            "fit_clock": "cpu",
            "variants": {
                "deepedn (paper)": {
                    "method": "deepedn",
                    "config": {"preset": "paper", "time_limit_s": 10.0, "time_clock": "cpu"},
                }
            },
        },
    ),
    # Time budget: each fit on n images at most max(min_cpu_s, cpu_s_per_image * n)
    # CPU seconds (convergence ends some earlier; 24 and 96 images get the same
    # compute): 2 sources x 4 lossy variants x (48 + 48 + 192) s + the quick
    # invertible fits = at most 39 CPU minutes, in 2 worker processes about
    # 22 min on 2 idle cores with data and evaluation.
    "learning-curves": (
        _learning_curves,
        {
            "sources": ("phantom-xray", "phantom-mri"),
            "size": 64,
            "sizes": (24, 96, 384),
            "test_images": 64,
            "cpu_s_per_image": 0.5,
            "min_cpu_s": 48.0,
            "jobs": 2,
        },
        {
            "sources": ("phantom-xray", "phantom-mri"),
            "size": 32,
            "sizes": (16, 32),
            "test_images": 16,
            "cpu_s_per_image": 0.1,
            "min_cpu_s": 2.0,
            "jobs": 2,
        },
    ),
    "lossless-codecs": (
        _lossless_codecs,
        {"sizes": (32, 64, 96, 128, 256), "images": 24, "repeats": 3},
        {"sizes": (64, 128), "images": 12, "repeats": 1},
    ),
    "data": (
        _data,
        {"repeats": 5, "items": 32, "size": 256, "image_size": 64},
        {"repeats": 3, "items": 16, "size": 128, "image_size": 64},
    ),
    "federation-overhead": (
        _overhead,
        {"num_sites": 4, "num_rounds": 5, "patients": 160, "image_size": 64},
        {"num_sites": 4, "num_rounds": 3, "patients": 120, "image_size": 64},
    ),
    "federation-scaling": (
        _scaling,
        {"sites": (8, 32, 128, 512), "budget_s": 1100.0},
        {"sites": (8, 32, 128), "budget_s": 360.0},
    ),
    "bandwidth": (
        _bandwidth,
        {"image_sizes": (32, 64, 128)},
        {"image_sizes": (32, 64)},
    ),
    # Time budget: about 15 min on 2 idle cores (one torch thread): each optimisation
    # attack costs restarts x iterations = 200 simulated training steps per image (see
    # the timing table of its section); --quick about 2 min.
    "leakage": (
        _leakage,
        {
            "modalities": ("xray", "mri"),
            "images": 3,
            "mri_images": 2,
            "batch_sizes": (4,),
            "noise_multipliers": (0.001, 0.003, 0.01, 0.1, 1.0),
            "timing_sizes": (32, 64),
            "iterations": 100,
            "restarts": 2,
            # AUROC against epsilon: 7 demo studies at 32 px, 3 rounds (about 5 min)
            "auroc_studies": {
                "modes": {"local-dpsgd": (0.3, 1.0, 3.0), "client-fixed": (0.03, 0.1, 0.3)}
            },
        },
        {
            "modalities": ("xray", "mri"),
            "images": 1,
            "mri_images": 1,
            "batch_sizes": (),
            "noise_multipliers": (0.01, 1.0),
            "timing_sizes": (32,),
            "iterations": 20,
            "restarts": 1,
        },
    ),
    # Time budget: 4 simulated studies (plain and SecAgg+, 4 and 16 sites), about 6 min
    # on 2 idle cores (each Ray start-up about 15 s; 16 sites train 2 at a time).
    "secagg": (
        _secagg,
        {"sites": (4, 16), "num_rounds": 4, "patients_per_site": 20, "image_size": 32},
        {"sites": (4, 16), "num_rounds": 3, "patients_per_site": 10, "image_size": 16},
    ),
    "gpu": (
        _gpu,
        {
            "speed": {"size": 128, "images": 64, "repeats": 7},
            "overhead": {
                "num_sites": 4,
                "num_rounds": 4,
                "patients": 160,
                "image_size": 64,
                "num_gpus": 0.25,
            },
        },
        {
            "speed": {"size": 128, "images": 32, "repeats": 3},
            "overhead": {
                "num_sites": 4,
                "num_rounds": 3,
                "patients": 120,
                "image_size": 64,
                "num_gpus": 0.25,
            },
        },
    ),
    # Time budget: the demo study 3 ways (simulated, deployed with Flower's process per
    # message, deployed with medfed's executor), about 8 min on 2 cores under load.
    "deploy-round": (
        _deploy_round,
        {"study": "simulations/studies/demo.toml", "sites": 3, "repeats": 1},
        {
            "study": "simulations/studies/demo.toml",
            "sites": 3,
            "repeats": 1,
            "overrides": ("num-rounds=2",),
        },
    ),
}


def command_for(name: str, quick: bool) -> str:
    return f"medfed bench {name}" + (" --quick" if quick else "")


def run_benchmark(
    name: str,
    *,
    quick: bool = False,
    results_dir: Path = RESULTS_DIR,
    overrides: dict[str, Any] | None = None,
    progress: Progress = quiet,
) -> Path:
    """Run one benchmark and write its result document; returns the file."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; valid: {', '.join(BENCHMARKS)}")
    fn, full, reduced = BENCHMARKS[name]
    settings = dict(reduced if quick else full)
    settings.update(overrides or {})
    start = time.perf_counter()
    if "results_dir" in inspect.signature(fn).parameters:  # it writes files beside its JSON
        results = fn(settings, progress, results_dir=Path(results_dir))
    else:
        results = fn(settings, progress)
    seconds = time.perf_counter() - start
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}
    doc = result_document(
        name, command_for(name, quick), {"quick": quick, **settings}, results, seconds
    )
    return write_result(doc, results_dir)


def run_suite(
    names: list[str] | None = None,
    *,
    quick: bool = False,
    results_dir: Path = RESULTS_DIR,
    progress: Progress = quiet,
) -> list[Path]:
    """Run the benchmarks in order (all by default); a failing benchmark is
    recorded in its result file and the suite goes on."""
    paths = []
    for name in names or list(BENCHMARKS):
        progress(f"[{name}] starting")
        start = time.perf_counter()
        try:
            paths.append(
                run_benchmark(name, quick=quick, results_dir=results_dir, progress=progress)
            )
        except Exception as exc:  # noqa: BLE001 - recorded; other benchmarks still run
            doc = result_document(
                name,
                command_for(name, quick),
                {"quick": quick},
                {"error": f"{type(exc).__name__}: {exc}"},
                time.perf_counter() - start,
            )
            paths.append(write_result(doc, results_dir))
            progress(f"[{name}] FAILED: {type(exc).__name__}: {exc}")
            continue
        progress(f"[{name}] done in {time.perf_counter() - start:.0f} s")
    return paths
