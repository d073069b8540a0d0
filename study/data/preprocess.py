"""Preprocessing shared by every reader: resizing at the original bit depth, labels.

Resizing goes through Pillow's float ("F") mode, which supports antialiased
filters for any bit depth, so 12- and 16-bit data are never squeezed to 8 bits.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from study.data.types import FINDINGS, NO_FINDING, dtype_for_bits

_FINDING_INDEX = {name: i for i, name in enumerate(FINDINGS)}


def resize_plane(plane: np.ndarray, size: int, *, bits: int, nearest: bool = False) -> np.ndarray:
    """Resize one 2D plane to size x size, keeping its dtype and bit depth."""
    if plane.ndim != 2:
        raise ValueError(f"expected a 2D plane, got shape {plane.shape}")
    dtype = dtype_for_bits(bits) if not nearest else plane.dtype
    if plane.shape == (size, size):
        return plane.astype(dtype, copy=False)
    if nearest:
        image = Image.fromarray(plane.astype(np.uint8, copy=False))
        return np.asarray(image.resize((size, size), Image.Resampling.NEAREST)).astype(dtype)
    if plane.dtype == np.uint8:
        # 8-bit has Pillow's fast integer path.
        image = Image.fromarray(plane)
        return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR))
    image = Image.fromarray(plane.astype(np.float32, copy=False), mode="F")
    out = np.asarray(image.resize((size, size), Image.Resampling.BILINEAR))
    return np.clip(np.rint(out), 0, 2**bits - 1).astype(dtype)


def resize_stack(stack: np.ndarray, size: int, *, bits: int, nearest: bool = False) -> np.ndarray:
    """Resize (..., H, W) to (..., size, size) plane by plane."""
    lead = stack.shape[:-2]
    flat = stack.reshape((-1, *stack.shape[-2:]))
    out = [resize_plane(p, size, bits=bits, nearest=nearest) for p in flat]
    dtype = out[0].dtype if out else dtype_for_bits(bits)
    return np.stack(out).reshape((*lead, size, size)).astype(dtype, copy=False)


def parse_findings(text: str, *, source: str = "labels") -> tuple[str, ...]:
    """NIH label text ("A|B" or "No Finding") -> findings in FINDINGS order.

    An unknown finding name is an error naming it and the valid names.
    """
    names = [t.strip() for t in (text or "").split("|") if t.strip()]
    if not names:
        raise ValueError(f"{source}: empty finding labels (use {NO_FINDING!r})")
    if names == [NO_FINDING]:
        return ()
    unknown = [n for n in names if n not in _FINDING_INDEX]
    if unknown:
        raise ValueError(
            f"{source}: unknown finding(s) {unknown}; valid: {', '.join(FINDINGS)} or {NO_FINDING!r}"
        )
    return tuple(sorted(set(names), key=_FINDING_INDEX.__getitem__))


def multi_hot(labels: tuple[str, ...]) -> np.ndarray:
    """Findings -> (14,) float32 multi-hot in FINDINGS order."""
    out = np.zeros(len(FINDINGS), np.float32)
    for name in labels:
        out[_FINDING_INDEX[name]] = 1.0
    return out


def brats_regions(seg: np.ndarray) -> np.ndarray:
    """BraTS labels (0, 1, 2, 4) -> (3, ...) uint8 masks ET, TC, WT.

    ET = 4, TC = 1 or 4, WT = 1, 2 or 4.
    """
    seg = np.asarray(seg)
    et = seg == 4
    tc = et | (seg == 1)
    wt = tc | (seg == 2)
    return np.stack([et, tc, wt]).astype(np.uint8)


def normalise_volume(volume: np.ndarray, bits: int) -> np.ndarray:
    """Per-volume intensity normalisation to [0, 2^bits - 1].

    The 0.5th..99.5th percentile of non-zero (brain) voxels maps to the full
    range; background stays 0, so skull-stripped data keeps its mask.
    """
    vol = np.asarray(volume, dtype=np.float32)
    brain = vol[vol != 0]
    maxv = 2**bits - 1
    if brain.size == 0:
        return np.zeros(vol.shape, dtype_for_bits(bits))
    lo, hi = np.percentile(brain, [0.5, 99.5])
    if hi <= lo:
        hi = lo + 1.0
    out = (vol - lo) / (hi - lo) * (maxv - 1) + 1  # brain >= 1, background 0
    out = np.where(vol != 0, np.clip(out, 1, maxv), 0)
    return np.rint(out).astype(dtype_for_bits(bits))


def rescale_bits(image: np.ndarray, from_bits: int, to_bits: int) -> np.ndarray:
    """Map values at one bit depth onto another (full range to full range)."""
    if from_bits == to_bits:
        return image.astype(dtype_for_bits(to_bits), copy=False)
    scale = (2**to_bits - 1) / (2**from_bits - 1)
    out = np.rint(image.astype(np.float64) * scale)
    return np.clip(out, 0, 2**to_bits - 1).astype(dtype_for_bits(to_bits))
