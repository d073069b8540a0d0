"""Security statistics of cipher images, with the critical values of
Wu, Noonan and Agaian (2011), "NPCR and UACI randomness tests for image
encryption", Cyber Journals JSAT.

Every statistic is computed on a *cipher view*: a uint8 array (N, C, H, W)
that `Encryptor.cipher_image(blob)` returns (by default the container's
payload bytes laid out as images; see encryption/base.py). So all methods
are measured the same way, and F = 255 in Wu's formulas.

- entropy: Shannon entropy (bits) of the 8-bit histogram (ideal 8); and of
  16-bit words (pairs of bytes, ideal 16), meaningful only with far more
  than 65536 samples, so it is reported as a detail;
- NPCR / UACI between two cipher views (percent);
- adjacent-pixel correlation (Pearson) horizontal, vertical, diagonal over
  all adjacent pairs of every plane;
- histogram chi-square against the uniform 8-bit histogram (255 degrees of
  freedom; pass below chi2.ppf(0.95, 255) = 293.25).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

ALPHAS = (0.05, 0.01, 0.001)
NPCR_IDEAL = 255 / 256 * 100  # 99.6094 %
UACI_IDEAL = (255 + 2) / (3 * 255 + 3) * 100  # 33.4635 %


def _u8(view: np.ndarray) -> np.ndarray:
    view = np.asarray(view)
    if view.dtype != np.uint8:
        raise ValueError(f"a cipher view must be uint8, got {view.dtype}")
    return view


def entropy(data: np.ndarray, bits: int = 8) -> float:
    """Shannon entropy in bits of 8-bit values (bits=8) or of 16-bit words
    made from consecutive little-endian byte pairs (bits=16)."""
    flat = np.ascontiguousarray(_u8(data)).reshape(-1)
    if bits == 8:
        counts = np.bincount(flat, minlength=256)
    elif bits == 16:
        words = flat[: flat.size // 2 * 2].view("<u2")
        counts = np.bincount(words, minlength=65536)
    else:
        raise ValueError(f"entropy bits must be 8 or 16, got {bits}")
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def npcr_uaci(c1: np.ndarray, c2: np.ndarray) -> tuple[float, float]:
    """NPCR and UACI in percent between two equal-shape uint8 cipher images."""
    a, b = _u8(c1), _u8(c2)
    if a.shape != b.shape:
        raise ValueError(f"cipher views differ in shape: {a.shape} vs {b.shape}")
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return float(np.mean(diff != 0) * 100), float(np.mean(diff) / 255 * 100)


def npcr_critical(pixels: int, alpha: float, levels: int = 255) -> float:
    """Wu et al. NPCR critical value N*_alpha (percent) for an NPCR averaged over
    `pixels` values; an NPCR below it fails. F = `levels` (255 for 8-bit).

    Wu's NPCR of one M x N image has mean F / (F + 1) and variance
    F / ((F + 1)^2 M N): each value differs independently with probability
    F / (F + 1). The mean of the NPCRs of K such images has that variance
    divided by K, which is the formula with M N K values: so `pixels` is
    the number of values the statistic averages (M x N for one image, K x M x
    N for a mean over K images; `critical_values` and the tests hold both)."""
    f = float(levels)
    z = stats.norm.isf(alpha)  # Wu's Phi^-1(alpha) is the upper-tail quantile
    return (f - z * math.sqrt(f / pixels)) / (f + 1) * 100


def uaci_interval(pixels: int, alpha: float, levels: int = 255) -> tuple[float, float]:
    """Wu et al. UACI acceptance interval (percent): mu_U -/+ z_{alpha/2} sigma_U,
    for a UACI averaged over `pixels` values (sigma_U^2 is inversely
    proportional to them, as for `npcr_critical`)."""
    f = float(levels)
    mu = (f + 2) / (3 * f + 3)
    var = (f + 2) * (f * f + 2 * f + 3) / (18 * (f + 1) ** 2 * pixels * f)
    z = stats.norm.isf(alpha / 2)
    half = z * math.sqrt(var)
    return (mu - half) * 100, (mu + half) * 100


def npcr_uaci_verdicts(npcr: float, uaci: float, pixels: int) -> dict[str, bool]:
    """Pass/fail at alpha 0.05, 0.01, 0.001, keyed e.g. npcr_pass_0.05."""
    out: dict[str, bool] = {}
    for alpha in ALPHAS:
        lo, hi = uaci_interval(pixels, alpha)
        out[f"npcr_pass_{alpha}"] = bool(npcr >= npcr_critical(pixels, alpha))
        out[f"uaci_pass_{alpha}"] = bool(lo <= uaci <= hi)
    return out


def critical_values(pixels: int) -> dict[str, float | list[float]]:
    """Wu's critical values for a statistic averaged over `pixels` values, for the report."""
    out: dict[str, float | list[float]] = {}
    for alpha in ALPHAS:
        out[f"npcr_{alpha}"] = npcr_critical(pixels, alpha)
        out[f"uaci_{alpha}"] = list(uaci_interval(pixels, alpha))
    return out


def adjacent_correlation(view: np.ndarray) -> dict[str, float]:
    """Pearson correlation of adjacent values (corr_h, corr_v, corr_d) over all
    (N, C) planes of a (N, C, H, W) array; NaN when a direction is constant."""
    v = np.asarray(view, dtype=np.float64)
    if v.ndim != 4:
        raise ValueError(f"correlation needs (N, C, H, W), got shape {v.shape}")
    pairs = {
        "corr_h": (v[..., :, :-1], v[..., :, 1:]),
        "corr_v": (v[..., :-1, :], v[..., 1:, :]),
        "corr_d": (v[..., :-1, :-1], v[..., 1:, 1:]),
    }
    out = {}
    for name, (a, b) in pairs.items():
        a, b = a.reshape(-1), b.reshape(-1)
        if a.size < 2 or a.std() == 0 or b.std() == 0:
            out[name] = math.nan
        else:
            out[name] = float(np.corrcoef(a, b)[0, 1])
    return out


CHI2_CRITICAL_8BIT = float(stats.chi2.ppf(0.95, 255))  # 293.25


def chi_square(view: np.ndarray) -> float:
    """Chi-square of the 8-bit histogram against the uniform one."""
    flat = _u8(view).reshape(-1)
    counts = np.bincount(flat, minlength=256).astype(np.float64)
    expected = flat.size / 256
    return float(((counts - expected) ** 2 / expected).sum())
