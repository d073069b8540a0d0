"""`inspect_dataset`: what a dataset folder holds, as the fixed JSON object of `medfed data inspect`."""

from __future__ import annotations

from collections import Counter

from client.data.types import FINDINGS, MRI_REGIONS, NO_FINDING, PathLike, Scan


def summarise(scan: Scan) -> dict:
    """{"format", "images", "subjects", "labels", "partitions", "skipped"} for a scan."""
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
    }


def inspect_dataset(root: PathLike, *, strict: bool = False) -> dict:
    """Detect the layout of root, decode every file, and report what was found.

    Nothing is dropped silently: every unusable file is in "skipped" with its
    reason. strict=True turns any skip into a ValueError.
    """
    from client.data.api import open_dataset

    _, scan = open_dataset(root, deep=True)
    report = summarise(scan)
    if strict and report["skipped"]:
        first = report["skipped"][0]
        raise ValueError(
            f"{root}: {len(report['skipped'])} file(s) skipped (strict), "
            f"first: {first['path']}: {first['reason']}"
        )
    return report
