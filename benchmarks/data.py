"""Data-path benchmark: decode throughput per format, cached path, PNG decode vs Pillow.

`run_data_bench()` returns a flat dict (numbers with units in their names);
`medfed bench` reports it.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from study.data.base import LoadOptions


def _timed(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _decode_rate(root: Path, image_size: int) -> tuple[float, int]:
    """Items per second through the reader's full load path (decode + resize), no cache."""
    from study.data.api import open_dataset

    reader, scan = open_dataset(root)
    options = LoadOptions(max_slices_per_subject=None)
    count = 0

    def run():
        nonlocal count
        count = 0
        for record in scan.records:
            count += len(reader.load(record, image_size=image_size, options=options)[0])

    seconds = _timed(run)
    return count / seconds, count


def _cache_ratio(root: Path, modality: str, image_size: int, cache_dir: Path) -> dict[str, float]:
    """Seconds for load_site with a cold cache (scan + decode) and a warm one."""
    from study.data.api import load_site

    kwargs = dict(
        image_size=image_size,
        partition_id=0,
        num_partitions=1,
        test_fraction=0.0,
        cache_dir=cache_dir,
        max_slices_per_subject=None,
    )
    cold = _timed(lambda: load_site(root, modality, **kwargs))
    warm = _timed(lambda: load_site(root, modality, **kwargs), repeat=3)
    return {"cold_s": cold, "warm_s": warm, "speedup": cold / warm}


def run_data_bench(
    *, items: int = 32, size: int = 256, image_size: int = 64, seed: int = 0
) -> dict:
    """Decode throughput (images/s) for PNG, DICOM and NIfTI slices; cached-path speedup
    (first decode time / cached time); 1024 x 1024 PNG decode time against Pillow's own."""
    from study.data.nih import read_png
    from study.data.phantom_mri import write_mri_phantoms
    from study.data.phantom_xray import Scanner, _anatomy, render_chest, write_xray_phantoms

    out: dict[str, float | int] = {
        "items": items,
        "source_size_px": size,
        "image_size_px": image_size,
    }
    with tempfile.TemporaryDirectory(prefix="medfed-data-bench-") as tmp:
        tmp = Path(tmp)
        png = write_xray_phantoms(tmp / "png", patients=items, size=size, institutions=2, seed=seed)
        dcm = write_xray_phantoms(
            tmp / "dcm", patients=items, size=size, institutions=2, seed=seed, image_format="dicom"
        )
        mri = write_mri_phantoms(
            tmp / "mri", subjects=max(2, items // 8), size=min(size, 128), institutions=2, seed=seed
        )
        for name, root, modality in (
            ("png", png, "xray"),
            ("dicom", dcm, "xray"),
            ("nifti", mri, "mri"),
        ):
            rate, count = _decode_rate(root, image_size)
            unit = "slices" if name == "nifti" else "images"
            out[f"{name}_decode_{unit}_per_s"] = round(rate, 1)
            out[f"{name}_decoded_{unit}"] = count
            ratio = _cache_ratio(root, modality, image_size, tmp / f"cache-{name}")
            out[f"{name}_first_load_s"] = round(ratio["cold_s"], 4)
            out[f"{name}_cached_load_s"] = round(ratio["warm_s"], 4)
            out[f"{name}_cached_speedup"] = round(ratio["speedup"], 1)
        # 1024 x 1024 PNG (the NIH size): our decoder against Pillow's decode of the same file
        scanner = Scanner("bench", 1.0, 0.0, 1.0, 0.01, 1.0, 8, False, 0, "DX", 1.0)
        rng = np.random.default_rng(seed)
        big = np.rint(render_chest(rng, 1024, _anatomy(rng), ("Nodule",), scanner) * 255).astype(
            np.uint8
        )
        path = tmp / "big.png"
        Image.fromarray(big).save(path)
        ours = _timed(lambda: read_png(path), repeat=5)
        pillow = _timed(lambda: np.asarray(Image.open(path).convert("L")), repeat=5)
        out["png1024_decode_ms"] = round(ours * 1000, 2)
        out["pillow1024_decode_ms"] = round(pillow * 1000, 2)
        out["png1024_ratio_to_pillow"] = round(ours / pillow, 2)
    return out
