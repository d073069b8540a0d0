"""`medfed data synth xray|mri ...` and `medfed data inspect DIR [--json] [--strict] ...`."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data",
        help="make phantom datasets and inspect dataset folders",
        description="Hospital data: write realistic phantoms in the NIH ChestX-ray14, DICOM and "
        "BraTS layouts, and inspect a dataset folder.",
    )
    data_sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    synth = data_sub.add_parser("synth", help="write a phantom dataset")
    kinds = synth.add_subparsers(dest="synth_kind", metavar="KIND", required=True)
    xray = kinds.add_parser(
        "xray", help="chest X-ray phantoms (NIH layout PNG + CSV, or DICOM CR/DX)"
    )
    xray.add_argument("--out", required=True, help="output folder (new or empty)")
    xray.add_argument("--patients", type=int, default=240, help="number of patients (default 240)")
    xray.add_argument("--format", dest="image_format", choices=("png", "dicom"), default="png")
    xray.add_argument(
        "--size", type=int, default=256, help="image size in pixels (default 256; NIH is 1024)"
    )
    xray.add_argument(
        "--institutions", type=int, default=4, help="number of institutions (default 4)"
    )
    xray.add_argument("--seed", type=int, default=0)
    xray.add_argument(
        "--metadata",
        choices=("nih", "synthetic"),
        default=None,
        help="nih: patients and images drawn from NIH ChestX-ray14's real CSV (findings, "
        "patient, age, sex, view, follow-up; needs medfed[nih]); synthetic: invented "
        "patients with five findings (default: nih when torchxrayvision is installed)",
    )
    xray.set_defaults(func=synth_xray)
    mri = kinds.add_parser("mri", help="brain MRI phantoms (BraTS-2021 NIfTI + partitioning.csv)")
    mri.add_argument("--out", required=True, help="output folder (new or empty)")
    mri.add_argument("--subjects", type=int, default=24, help="number of subjects (default 24)")
    mri.add_argument("--size", type=int, default=128, help="in-plane size in voxels (default 128)")
    mri.add_argument(
        "--institutions", type=int, default=4, help="number of institutions (default 4)"
    )
    mri.add_argument("--seed", type=int, default=0)
    mri.set_defaults(func=synth_mri)

    insp = data_sub.add_parser("inspect", help="detect a dataset's layout and report what it holds")
    insp.add_argument("dir", help="dataset root folder")
    insp.add_argument("--json", action="store_true", help="print the report as one JSON object")
    insp.add_argument("--strict", action="store_true", help="any skipped file is an error (exit 2)")
    insp.add_argument(
        "--max-image-pixels",
        type=_positive_int,
        default=None,
        metavar="N",
        # the default is study.data.safety.DEFAULT_MAX_IMAGE_PIXELS (not imported here:
        # building the parser must not load the data stack); a test checks they agree
        help="largest image decoded, pixels of an x-ray or voxels of an MRI volume, checked "
        "against each file's header before decoding (the study key max-image-pixels; "
        "default 134217728 = 2^27)",
    )
    insp.set_defaults(func=inspect_command)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _check_out(out: str) -> Path:
    path = Path(out)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ValueError(f"--out {path} exists and is not an empty folder")
    return path


def _progress(console: Console, label: str):
    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    task = progress.add_task(label, total=None)
    return progress, lambda done, total: progress.update(task, completed=done, total=total)


def synth_xray(args: argparse.Namespace) -> int:
    from study.data.nih_metadata import INSTALL_HINT, resolve_metadata
    from study.data.phantom_xray import write_xray_phantoms

    console = Console(stderr=True)
    metadata = resolve_metadata(args.metadata or "auto")
    if args.metadata is None and metadata == "synthetic":
        console.print(
            "NIH ChestX-ray14 metadata not installed: writing invented labels "
            f"(--metadata synthetic). For the real metadata: {INSTALL_HINT}",
            markup=False,
            soft_wrap=True,
        )
    out = _check_out(args.out)
    progress, update = _progress(console, "x-ray phantoms")
    with progress:
        write_xray_phantoms(
            out,
            patients=args.patients,
            image_format=args.image_format,
            size=args.size,
            institutions=args.institutions,
            seed=args.seed,
            metadata=metadata,
            progress=update,
        )
    images = sum(1 for p in out.rglob("*") if p.suffix in (".png", ".dcm"))
    console.print(
        f"wrote {args.patients} patients, {images} images ({args.image_format}, {args.size} px, "
        f"{metadata} metadata) to {out}",
        soft_wrap=True,
    )
    return 0


def synth_mri(args: argparse.Namespace) -> int:
    from study.data.phantom_mri import write_mri_phantoms

    out = _check_out(args.out)
    console = Console(stderr=True)
    progress, update = _progress(console, "MRI phantoms")
    with progress:
        write_mri_phantoms(
            out,
            subjects=args.subjects,
            size=args.size,
            institutions=args.institutions,
            seed=args.seed,
            progress=update,
        )
    console.print(f"wrote {args.subjects} BraTS-2021 subjects ({args.size} px) to {out}")
    return 0


def inspect_command(args: argparse.Namespace) -> int:
    from study.data.inspect import inspect_dataset
    from study.schema import dumps

    limit = {} if args.max_image_pixels is None else {"max_image_pixels": args.max_image_pixels}
    report = inspect_dataset(args.dir, **limit)
    if args.json:
        print(dumps(report, indent=2))  # strict JSON (study.schema)
    else:
        _print_report(report)
    if args.strict and report["skipped"]:
        first = report["skipped"][0]
        raise ValueError(
            f"{args.dir}: {len(report['skipped'])} file(s) skipped (--strict), first: {first['path']}: {first['reason']}"
        )
    return 0


SKIPPED_SHOWN = 20  # the text report lists this many skipped entries; --json lists all


def _print_report(report: dict) -> None:
    console = Console()
    console.print(
        f"[bold]{report['format']}[/]: {report['images']} images, {report['subjects']} subjects, "
        f"{len(report['skipped'])} skipped"
    )
    table = Table("label", "count")
    for name, count in report["labels"].items():
        table.add_row(name, str(count))
    console.print(table)
    if report["partitions"]:
        parts = Table("partition", "images")
        for name, count in report["partitions"].items():
            parts.add_row(name, str(count))
        console.print(parts)
    if report.get("archives"):
        archives = Table("NIH archive", "images", "found", "missing")
        for name, entry in report["archives"].items():
            archives.add_row(
                f"{name}.tar.gz", str(entry["images"]), str(entry["found"]), str(entry["missing"])
            )
        console.print(archives)
    if report["skipped"]:
        from study.data.nih import MISSING_REASON

        # problems first; absent images (summed up by archive above) after them
        items = sorted(report["skipped"], key=lambda item: MISSING_REASON in item["reason"])
        skipped = Table("skipped", "reason")
        for item in items[:SKIPPED_SHOWN]:
            skipped.add_row(item["path"], item["reason"])
        console.print(skipped)
        if len(items) > SKIPPED_SHOWN:
            console.print(
                f"... and {len(items) - SKIPPED_SHOWN} more skipped; --json lists every one"
            )
