"""`medfed sweep SWEEP.toml [--out DIR]`: a grid of studies, one comparison."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="run a grid of studies and compare them",
        description="Run every combination of a sweep file's [grid] as one study and "
        "write comparison.json, comparison.md and plots.",
    )
    p.add_argument("sweep", help="sweep file, e.g. simulations/studies/bandwidth.toml")
    p.add_argument("--out", help="output folder (default: the sweep's out-dir)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from simulations.supervise import run_study_process
    from simulations.sweep import (
        Sweep,
        comparison_row,
        point_columns,
        trade_off_table,
        write_comparison,
    )

    sweep = Sweep.from_toml(args.sweep, args.out)  # StudyError is a ValueError
    console = Console(stderr=True)
    points = sweep.points()
    rows = []
    for i, point in enumerate(points, 1):
        study = sweep.study(point)
        console.print(f"[bold]{sweep.name}[/] {i}/{len(points)}: {Sweep.label(point)}")
        result = run_study_process(study)
        row = comparison_row(point_columns(sweep.keys, point, study), study, result.summary)
        if sweep.privacy is not None:
            from simulations.privacy_probe import probe_study

            console.print(f"[bold]{sweep.name}[/] {i}/{len(points)}: attacking its outputs")
            row.update(probe_study(study, sweep.privacy, say=console.print))
        rows.append(row)
        write_comparison(sweep, rows)  # partial results survive an interrupted sweep
    path = write_comparison(sweep, rows)
    table = Table(title=f"{sweep.name}")
    trade = trade_off_table(sweep, rows)
    if trade is not None:  # the privacy sweep: its one table (every column is in the files)
        header, body = trade
        for c in header:
            table.add_column(c, justify="right")
        for cells in body:
            table.add_row(*cells)
    else:
        cols = [c for c in rows[0] if c not in ("status",)]
        for c in cols:
            table.add_column(c, justify="right")
        for row in rows:
            table.add_row(
                *[f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]) for c in cols]
            )
    Console().print(table)
    console.print(f"comparison: {path}")
    return 0
