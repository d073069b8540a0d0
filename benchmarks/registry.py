"""The registry of benchmarks: the one list the suite, the report and the CLI read.

Each `Benchmark` declares its name and one-line help (`medfed bench NAME`),
`run` (settings, progress -> its results), its full and `--quick` settings, its
typed results (benchmarks.result_types), the sections of docs/BENCHMARKS.md
that show it, and its verdicts (rows of the Targets table). Registration order
is the suite's order; sections and verdicts carry their place on the page, so
that a section shared by several benchmarks (Federation) is written once.

Nothing heavy is imported here: `run`, sections and verdicts import their
module when called, so `medfed --help` does not load torch or matplotlib.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import result_types as rt
from benchmarks.common import RESULTS_DIR, Progress, summarize
from benchmarks.document import BenchDocument, Results

Docs = Mapping[str, BenchDocument]
Row = list[str]


@dataclass(frozen=True)
class Page:
    """What a section writes with: the documents, `add` (appends one paragraph),
    the plot folder, its path relative to the page, and the result folder."""

    docs: Docs
    add: Callable[[str], None]
    plot_dir: Path
    rel: Path
    results_dir: Path


@dataclass(frozen=True)
class Section:
    """One section of docs/BENCHMARKS.md: `order` is its place on the page."""

    order: int
    name: str
    write: Callable[[Page], None]


@dataclass(frozen=True)
class Verdicts:
    """A benchmark's rows of the Targets table (target, measured, met?); `order`
    is their place in the table."""

    order: int
    rows: Callable[[Docs], list[Row]]


@dataclass(frozen=True)
class Benchmark:
    name: str
    help: str
    run: Callable[..., Mapping[str, Any]]  # (settings, progress[, results_dir=]) -> results
    full: Mapping[str, Any]
    quick: Mapping[str, Any]
    result: type[Results]
    sections: tuple[Section, ...] = ()
    verdicts: Verdicts | None = None

    def settings(self, quick: bool, overrides: Mapping[str, Any] | None = None) -> dict:
        return {**(self.quick if quick else self.full), **(overrides or {})}

    def measure(
        self, settings: dict[str, Any], progress: Progress, results_dir: Path
    ) -> dict[str, Any]:
        """Run it; a benchmark that writes files beside its JSON gets the folder."""
        if "results_dir" in inspect.signature(self.run).parameters:
            return dict(self.run(settings, progress, results_dir=Path(results_dir)))
        return dict(self.run(settings, progress))


_REGISTRY: dict[str, Benchmark] = {}


def register(benchmark: Benchmark) -> Benchmark:
    if benchmark.name in _REGISTRY:
        raise ValueError(f"benchmark {benchmark.name!r} is registered twice")
    if benchmark.result.benchmark != benchmark.name:
        raise ValueError(
            f"benchmark {benchmark.name!r}: its result type {benchmark.result.__name__} is "
            f"for {benchmark.result.benchmark!r}"
        )
    _REGISTRY[benchmark.name] = benchmark
    return benchmark


def list_benchmarks() -> list[str]:
    """The benchmark names in suite order."""
    return list(_REGISTRY)


def get_benchmark(name: str) -> Benchmark:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown benchmark {name!r}; valid: {', '.join(_REGISTRY)}") from None


def benchmarks() -> Mapping[str, Benchmark]:
    """name -> Benchmark, in suite order (read-only view)."""
    return dict(_REGISTRY)


def sections() -> list[Section]:
    """The sections of the page in page order, each once."""
    seen: dict[str, Section] = {}
    for bench in _REGISTRY.values():
        for section in bench.sections:
            seen.setdefault(section.name, section)
    return sorted(seen.values(), key=lambda s: s.order)


def verdicts() -> list[Verdicts]:
    """Every benchmark's verdicts in Targets-table order."""
    found = [b.verdicts for b in _REGISTRY.values() if b.verdicts is not None]
    return sorted(found, key=lambda v: v.order)


# -- lazy references: the module is imported when the function is first called -----------
def _function(module: str, name: str) -> Callable[..., Any]:
    return getattr(importlib.import_module(module), name)


def _section(order: int, module: str, name: str, *page_fields: str) -> Section:
    """A section function `name(docs, add, *page_fields)` of `module`."""

    def write(page: Page) -> None:
        _function(module, name)(page.docs, page.add, *(getattr(page, f) for f in page_fields))

    return Section(order, f"{module}.{name}", write)


def _verdicts(order: int, module: str, name: str) -> Verdicts:
    return Verdicts(order, lambda docs: _function(module, name)(docs))


# -- what each benchmark runs ----------------------------------------------------------
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


# -- the sections of docs/BENCHMARKS.md, in page order ------------------------------------
_ENC, _FED = "benchmarks.sections_encryption", "benchmarks.sections_federation"
SPEED = _section(10, _ENC, "speed_section", "plot_dir", "rel")
RATE_DISTORTION = _section(20, _ENC, "rate_distortion_section", "plot_dir", "rel")
LOSSLESS = _section(30, "benchmarks.lossless_codecs", "lossless_codecs_section", "plot_dir", "rel")
SECURITY = _section(40, _ENC, "security_section", "plot_dir", "rel", "results_dir")
LEARNING = _section(
    50, "benchmarks.sections_learning", "learning_curves_section", "plot_dir", "rel"
)
DATA = _section(60, _FED, "data_section")
FEDERATION = _section(70, _FED, "federation_section", "plot_dir", "rel")  # three benchmarks
DEPLOY_ROUND = _section(80, "benchmarks.deploy_round", "deploy_round_section")
LEAKAGE = _section(
    90, "benchmarks.sections_leakage", "leakage_section", "plot_dir", "rel", "results_dir"
)
SECAGG = _section(100, "benchmarks.secagg", "secagg_section")
GPU = _section(110, _FED, "gpu_section")

_V = "benchmarks.verdicts"


# -- the benchmarks, in suite order --------------------------------------------------------
register(
    Benchmark(
        "speed",
        "encryption throughput vs aes-gcm; learned FLOPs vs a plain convolution",
        _speed,
        {"size": 128, "images": 32, "repeats": 7},
        {"size": 128, "images": 16, "repeats": 3},
        rt.SpeedResults,
        (SPEED,),
        _verdicts(10, _V, "speed_targets"),
    )
)
register(
    Benchmark(
        "rate-distortion",
        "bpp vs PSNR/SSIM on phantoms and package samples; security and KPA",
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
        rt.RateDistortionResults,
        (RATE_DISTORTION, SECURITY),
        _verdicts(40, _V, "rate_distortion_targets"),
    )
)
# Time budget: each fit on n images at most max(min_cpu_s, cpu_s_per_image * n)
# CPU seconds (convergence ends some earlier; 24 and 96 images get the same
# compute): 2 sources x 4 lossy variants x (48 + 48 + 192) s + the quick
# invertible fits = at most 39 CPU minutes, in 2 worker processes about
# 22 min on 2 idle cores with data and evaluation.
register(
    Benchmark(
        "learning-curves",
        "learned methods: PSNR on fit and unseen images vs training images, epochs",
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
        rt.LearningCurvesResults,
        (LEARNING,),
        _verdicts(50, _V, "learning_curves_targets"),
    )
)
register(
    Benchmark(
        "lossless-codecs",
        "lossless-aes's codec rule: every candidate codec's bytes and speed per corpus",
        _lossless_codecs,
        {"sizes": (32, 64, 96, 128, 256), "images": 24, "repeats": 3},
        {"sizes": (64, 128), "images": 12, "repeats": 1},
        rt.LosslessCodecsResults,
        (LOSSLESS,),
    )
)
register(
    Benchmark(
        "data",
        "decode throughput of PNG, DICOM and NIfTI (benchmarks.data)",
        _data,
        {"repeats": 5, "items": 32, "size": 256, "image_size": 64},
        {"repeats": 3, "items": 16, "size": 128, "image_size": 64},
        rt.DataResults,
        (DATA,),
    )
)
register(
    Benchmark(
        "federation-overhead",
        "Flower/Ray study vs the same work in a plain PyTorch loop",
        _overhead,
        {"num_sites": 4, "num_rounds": 5, "patients": 160, "image_size": 64},
        {"num_sites": 4, "num_rounds": 3, "patients": 120, "image_size": 64},
        rt.OverheadResults,
        (FEDERATION,),
        _verdicts(20, _V, "overhead_targets"),
    )
)
register(
    Benchmark(
        "federation-scaling",
        "wall time and peak memory with 8..512 simulated sites",
        _scaling,
        {"sites": (8, 32, 128, 512), "budget_s": 1100.0},
        {"sites": (8, 32, 128), "budget_s": 360.0},
        rt.ScalingResults,
        (FEDERATION,),
        _verdicts(30, _V, "scaling_targets"),
    )
)
register(
    Benchmark(
        "bandwidth",
        "bytes and upload time per round: exchange none/archive/consortium x sizes",
        _bandwidth,
        {"image_sizes": (32, 64, 128)},
        {"image_sizes": (32, 64)},
        rt.BandwidthResults,
        (FEDERATION,),
    )
)
# Time budget: about 15 min on 2 idle cores (one torch thread): each optimisation
# attack costs restarts x iterations = 200 simulated training steps per image (see
# the timing table of its section); --quick about 2 min.
register(
    Benchmark(
        "leakage",
        "what the server reconstructs from one update, per defence, against epsilon",
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
        rt.LeakageResults,
        (LEAKAGE,),
    )
)
# Time budget: 4 simulated studies (plain and SecAgg+, 4 and 16 sites), about 6 min
# on 2 idle cores (each Ray start-up about 15 s; 16 sites train 2 at a time).
register(
    Benchmark(
        "secagg",
        "SecAgg+ vs plain FedAvg: bytes and seconds per round, 4 and 16 sites",
        _secagg,
        {"sites": (4, 16), "num_rounds": 4, "patients_per_site": 20, "image_size": 32},
        {"sites": (4, 16), "num_rounds": 3, "patients_per_site": 10, "image_size": 16},
        rt.SecAggResults,
        (SECAGG,),
    )
)
register(
    Benchmark(
        "gpu",
        "the GPU path (skipped, and said so, without CUDA)",
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
        rt.GpuResults,
        (GPU,),
    )
)
# Time budget: the demo study 3 ways (simulated, deployed with Flower's process per
# message, deployed with medfed's executor), about 8 min on 2 cores under load.
register(
    Benchmark(
        "deploy-round",
        "a deployed round vs the same round simulated (Flower's isolation, executor)",
        _deploy_round,
        {"study": "simulations/studies/demo.toml", "sites": 3, "repeats": 1},
        {
            "study": "simulations/studies/demo.toml",
            "sites": 3,
            "repeats": 1,
            "overrides": ("num-rounds=2",),
        },
        rt.DeployRoundResults,
        (DEPLOY_ROUND,),
        _verdicts(60, _V, "deploy_round_targets"),
    )
)
