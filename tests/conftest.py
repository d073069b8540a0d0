"""Shared fixtures: small synthetic image batches made in memory.

Real-layout phantoms written to disk live in study.data (see the data
tests); these are for unit tests of the encryption library, which must not
depend on the rest of the project.

The operator's checkpoint key store (server/keystore.py) is a temporary folder
for the whole session, set in the environment before any test or fixture runs
(subprocesses, Ray workers and deployed ServerApps inherit it): no test writes
into the real home directory.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import pytest

_KEY_HOME = tempfile.mkdtemp(prefix="medfed-test-keys-")
os.environ["MEDFED_KEY_HOME"] = _KEY_HOME


def pytest_unconfigure(config) -> None:
    shutil.rmtree(_KEY_HOME, ignore_errors=True)


def smooth_images(n: int, channels: int, size: int, bits: int, seed: int = 0) -> np.ndarray:
    """Anatomy-like images: a few blurred ellipses plus mild noise, (N, C, H, W)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, channels, size, size), dtype=np.float64)
    for i in range(n):
        for c in range(channels):
            img = np.zeros((size, size))
            for _ in range(4):
                cy, cx = rng.uniform(0.2, 0.8, 2)
                ry, rx = rng.uniform(0.1, 0.35, 2)
                img += rng.uniform(0.3, 1.0) * np.exp(
                    -(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
                )
            img = img / img.max() + rng.normal(0, 0.02, img.shape)
            out[i, c] = np.clip(img, 0, 1)
    maxv = 2**bits - 1
    dtype = np.uint8 if bits <= 8 else np.uint16
    return np.round(out * maxv).astype(dtype)


@pytest.fixture
def xray8() -> np.ndarray:
    return smooth_images(4, 1, 32, 8)


@pytest.fixture
def xray16() -> np.ndarray:
    return smooth_images(4, 1, 32, 12, seed=1)  # 12-bit data in uint16


@pytest.fixture
def mri4() -> np.ndarray:
    return smooth_images(3, 4, 32, 16, seed=2)
