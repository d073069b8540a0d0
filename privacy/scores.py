"""Scores of a reconstruction against the real images, and of the guess an
attacker makes without any update.

PSNR and SSIM (encryption.metrics.fidelity's SSIM) on [0, 1], each
reconstruction matched one to one to a real image of the batch by the
Hungarian assignment (scipy's linear_sum_assignment) on PSNR; beside them the
PSNR of the mean guess: the mean of the images the attacker holds without any
update (the server's held-out set), so that the difference is what the update
added. The study CNN and U-Net cannot see an image's global intensity factor
(a convolution without bias, then GroupNorm), so every PSNR is also given
after the least-squares factor to the real image (`psnr_scale_aligned`, and
the same for the mean guess): what the update reveals of the image's shape.

An exact reconstruction (MSE 0, as the analytic attack's snapping to the
images' bit-depth grid often gives) has an infinite PSNR: the per-image PSNR is
capped at `PSNR_CAP_DB` (200 dB), so that leakage.json stays strict JSON and
means over images stay finite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from encryption.metrics.fidelity import ssim_torch

# The per-image PSNR is capped here (an exact reconstruction has MSE 0).
PSNR_CAP_DB = 200.0
RECOVERED_DB = 20.0  # `recovered_share`: images reconstructed above this PSNR


@dataclass(frozen=True)
class Score:
    """Per real image (in batch order): PSNR and SSIM of its matched reconstruction."""

    psnr: list[float]
    ssim: list[float]
    matched: list[int]  # reconstruction index matched to each real image
    psnr_scale_aligned: list[float]  # after the best global intensity factor (see score)


def psnr_db(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR on [0, 1] (MAX = 1), capped at PSNR_CAP_DB for an exact match."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return PSNR_CAP_DB if mse <= 10 ** (-PSNR_CAP_DB / 10) else 10 * math.log10(1 / mse)


def score(reconstructions: np.ndarray, originals: np.ndarray) -> Score:
    """Match reconstructions to originals one to one (Hungarian assignment,
    maximal total PSNR), then PSNR and SSIM per original. Both on [0, 1].

    `psnr_scale_aligned`: the PSNR after multiplying each reconstruction by the
    least-squares factor to its original. The study CNN's first convolution has
    no bias and is followed by GroupNorm, so the update of x and of a * x are
    identical: no attacker can tell the image's global intensity scale, and
    this score separates what the update reveals from that one factor."""
    from scipy.optimize import linear_sum_assignment

    if reconstructions.shape != originals.shape:
        raise ValueError(
            f"score: reconstructions {reconstructions.shape} and originals {originals.shape} differ"
        )
    n = len(originals)
    table = np.array([[psnr_db(r, o) for r in reconstructions] for o in originals])
    rows, cols = linear_sum_assignment(-table)
    matched = [int(c) for _, c in sorted(zip(rows, cols, strict=True))]
    rec = torch.from_numpy(reconstructions[matched].astype(np.float64))
    with torch.no_grad():
        ssim = ssim_torch(rec, torch.from_numpy(originals.astype(np.float64)), 1.0)
    aligned = [scale_aligned_psnr_db(reconstructions[matched[i]], originals[i]) for i in range(n)]
    return Score(
        psnr=[float(table[i, matched[i]]) for i in range(n)],
        ssim=[float(v) for v in ssim],
        matched=matched,
        psnr_scale_aligned=aligned,
    )


def scale_aligned_psnr_db(reconstruction: np.ndarray, original: np.ndarray) -> float:
    """PSNR of `reconstruction` times its least-squares intensity factor to `original`."""
    r = np.asarray(reconstruction, np.float64)
    factor = float((r * original).sum() / max(float((r * r).sum()), 1e-30))
    return psnr_db(factor * r, original)


def mean_guess_psnr(mean_image: np.ndarray, originals: np.ndarray) -> float:
    """Mean over the batch of the PSNR of guessing `mean_image` (the mean of the
    images the attacker holds) for each real image."""
    return float(np.mean([psnr_db(mean_image, o) for o in originals]))


def mean_guess_psnr_scale_aligned(mean_image: np.ndarray, originals: np.ndarray) -> float:
    """The same guess scored like `Score.psnr_scale_aligned`: the mean image
    times its best intensity factor to each real image (what a reconstruction's
    scale-aligned PSNR must be compared with)."""
    return float(np.mean([scale_aligned_psnr_db(mean_image, o) for o in originals]))


def recovered_share(psnr: list[float], threshold_db: float = RECOVERED_DB) -> float:
    return float(np.mean([p > threshold_db for p in psnr])) if psnr else 0.0
