"""A study's images: readers (NIH ChestX-ray14, DICOM, BraTS), phantoms in
the same layouts, partitions into sites, the server's held-out patients,
and the caches. Sites load their shard through it, the server its held-out
set (server.holdout), the CLI inspects folders with it."""

from study.data.api import ensure_dataset, load_holdout, load_site, open_dataset
from study.data.home import data_home, study_data_root
from study.data.inspect import data_report, inspect_dataset
from study.data.sample import sample_images
from study.data.types import FINDINGS, MRI_REGIONS, ImageSet, SiteShard

__all__ = [
    "FINDINGS",
    "MRI_REGIONS",
    "ImageSet",
    "SiteShard",
    "data_report",
    "ensure_dataset",
    "inspect_dataset",
    "load_holdout",
    "load_site",
    "open_dataset",
    "sample_images",
    "data_home",
    "study_data_root",
]
