"""The benchmark suite behind `medfed bench all` and `make bench`.

Every benchmark writes one JSON document to benchmarks/results/<name>.json
(schema 1: machine, command, settings, results) and docs/BENCHMARKS.md is
rendered from those documents only (`medfed bench report`). Timings are
repeated and reported as median and spread, and every speed is also given as
a ratio to a baseline measured in the same process and run (aes-gcm for
encryption, a plain 64-channel 3x3 convolution for learned encryptors, a
plain PyTorch loop for the federation), so ratios hold on noisy machines.
"""

from benchmarks.common import RESULTS_DIR, load_results, machine_info, summarize
from benchmarks.suite import BENCHMARKS, run_benchmark, run_suite

__all__ = [
    "BENCHMARKS",
    "RESULTS_DIR",
    "load_results",
    "machine_info",
    "run_benchmark",
    "run_suite",
    "summarize",
]
