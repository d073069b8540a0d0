"""The benchmark suite behind `medfed bench all` and `make bench`.

Every benchmark is declared once in the registry (`registry`: run, settings,
typed results, sections, verdicts) and writes one JSON document to
benchmarks/results/<name>.json (`document`, schema 1: machine, command,
settings, results); docs/BENCHMARKS.md is rendered from those documents only
(`medfed bench report`). Timings are
repeated and reported as median and spread, and every speed is also given as
a ratio to a baseline measured in the same process and run (aes-gcm for
encryption, a plain 64-channel 3x3 convolution for learned encryptors, a
plain PyTorch loop for the federation), so ratios hold on noisy machines.
"""

from benchmarks.common import RESULTS_DIR, load_results, machine_info, summarize
from benchmarks.document import BenchDocument, read_documents
from benchmarks.registry import get_benchmark, list_benchmarks
from benchmarks.suite import BENCHMARKS, run_benchmark, run_suite

__all__ = [
    "BENCHMARKS",
    "RESULTS_DIR",
    "BenchDocument",
    "get_benchmark",
    "list_benchmarks",
    "load_results",
    "machine_info",
    "read_documents",
    "run_benchmark",
    "run_suite",
    "summarize",
]
