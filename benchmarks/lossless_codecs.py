"""The measurement behind lossless-aes's codec rule (`medfed bench lossless-codecs`).

On every corpus and image size: the bytes and encode speed of each candidate
codec (each plane coded alone, as lossless-aes codes them), the rule's
statistics and pick (`encryption.methods.lossless_aes.codec_preference`),
and the lossless-aes container's bytes and encrypt speed against the smallest
candidate. The rule's thresholds were read off this table; re-running it on
other data says whether they still hold. The page section is
`lossless_codecs_section`; `candidate_bpp` also gives the rate-distortion
benchmark its per-corpus candidate sizes, so the 3 % target is checked there
on the same images as every method.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import Progress, quiet
from benchmarks.document import Docs, documents
from benchmarks.result_types import LosslessCodecsResults
from benchmarks.tables import fmt, reproduce_line, shows_results, table
from study.data.sample import SOURCES, sample_images

SIZES = (32, 64, 96, 128, 256)
WITHIN = 0.03  # the target: lossless-aes within 3 % of the smallest candidate


def candidate_bytes(images: np.ndarray, bits: int) -> dict[str, int]:
    """Total stream bytes of every lossless-aes candidate codec on (N, C, H, W)
    `images`, each plane coded alone."""
    from encryption.methods.lossless_aes import CANDIDATES

    planes = images.reshape(-1, *images.shape[2:])
    return {
        name: sum(len(codec.encode(plane, bits)) for plane in planes)
        for name, codec in CANDIDATES.items()
    }


def candidate_bpp(images: np.ndarray, bits: int) -> dict[str, float]:
    """Bits per pixel of every candidate codec (for the rate-distortion entry)."""
    pixels = images.size
    return {name: 8 * b / pixels for name, b in candidate_bytes(images, bits).items()}


def _median_s(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(images: np.ndarray, bits: int, repeats: int = 3) -> dict[str, Any]:
    """One (corpus, size) row: candidates' bytes and encode MB/s, the rule's
    statistics and pick, the container against the smallest candidate."""
    from encryption import get_encryptor
    from encryption.methods.lossless_aes import (
        CANDIDATES,
        codec_preference,
        plane_statistics,
    )

    planes = images.reshape(-1, *images.shape[2:])
    mb = images.nbytes / 1e6
    candidates = {}
    for name, codec in CANDIDATES.items():
        size = sum(len(codec.encode(p, bits)) for p in planes)
        seconds = _median_s(lambda c=codec: [c.encode(p, bits) for p in planes], repeats)
        candidates[name] = {"bytes": size, "encode_mb_s": mb / seconds}
    smallest = min(candidates, key=lambda n: candidates[n]["bytes"])
    least = candidates[smallest]["bytes"]
    occupancy, smoothness = plane_statistics(planes)
    pick = codec_preference(planes, bits)[0]
    blob = get_encryptor("lossless-aes").encrypt(images, bits)
    return {
        "shape": list(images.shape),
        "bits": bits,
        "occupancy": occupancy,
        "smoothness": smoothness,
        "pick": pick,
        "smallest": smallest,
        "candidates": candidates,
        "pick_ratio": candidates[pick]["bytes"] / least,
        "container_bytes": len(blob),
        "container_ratio": len(blob) / least,
    }


def run_lossless_codecs(
    *,
    sources: tuple[str, ...] = SOURCES,
    sizes: tuple[int, ...] = SIZES,
    images: int = 24,
    repeats: int = 3,
    progress: Progress = quiet,
) -> dict[str, Any]:
    """`measure` on every source and size: `images` images of each corpus of the
    rate-distortion benchmark (`sample_images(source, images, size, 0)`)."""
    from encryption.methods import lossless_aes as rule

    out: dict[str, Any] = {}
    for source in sources:
        out[source] = {}
        for size in sizes:
            try:
                x, bits = sample_images(source, images, size, 0)
            except Exception as exc:  # noqa: BLE001 - a source missing here is recorded
                out[source] = {"error": f"{type(exc).__name__}: {exc}"}
                progress(f"lossless-codecs: {source} unavailable: {exc}")
                break
            progress(f"lossless-codecs: {source} {size} px {x.shape} {bits}-bit")
            out[source][str(size)] = measure(x, bits, repeats)
    return {
        "images": images,
        "sizes": list(sizes),
        "within": WITHIN,
        "rule": {
            "large_plane_pixels": rule.LARGE_PLANE_PIXELS,
            "sparse_occupancy": rule.SPARSE_OCCUPANCY,
            "smooth_ratio": rule.SMOOTH_RATIO,
            "stat_planes": rule.STAT_PLANES,
        },
        "sources": out,
    }


def lossless_codecs_section(
    docs: Docs, add: Callable[[str], None], plot_dir: Path, rel: Path
) -> None:
    """The codec rule of lossless-aes and the measurement it was read from."""
    doc = documents(docs).get("lossless-codecs")
    add("## Lossless codec rule\n")
    if not shows_results(doc, "lossless-codecs", add):
        return
    r: LosslessCodecsResults = doc.result
    rule = r.rule
    add(
        "`lossless-aes` picks its codec per batch by a fixed rule "
        "(`encryption/methods/lossless_aes.py`), not by coding every image with every codec: "
        f"up to 8 bits, JPEG-LS on planes of at least {rule['large_plane_pixels']} pixels and "
        "JPEG XL effort 2 on smaller ones; deeper data: JPEG XL effort 2 when the histogram is "
        f"sparse (occupancy < {rule['sparse_occupancy']:g}: distinct values / min(range + 1, "
        "pixels)), reversible JPEG 2000 when the planes are smooth (smoothness < "
        f"{rule['smooth_ratio']:g}: mean |second difference| / mean |first difference|), "
        f"else JPEG XL effort 3; statistics from at most {rule['stat_planes']} planes. "
        f"Below: {r.images} images per corpus (the corpora of the rate-distortion section), every "
        "candidate codec on every plane; pick / smallest and container / smallest are byte "
        "ratios to the smallest candidate (the container adds its header, tag and the plane "
        "lengths); pick encode MB/s: the picked codec alone on these planes, raw pixel "
        "bytes, median of the repeats. `lossless-aes`'s own throughput (rule, codec and "
        "AES-GCM together) is measured once, in Encryption speed.\n"
    )
    rows, total, hits = [], 0, 0
    for source, sizes in r.sources.items():
        if "error" in sizes:
            rows.append([source, *[""] * 8, f"not available here: {sizes['error']}"])
            continue
        for size, m in sizes.items():
            total += 1
            hits += m["container_ratio"] <= 1 + r.within
            rows.append(
                [
                    source,
                    size,
                    str(m["bits"]),
                    fmt(m["occupancy"], 3),
                    fmt(m["smoothness"], 2),
                    f"`{m['pick']}`",
                    fmt(m["pick_ratio"], 3),
                    f"`{m['smallest']}`",
                    fmt(m["container_ratio"], 3),
                    fmt(m["candidates"][m["pick"]]["encode_mb_s"], 1),
                ]
            )
    header = [
        "corpus",
        "px",
        "bits",
        "occupancy",
        "smoothness",
        "rule's pick",
        "pick / smallest",
        "smallest candidate",
        "container / smallest",
        "pick encode MB/s",
    ]
    add(table(header, rows) + "\n")
    add(
        f"The container is within {r.within:.0%} of the smallest candidate in {hits} of "
        f"{total} corpus and size cells.\n"
    )
    add(reproduce_line(doc, "lossless-codecs") + "\n")
