"""The suite: running the registered benchmarks (benchmarks.registry: their
names, full and --quick settings, run functions); each writes
benchmarks/results/<name>.json."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, Progress, quiet, result_document, write_result
from benchmarks.registry import benchmarks, get_benchmark, list_benchmarks

# name -> Benchmark, in suite order (the registry's)
BENCHMARKS = benchmarks()


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
    """Run one benchmark and write its result document; returns the file. (Its
    results are typed when read, `BenchDocument.result`: a run is never lost to a
    field its benchmark added without declaring it in benchmarks.result_types.)"""
    bench = get_benchmark(name)
    settings = bench.settings(quick, overrides)
    start = time.perf_counter()
    results = bench.measure(settings, progress, Path(results_dir))
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
    for name in names or list_benchmarks():
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
