"""`medfed bench ...`: benchmarks. Sub-commands register themselves in
`SUBCOMMANDS` (name -> register function); `encryption` is here, others
(data, federation, all) can be added the same way.

    medfed bench encryption --data DIR|phantom-xray|phantom-mri \
        --methods all|NAME,... [--images N] [--size S] [--out FILE.json]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.tables import fmt
from study.schema import dumps


def site_split(source: str, n_fit: int, n_test: int, size: int, seed: int):
    """(fit images, evaluated images, bits) of one site, disjoint by patient
    (`benchmarks.encryption.site_images`)."""
    from benchmarks.encryption import site_images

    return site_images(source, n_fit, n_test, size, seed)


# (column header, getter, digits)
COLUMNS: list[tuple[str, Callable[[dict], Any], int]] = [
    ("lossless", lambda m: m["lossless"], 0),
    ("PSNR dB", lambda m: m["fidelity"]["psnr"], 2),
    ("SSIM", lambda m: m["fidelity"]["ssim"], 4),
    ("kB/img", lambda m: m["size"]["bytes_per_image"] / 1000, 2),
    ("bpp", lambda m: m["size"]["bpp"], 2),
    ("x raw", lambda m: m["size"]["ratio_to_raw"], 3),
    ("entropy", lambda m: m["security"]["entropy"], 4),
    ("NPCR %", lambda m: m["security"]["npcr"], 2),
    ("UACI %", lambda m: m["security"]["uaci"], 2),
    ("NPCR key %", lambda m: m["security"]["npcr_key"], 2),
    ("UACI key %", lambda m: m["security"]["uaci_key"], 2),
    ("corr h", lambda m: m["security"]["corr_h"], 3),
    ("corr v", lambda m: m["security"]["corr_v"], 3),
    ("corr d", lambda m: m["security"]["corr_d"], 3),
    ("chi2", lambda m: m["security"]["chi2"], 0),
    ("det.", lambda m: m["security"]["deterministic"], 0),
    ("KPA PSNR", lambda m: m["attack"]["kpa_psnr"], 2),
    ("KPA SSIM", lambda m: m["attack"]["kpa_ssim"], 3),
    ("mean-guess PSNR", lambda m: m["attack"]["mean_guess_psnr"], 2),
    ("enc MB/s", lambda m: m["speed"]["encrypt_mb_s"], 2),
    ("dec MB/s", lambda m: m["speed"]["decrypt_mb_s"], 2),
    ("fit s", lambda m: m["speed"]["fit_s"], 1),
]


def markdown_table(doc: dict) -> str:
    """The benchmark document as a Markdown table, one row per method."""
    header = "| method | " + " | ".join(c[0] for c in COLUMNS) + " |"
    rule = "| --- | " + " | ".join("---" for _ in COLUMNS) + " |"
    rows = [header, rule]
    for name, entry in doc["methods"].items():
        cells = [fmt(get(entry), digits) for _, get, digits in COLUMNS]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def parse_method_option(item: str) -> tuple[str, str, Any]:
    """'METHOD.OPTION=VALUE' -> (method, option, value); VALUE is read as a TOML
    value (10, 2.5, true, "text") and taken as a plain string otherwise."""
    import tomllib

    target, sep, raw = item.partition("=")
    method, dot, option = target.strip().rpartition(".")
    if not sep or not dot or not method or not option:
        raise ValueError(
            f"--config {item!r}: expected METHOD.OPTION=VALUE, e.g. deepedn.preset=paper"
        )
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return method, option.strip(), value


def run_encryption(args: argparse.Namespace) -> int:
    from rich.console import Console

    from encryption.evaluate import evaluate, resolve_methods
    from encryption.registry import encryptor_class, get_encryptor

    console = Console(stderr=True)
    if args.images < 4:
        raise ValueError(f"--images must be at least 4, got {args.images}")
    if args.size < 16:
        raise ValueError(f"--size must be at least 16, got {args.size}")
    n_fit = args.fit_images
    if n_fit < 4:
        raise ValueError(f"--fit-images must be at least 4, got {n_fit}")
    names = resolve_methods(args.methods)
    console.print(
        f"[bold]bench encryption[/]: {args.images} images + {n_fit} fit images of {args.size} px "
        f"from {args.data}; methods: {', '.join(names)}"
    )
    configs: dict[str, dict[str, Any]] = {}
    if args.epochs is not None:
        configs = {n: {"epochs": args.epochs} for n in names if encryptor_class(n).learned}
    for method, option, value in (parse_method_option(item) for item in args.config):
        if method not in names:
            raise ValueError(
                f"--config {method}.{option}: {method!r} is not among the methods run "
                f"({', '.join(names)})"
            )
        configs.setdefault(method, {})[option] = value
    for method, config in configs.items():  # a bad option stops here, before any work
        try:
            get_encryptor(method, **config)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"--config for {method}: {exc}") from None
    # One site's images, disjoint by patient: the fitting set of learned
    # methods (and the attacker's leaked plaintexts), and the images evaluated.
    fit_images, images, bits = site_split(args.data, n_fit, args.images, args.size, args.seed)
    pictures: dict = {}
    doc = evaluate(
        names,
        images,
        bits,
        data=args.data,
        fit_images=fit_images,
        kpa_pairs=args.kpa_pairs,
        kpa_seconds=args.kpa_seconds,
        repeats=args.repeats,
        configs=configs,
        progress=lambda msg: console.print(f"  {msg}"),
        pictures=pictures,
    )
    doc["details"] = {
        "size": args.size,
        "bits": bits,
        "seed": args.seed,
        "fit_images": int(len(fit_images)),
        "kpa_seconds": args.kpa_seconds,
        "epochs": args.epochs,
        "configs": configs,
    }
    print(markdown_table(doc))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(dumps(doc, indent=2) + "\n")  # strict JSON (study.schema)
        console.print(f"wrote {out}")
        from benchmarks.pictures import method_pictures

        png = method_pictures(
            pictures, bits, out.with_suffix(".png"), f"{args.data}, {args.size} px, {bits}-bit"
        )
        console.print(f"wrote {png}")
    return 0


def register_encryption(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "encryption",
        help="compare encryption methods on the same images",
        description="Fidelity, size, security statistics, a known-plaintext attack and speed "
        "of each method; prints a Markdown table and writes JSON (schema 1).",
    )
    parser.add_argument(
        "--data",
        required=True,
        help="image source: a directory, phantom-xray, phantom-mri, "
        "pydicom-samples or nibabel-samples",
    )
    parser.add_argument("--methods", default="all", help="'all' or comma-separated method names")
    parser.add_argument("--images", type=int, default=32, help="images to evaluate (default 32)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument(
        "--fit-images",
        type=int,
        default=96,
        help="images of the same site (other patients) that learned methods fit on, until "
        "their convergence criterion or budget stops them, and whose pairs the attacker "
        "leaks (--kpa-pairs; default 96, about a demo site's shard)",
    )
    parser.add_argument(
        "--out", help="write the JSON document here, and the method pictures beside it (.png)"
    )
    parser.add_argument("--seed", type=int, default=0, help="image sampling seed (default 0)")
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="training epochs for learned methods (default: each method's own)",
    )
    parser.add_argument(
        "--kpa-seconds",
        type=float,
        default=30.0,
        help="training budget of the known-plaintext attack per method (default 30)",
    )
    parser.add_argument(
        "--kpa-pairs",
        type=int,
        default=None,
        help="leaked pairs for the attack (default: all fitting images)",
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="timing repeats, median taken (default 5)"
    )
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="METHOD.OPTION=VALUE",
        help="an option of one method, repeatable: e.g. deepedn.preset=paper "
        "deepedn.time_limit_s=300 learned-codec-aes.target_psnr_db=45",
    )
    parser.set_defaults(func=run_encryption)


# Other benchmark sub-commands (data, federation, all) add themselves here.
def register_suite(sub: argparse._SubParsersAction) -> None:
    """all, report, speed, rate-distortion, learning-curves, data, federation-*, bandwidth, gpu."""
    from simulations.commands.bench_suite import add_bench_commands

    add_bench_commands(sub)


SUBCOMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {
    "encryption": register_encryption,
    "suite": register_suite,
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="benchmarks (encryption, ...)",
        description="Benchmarks; see the sub-commands.",
    )
    sub = parser.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)
    for add in SUBCOMMANDS.values():
        add(sub)
