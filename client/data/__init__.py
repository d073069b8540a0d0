"""Hospital data: readers (NIH ChestX-ray14, DICOM, BraTS), phantoms, partitions, caches."""

from client.data.api import ensure_dataset, load_holdout, load_site, open_dataset
from client.data.inspect import data_report, inspect_dataset
from client.data.sample import sample_images
from client.data.types import FINDINGS, MRI_REGIONS, ImageSet, SiteShard

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
]
