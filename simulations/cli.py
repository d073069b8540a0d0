"""The `medfed` command line.

Each command lives in its own module under simulations/commands with a
`register(subparsers)` function that adds its parser and sets `func`.
`main(argv)` returns the exit status, so tests call it directly.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMAND_MODULES = (
    "simulations.commands.run",
    "simulations.commands.sweep",
    "simulations.commands.data",
    "simulations.commands.methods",
    "simulations.commands.bench",
    "simulations.commands.deploy",
    "simulations.commands.archive",
    "simulations.commands.attack",
)


class UserError(Exception):
    """A problem with the user's input: printed as one clear line, exit 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medfed",
        description="Federated medical imaging studies in which no readable image leaves a site.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UserError, ValueError, KeyError, FileNotFoundError, PermissionError) as exc:
        # Bad input of any kind is one clear line; MEDFED_DEBUG=1 shows the trace.
        if os.environ.get("MEDFED_DEBUG"):
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"medfed: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medfed: interrupted", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        # a study that failed or stopped (simulations.supervise.StudyFailed): one line
        if os.environ.get("MEDFED_DEBUG") or type(exc).__name__ != "StudyFailed":
            raise
        print(f"medfed: study failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    # `python -m simulations.cli`: import main from the module so that commands'
    # UserError (simulations.cli.UserError) is the class main() catches
    from simulations.cli import main as _main

    sys.exit(_main())
