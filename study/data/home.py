"""Where a study's images come from: its `data-dir`, or phantoms generated
once under the data home (`$MEDFED_DATA_HOME`, default ./data) and shared by
every study with the same phantom settings."""

from __future__ import annotations

import os
from pathlib import Path

from study.config import Study


def data_home() -> Path:
    """Where generated phantoms are kept (shared by studies with equal settings)."""
    return Path(os.environ.get("MEDFED_DATA_HOME", "data")).absolute()


def study_data_root(study: Study) -> Path:
    """The study's dataset folder: its `data-dir`, or phantoms generated once
    (process-safe) under data_home() with the study's phantom settings."""
    from study.data import ensure_dataset

    return ensure_dataset(
        study.modality,
        study.data_dir or None,
        cache_root=data_home(),
        patients=study.phantom_patients,
        institutions=study.num_sites,
        seed=study.seed,
        size=study.phantom_size,
    )
