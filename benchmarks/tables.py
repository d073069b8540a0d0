"""Cells and tables of docs/BENCHMARKS.md: number formatting, median-and-spread
cells, markdown tables and the per-section "reproduce" line."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from benchmarks.document import BenchDocument


def fmt(value: Any, digits: int = 2) -> str:
    """A table cell: yes/no, n/a for NaN/None, inf, fixed digits."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.{digits}f}"
    return str(value)


def med(stats: Any) -> float:
    """Median of a summarize() dict (or the number itself)."""
    if isinstance(stats, Mapping):
        return float(stats.get("median", math.nan))
    return math.nan if stats is None else float(stats)


def fmt_ratio(value: Any) -> str:
    """A speed ratio: 2 decimals from 0.01 up, '1/N' below (AES is N times faster)."""
    if value is None or not isinstance(value, (int, float)) or math.isnan(value):
        return "n/a"
    if value >= 0.01:
        return f"{value:.2f}"
    return f"1/{1 / value:,.0f}" if value > 0 else "0"


def ratio_spread(stats: Any) -> str:
    """'median (min..max, n=K)' of a summarize() dict of speed ratios (fmt_ratio cells)."""
    if not isinstance(stats, Mapping) or not stats.get("n"):
        return fmt_ratio(med(stats))
    return (
        f"{fmt_ratio(stats['median'])} ({fmt_ratio(stats['min'])}..{fmt_ratio(stats['max'])},"
        f" n={stats['n']})"
    )


def spread(stats: Any, digits: int = 2) -> str:
    """'median (min..max, n=K)' of a summarize() dict."""
    if not isinstance(stats, Mapping) or not stats.get("n"):
        return fmt(med(stats), digits)
    return (
        f"{fmt(stats['median'], digits)} ({fmt(stats['min'], digits)}..{fmt(stats['max'], digits)},"
        f" n={stats['n']})"
    )


def table(header: list[str], rows: list[list[Any]]) -> str:
    """A markdown table; non-string cells go through fmt. Rejects rows of the wrong width."""
    for r in rows:
        if len(r) != len(header):
            raise ValueError(f"table row has {len(r)} cells for {len(header)} columns: {r[:2]}")
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += [
        "| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in r) + " |" for r in rows
    ]
    return "\n".join(lines)


def reproduce_line(doc: BenchDocument | None, name: str) -> str:
    """The italic line under a section: the command and file behind its numbers."""
    if doc is None:
        return f"_Not measured yet: run `medfed bench {name}`._"
    return (
        f"_Reproduce: `{doc.command}` ({doc.created}, {doc.seconds:.0f} s; "
        f"file `benchmarks/results/{name}.json`)._"
    )


def failure_line(doc: BenchDocument | None) -> str | None:
    """The benchmark's error message, where its result file records a failure."""
    if doc is not None and doc.error is not None:
        return f"**This benchmark failed:** {doc.error}"
    return None


def shows_results(doc: BenchDocument | None, name: str, add: Callable[[str], None]) -> bool:
    """True when `doc` has results to show; otherwise adds the section's whole body
    (the failure, if one is recorded, then the reproduce line) and returns False."""
    if doc is None or failure_line(doc):
        add((failure_line(doc) or "") + "\n" + reproduce_line(doc, name) + "\n")
        return False
    return True
