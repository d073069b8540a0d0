"""`medfed bench all|report|NAME`: the benchmark suite (benchmarks); NAME is any
benchmark of the registry (benchmarks.registry: speed, rate-distortion, ...).

    medfed bench all [--quick] [--only a,b] [--results DIR] [--doc FILE]
    medfed bench report [--results DIR] [--doc FILE]
    medfed bench NAME [--quick]

Each benchmark writes DIR/NAME.json and re-renders the doc (docs/BENCHMARKS.md)
from all result files; `report` re-renders without measuring. Hooked into
`medfed bench` by `add_bench_commands(sub)` in simulations/commands/bench.py;
`python -m simulations.commands.bench_suite ...` runs it stand-alone.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _progress():
    from rich.console import Console
    from rich.markup import escape

    console = Console(stderr=True)
    start = time.perf_counter()
    return lambda msg: console.print(f"[dim]{time.perf_counter() - start:7.1f}s[/] {escape(msg)}")


def _render(args: argparse.Namespace) -> None:
    from benchmarks.report import render_report

    doc = render_report(Path(args.results), Path(args.doc), Path(args.doc).parent / "bench")
    print(f"wrote {doc}")


def run_all(args: argparse.Namespace) -> int:
    from benchmarks.registry import list_benchmarks
    from benchmarks.suite import run_suite

    names = None
    if args.only:
        valid = list_benchmarks()
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        bad = [n for n in names if n not in valid]
        if bad:
            raise ValueError(
                f"--only: unknown benchmark(s) {', '.join(bad)}; valid: {', '.join(valid)}"
            )
    paths = run_suite(names, quick=args.quick, results_dir=Path(args.results), progress=_progress())
    for p in paths:
        print(f"wrote {p}")
    _render(args)
    return 0


def run_one(args: argparse.Namespace) -> int:
    from benchmarks.suite import run_benchmark

    path = run_benchmark(
        args.benchmark_name, quick=args.quick, results_dir=Path(args.results), progress=_progress()
    )
    print(f"wrote {path}")
    _render(args)
    return 0


def run_report(args: argparse.Namespace) -> int:
    _render(args)
    return 0


def _common(parser: argparse.ArgumentParser, quick: bool = True) -> None:
    if quick:
        parser.add_argument(
            "--quick", action="store_true", help="reduced suite: fewer repeats, sizes and sites"
        )
    parser.add_argument(
        "--results",
        default="benchmarks/results",
        help="result JSON folder (default benchmarks/results)",
    )
    parser.add_argument(
        "--doc", default="docs/BENCHMARKS.md", help="rendered document (default docs/BENCHMARKS.md)"
    )


def add_bench_commands(sub: argparse._SubParsersAction) -> None:
    """Add the suite's sub-commands to `medfed bench`'s subparsers (names already
    taken there are left to their owner)."""
    taken = set(getattr(sub, "choices", {}) or {})
    if "all" not in taken:
        p = sub.add_parser(
            "all",
            help="run the whole benchmark suite and render docs/BENCHMARKS.md",
            description="Run every benchmark (or --only some), write benchmarks/results/*.json "
            "and re-render docs/BENCHMARKS.md.",
        )
        _common(p)
        p.add_argument("--only", default="", help="comma-separated benchmark names")
        p.set_defaults(func=run_all)
    if "report" not in taken:
        p = sub.add_parser(
            "report",
            help="re-render docs/BENCHMARKS.md from the result JSON (no measuring)",
            description="Render docs/BENCHMARKS.md and docs/bench/*.png from benchmarks/results/*.json.",
        )
        _common(p, quick=False)
        p.set_defaults(func=run_report)
    from benchmarks.registry import benchmarks

    for name, bench in benchmarks().items():
        if name in taken:
            continue
        p = sub.add_parser(
            name,
            help=bench.help,
            description=bench.help + "; writes its JSON and re-renders the doc.",
        )
        _common(p)
        p.set_defaults(func=run_one, benchmark_name=name)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (before the hook in `medfed bench` exists)."""
    from simulations.cli import UserError

    parser = argparse.ArgumentParser(prog="medfed bench", description="The benchmark suite.")
    add_bench_commands(parser.add_subparsers(dest="bench", metavar="BENCHMARK", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UserError, ValueError, FileNotFoundError) as exc:
        print(f"medfed: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
