"""The server's held-out test set: what the coordinator evaluates each
round's global model on, apart from the sites' own test sets.

API: a holdout source is any function `(study, cache_dir) -> Holdout`.
The ServerApp is built with one (`server.server_app.build_server_app(...,
holdout=...)`); the default, `study_holdout`, takes the patients of the
study's dataset that the partition gives to no site (its `data-dir`, or the
study's phantoms), at most `holdout-images` of them. A coordinator with a
test set of its own (a reading centre's labelled images) passes a source
that reads it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from study.config import Study


@dataclass(frozen=True)
class Holdout:
    images: np.ndarray  # (N, C, H, W) integers of `bits` bits
    targets: np.ndarray  # (N, findings) multi-hot, or (N, regions, H, W) masks
    bits: int


HoldoutSource = Callable[[Study, Path], Holdout]


def study_holdout(study: Study, cache_dir: Path) -> Holdout:
    """The held-out patients of the study's own dataset."""
    from study.data import load_holdout
    from study.data.home import study_data_root

    images = load_holdout(
        study_data_root(study),
        study.modality,
        image_size=study.image_size,
        max_images=study.holdout_images,
        seed=study.seed,
        cache_dir=cache_dir,
        max_slices_per_subject=study.max_slices_per_subject,
        max_image_pixels=study.max_image_pixels,
    )
    return Holdout(images.images, images.targets, images.bits)


def study_data_report(study: Study) -> dict:
    """What the study's data folder holds, in `medfed data inspect --json`'s
    shape: usable images, findings, and every skipped file with its reason.
    The header-level scan, the one every site runs before decoding."""
    from study.data import data_report, study_data_root
    from study.data.base import LoadOptions

    options = LoadOptions(
        max_slices_per_subject=study.max_slices_per_subject,
        max_image_pixels=study.max_image_pixels,
    )
    return data_report(study_data_root(study), study.modality, options, deep=False)
