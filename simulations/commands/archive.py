"""`medfed archive open RUN --identity KEYFILE [--out DIR]`: read what you were granted."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "archive",
        help="read a study's encrypted archive with a granted identity",
        description="The server's archive holds every container and grant it received, "
        "sealed. An identity (the auditor, or a site) opens the grants made to it and "
        "decrypts exactly those containers.",
    )
    asub = p.add_subparsers(dest="archive_command", metavar="ACTION", required=True)
    op = asub.add_parser("open", help="decrypt the containers an identity was granted")
    op.add_argument("run", help="the study's run folder (with archive/ and config.json)")
    op.add_argument(
        "--identity",
        required=True,
        metavar="KEYFILE",
        help="the identity's private key (identity.key; its certificate and the study CA "
        "certificate beside it)",
    )
    op.add_argument("--out", help="write the images here (<site>/round-<r>.npz and .png)")
    op.set_defaults(func=main_open)


def main_open(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from simulations.archive_reader import open_archive, write_opened

    opened = open_archive(args.run, args.identity)
    table = Table(title=f"archive of {args.run}, read as {opened.identity}")
    for col in ("site", "rounds decrypted", "images", "rounds not granted"):
        table.add_column(col, justify="right")
    sites = sorted({s for s, _ in opened.decrypted} | set(opened.unreadable))
    for site in sites:
        rounds = sorted(r for s, r in opened.decrypted if s == site)
        images = sum(len(opened.decrypted[(site, r)]) for r in rounds)
        missing = sorted(opened.unreadable.get(site, []))
        table.add_row(
            site,
            ",".join(map(str, rounds)) or "-",
            str(images),
            ",".join(map(str, missing)) or "-",
        )
    Console().print(table)
    if opened.skipped:  # a damaged or hostile entry is passed over, the rest is opened
        err = Console(stderr=True, highlight=False)
        err.print(f"{len(opened.skipped)} archive entries skipped:", markup=False)
        for reason in opened.skipped:
            err.print(f"  {reason}", markup=False)
    if args.out:
        written = write_opened(opened, args.out)
        Console(stderr=True).print(f"{len(written)} containers decrypted into {args.out}")
    return 0
