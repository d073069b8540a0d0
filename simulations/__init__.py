"""medfed.simulations: study files, the `medfed` command line, Ray-backed
simulation runs, sweeps and benchmarks. Nothing imports this package."""
