"""What a dataset folder holds, as the fixed JSON object of `medfed data inspect`.

`inspect_dataset` is the command's function; `data_report` is the same object
for a study's run folder (data-report.json), so a study records which input
files it skipped and why.
"""

from __future__ import annotations

from collections import Counter

from study.data.base import LoadOptions
from study.data.safety import DEFAULT_MAX_IMAGE_PIXELS
from study.data.types import FINDINGS, MRI_REGIONS, NO_FINDING, PathLike, Scan


def summarise(scan: Scan) -> dict:
    """{"format", "images", "subjects", "labels", "partitions", "skipped", "archives"}."""
    records = scan.records
    labels: dict[str, int]
    if scan.modality == "xray":
        labelled = [r for r in records if r.meta.get("labelled", True)]
        counts = Counter(label for r in labelled for label in r.labels)
        labels = {name: counts.get(name, 0) for name in FINDINGS}
        labels[NO_FINDING] = sum(1 for r in labelled if not r.labels)
    else:
        counts = Counter(label for r in records for label in r.labels)
        labels = {name: counts.get(name, 0) for name in MRI_REGIONS}
    partitions = None
    if scan.partitions:
        partitions = dict(
            Counter(
                str(scan.partitions[r.patient_id])
                for r in records
                if r.patient_id in scan.partitions
            )
        )
    elif any(r.institution for r in records):
        partitions = dict(Counter(r.institution or "unknown" for r in records))
    if partitions is not None:
        partitions = dict(sorted(partitions.items()))
    return {
        "format": scan.format,
        "images": len(records),
        "subjects": len({r.patient_id for r in records}),
        "labels": labels,
        "partitions": partitions,
        "skipped": [{"path": s.path, "reason": s.reason} for s in scan.skipped],
        # NIH ChestX-ray14 with its full CSV: images listed/found/missing per archive part
        "archives": scan.archives,
    }


def inspect_dataset(
    root: PathLike,
    *,
    strict: bool = False,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    deep: bool = True,
) -> dict:
    """Detect the layout of root, decode every file, and report what was found.

    The scan is the one a study's sites run (study.data.scan.open_dataset),
    with the same rules: only regular files inside root are opened, and a file
    whose header claims more than max_image_pixels (the study key
    `max-image-pixels`, default 2**27) is skipped before decoding. deep=True
    also decodes every image, as a study does when it loads them, so the images
    counted here are the ones a study trains on. Nothing is dropped silently:
    every unusable file is in "skipped" with its reason. strict=True turns any
    skip into a ValueError.
    """
    from study.data.scan import open_dataset

    options = LoadOptions(max_image_pixels=max_image_pixels)
    _, scan = open_dataset(root, deep=deep, options=options)
    report = summarise(scan)
    if strict and report["skipped"]:
        first = report["skipped"][0]
        raise ValueError(
            f"{root}: {len(report['skipped'])} file(s) skipped (strict), "
            f"first: {first['path']}: {first['reason']}"
        )
    return report


def data_report(
    root: PathLike,
    modality: str,
    options: LoadOptions | None = None,
    *,
    deep: bool = True,
    cache_dir: PathLike | None = None,
) -> dict:
    """The `medfed data inspect --json` object for a study's data folder (its data-report.json).

    Same scan, same rules and same shape as `medfed data inspect`: options
    carries the study's max-image-pixels. deep=True decodes every image (what
    inspect does; what a study's sites do to their own images); deep=False
    stops at headers, which is exactly the scan each site runs before
    decoding. A folder that holds another modality's layout is a ValueError.
    """
    from study.data.scan import open_dataset

    reader, scan = open_dataset(
        root, deep=deep, options=options or LoadOptions(), cache_dir=cache_dir
    )
    if reader.modality != modality:
        raise ValueError(f"{root} holds {reader.format} data ({reader.modality}), not {modality}")
    return summarise(scan)
