"""`medfed methods [--json]`: the registered encryption methods and their flags."""

from __future__ import annotations

import argparse
import json
import sys


def method_table() -> list[dict]:
    """One row per registered method: name, flags, first docstring line."""
    from encryption.registry import encryptor_class, list_encryptors

    rows = []
    for name in list_encryptors():
        cls = encryptor_class(name)
        # The class docstring, else the module's (methods document either).
        doc = (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip().splitlines()
        rows.append(
            {
                "name": name,
                "lossless": bool(cls.lossless),
                "deterministic": bool(cls.deterministic),
                "learned": bool(cls.learned),
                "description": doc[0].strip() if doc else "",
            }
        )
    return rows


def run(args: argparse.Namespace) -> int:
    rows = method_table()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="medfed encryption methods")
    for column in ("name", "lossless", "deterministic", "learned", "description"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["name"],
            *("yes" if row[k] else "no" for k in ("lossless", "deterministic", "learned")),
            row["description"],
        )
    Console().print(table)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "methods",
        help="list the encryption methods",
        description="List the registered encryption methods and their flags.",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)
