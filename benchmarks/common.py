"""Shared helpers: repeat statistics, interleaved timing, machine description,
peak memory of a process tree, result documents."""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.document import SCHEMA as SCHEMA  # the result files' schema, re-exported
from benchmarks.document import BenchDocument, Machine, read_documents, write_document

Progress = Callable[[str], None]  # one line of progress, e.g. "speed: aes-gcm"


def quiet(_: str) -> None:
    """The progress callback that says nothing (every benchmark's default)."""


RESULTS_DIR = Path("benchmarks") / "results"
PACKAGES = (
    "torch",
    "flwr",
    "ray",
    "numpy",
    "cryptography",
    "imagecodecs",
    "pydicom",
    "nibabel",
    "scikit-image",
    "psutil",
)


def summarize(values: Iterable[float]) -> dict[str, Any]:
    """Median and spread of repeated measurements.

    `iqr` is the interquartile range (0 for fewer than 4 values, where the
    min..max range is the spread to read); NaNs are dropped and counted.
    """
    vals = [float(v) for v in values]
    finite = [v for v in vals if not math.isnan(v)]
    if not finite:
        return {"median": math.nan, "min": math.nan, "max": math.nan, "iqr": math.nan, "n": 0}
    q = statistics.quantiles(finite, n=4) if len(finite) >= 4 else [finite[0], 0, finite[0]]
    return {
        "median": statistics.median(finite),
        "min": min(finite),
        "max": max(finite),
        "iqr": (q[2] - q[0]) if len(finite) >= 4 else 0.0,
        "n": len(finite),
        "values": finite,
    }


def time_interleaved(
    fns: Mapping[str, Callable[[], Any]], repeats: int, warmup: int = 1, min_time_s: float = 0.0
) -> dict[str, list[float]]:
    """Seconds per call of each function, run round-robin `repeats` times.

    Round-robin (A B C A B C ...) rather than A A A B B B: a burst of load
    from other processes slows every contender of that repeat alike, so the
    per-repeat ratios stay meaningful on a shared machine. A function faster
    than `min_time_s` is called several times per sample (calibrated during
    warm-up) and the mean per call is recorded, so sub-millisecond calls are
    not timer noise.
    """
    inner = dict.fromkeys(fns, 1)
    for _ in range(warmup):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            took = time.perf_counter() - start
            if min_time_s > 0 and took < min_time_s:
                inner[name] = max(1, min(1000, math.ceil(min_time_s / max(took, 1e-6))))
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(max(1, repeats)):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(inner[name]):
                fn()
            times[name].append((time.perf_counter() - start) / inner[name])
    return times


def ratio_stats(times: Mapping[str, list[float]], baseline: str) -> dict[str, dict[str, Any]]:
    """Per-repeat speed ratio (baseline seconds / method seconds) of every entry."""
    base = times[baseline]
    return {
        name: summarize(b / t for b, t in zip(base, ts, strict=True) if t > 0)
        for name, ts in times.items()
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gb() -> float:
    try:
        import psutil

        return psutil.virtual_memory().total / 1e9
    except ImportError:
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
        except (ValueError, OSError):
            return math.nan


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_info() -> dict[str, Any]:
    """CPU, GPU, memory, Python and package versions of this machine."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    gpus: list[str] = []
    torch_threads = None
    try:
        import torch

        torch_threads = torch.get_num_threads()
        if torch.cuda.is_available():
            gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    return {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_gb": round(_memory_gb(), 1),
        "gpus": gpus,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch_threads": torch_threads,
        "packages": versions,
        "git_commit": _git_commit(),
    }


class PeakRss:
    """Peak of the summed resident memory of this process and all its
    descendants (Ray's raylet, GCS and workers included), sampled every
    `interval_s` seconds in a thread. Without psutil it falls back to
    getrusage's max RSS of this process and its waited-for children."""

    def __init__(self, interval_s: float = 0.25) -> None:
        self.interval_s = interval_s
        self.peak_bytes = 0
        self.samples = 0
        self.method = "psutil"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> int:
        import psutil

        me = psutil.Process()
        total = 0
        for proc in [me, *me.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return total

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._sample())
            self.samples += 1
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakRss:
        try:
            import psutil  # noqa: F401

            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        except ImportError:
            self.method = "getrusage"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        else:
            import resource

            kb = max(
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
            )
            self.peak_bytes = kb * 1024


def result_document(
    name: str, command: str, settings: Mapping[str, Any], results: Mapping[str, Any], seconds: float
) -> BenchDocument:
    """The document of one run of benchmark `name`, on this machine, now."""
    return BenchDocument(
        benchmark=name,
        command=command,
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        seconds=seconds,
        settings=dict(settings),
        results=dict(results),
        machine=Machine.from_json(machine_info(), source="this machine"),
    )


def write_result(doc: BenchDocument | Mapping[str, Any], results_dir: Path = RESULTS_DIR) -> Path:
    """Write results_dir/<benchmark>.json (strict JSON, study.schema: NaN -> null, an
    exact PSNR -> null with "exact": true). A raw mapping is checked as a document first."""
    if not isinstance(doc, BenchDocument):
        doc = BenchDocument.from_json(doc, source=f"the {doc.get('benchmark')!r} document")
    return write_document(doc, results_dir)


def load_results(results_dir: Path = RESULTS_DIR) -> dict[str, dict[str, Any]]:
    """benchmark name -> the document's JSON, for every results_dir/*.json (each
    checked as a bench document; `document.read_documents` gives them typed)."""
    return {name: doc.to_json() for name, doc in read_documents(results_dir).items()}
