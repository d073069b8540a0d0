"""Fidelity: how well decrypt(encrypt(x)) reproduces x.

Definitions (fixed by the design):

- MSE = mean((x - x')^2) on the original intensity scale, and on [0, 1]
  (divided by MAX^2);
- PSNR = 10 log10(MAX^2 / MSE) with MAX = 2^bits - 1, +inf when x' == x;
  computed over the whole batch (like scikit-image on the stacked array);
- SSIM (Wang et al. 2004) with an 11 x 11 Gaussian window, sigma 1.5,
  K1 = 0.01, K2 = 0.03, population (not sample) covariances and an explicit
  data range, averaged over channels and pixels, per image.

`ssim_torch` is written by hand (scikit-image has no batched, differentiable
version) so that learned methods can use it as a training loss; it uses a
separable Gaussian and a *valid* convolution, which equals scikit-image's
`structural_similarity(gaussian_weights=True, use_sample_covariance=False)`:
scikit-image filters with reflect padding but then crops (win - 1) / 2
pixels from every border before averaging, leaving only the pixels whose
window lies inside the image. The tests check it against scikit-image.
"""

from __future__ import annotations

import math

import numpy as np

SSIM_SIGMA = 1.5
SSIM_WIN = 11
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def max_value(bits: int) -> float:
    """MAX of PSNR/SSIM for `bits`-bit data: 2^bits - 1."""
    if not 1 <= int(bits) <= 16:
        raise ValueError(f"bits must be 1..16, got {bits}")
    return float(2 ** int(bits) - 1)


def _pair(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x)
    y = np.asarray(y)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {x.shape} vs {y.shape}")
    return x.astype(np.float64), y.astype(np.float64)


def mse(x: np.ndarray, y: np.ndarray) -> float:
    """Mean squared error on the original intensity scale."""
    a, b = _pair(x, y)
    return float(np.mean((a - b) ** 2))


def mse01(x: np.ndarray, y: np.ndarray, bits: int) -> float:
    """Mean squared error with intensities scaled to [0, 1] by MAX = 2^bits - 1."""
    return mse(x, y) / max_value(bits) ** 2


def psnr_from_mse(err: float, bits: int) -> float:
    if err == 0:
        return math.inf
    return float(10.0 * math.log10(max_value(bits) ** 2 / err))


def psnr(x: np.ndarray, y: np.ndarray, bits: int) -> float:
    """PSNR in dB over the whole batch, MAX = 2^bits - 1 (inf when identical)."""
    return psnr_from_mse(mse(x, y), bits)


def gaussian_window_1d(sigma: float = SSIM_SIGMA, size: int = SSIM_WIN) -> np.ndarray:
    """Normalised 1-D Gaussian taps (what scipy.ndimage.gaussian_filter uses)."""
    radius = size // 2
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return taps / taps.sum()


def ssim_torch(x, y, data_range: float, *, reduction: str = "image"):
    """Batched SSIM of two (N, C, H, W) float tensors (differentiable).

    `data_range` is the span of the intensities (MAX for integer images, 1.0
    for images on [0, 1]). `reduction="image"` gives one value per image
    (mean over channels and valid pixels), "mean" a scalar, "none" the SSIM
    map (N, C, H - 10, W - 10). H and W must be at least 11.
    """
    import torch
    import torch.nn.functional as F

    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(
            f"ssim_torch needs two equal (N, C, H, W) tensors, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    n, c, h, w = x.shape
    if h < SSIM_WIN or w < SSIM_WIN:
        raise ValueError(f"SSIM needs images of at least {SSIM_WIN}x{SSIM_WIN}, got {h}x{w}")
    taps = torch.as_tensor(gaussian_window_1d(), dtype=x.dtype, device=x.device)
    kv = taps.view(1, 1, SSIM_WIN, 1).repeat(c, 1, 1, 1)
    kh = taps.view(1, 1, 1, SSIM_WIN).repeat(c, 1, 1, 1)

    def blur(t):
        return F.conv2d(F.conv2d(t, kv, groups=c), kh, groups=c)

    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    # One conv pass over all five moments.
    stacked = blur(torch.cat([x, y, x * x, y * y, x * y], dim=0))
    ux, uy, uxx, uyy, uxy = stacked.split(n, dim=0)
    vx = uxx - ux * ux
    vy = uyy - uy * uy
    vxy = uxy - ux * uy
    smap = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    if reduction == "none":
        return smap
    per_image = smap.mean(dim=(1, 2, 3))
    if reduction == "image":
        return per_image
    if reduction == "mean":
        return per_image.mean()
    raise ValueError(f"reduction must be 'image', 'mean' or 'none', got {reduction!r}")


def ssim_per_image(x: np.ndarray, y: np.ndarray, bits: int) -> np.ndarray:
    """SSIM of each image of two (N, C, H, W) batches, data range 2^bits - 1."""
    import torch

    a, b = _pair(x, y)
    if a.ndim != 4:
        raise ValueError(f"ssim needs (N, C, H, W) arrays, got shape {a.shape}")
    with torch.no_grad():
        values = ssim_torch(torch.from_numpy(a), torch.from_numpy(b), max_value(bits))
    return values.numpy()


def ssim(x: np.ndarray, y: np.ndarray, bits: int) -> float:
    """Mean SSIM over the images of a batch."""
    return float(np.mean(ssim_per_image(x, y, bits)))


def fidelity(x: np.ndarray, y: np.ndarray, bits: int) -> dict[str, float]:
    """The fidelity block of the benchmark: mse, mse01, psnr, ssim."""
    err = mse(x, y)
    return {
        "mse": err,
        "mse01": err / max_value(bits) ** 2,
        "psnr": psnr_from_mse(err, bits),
        "ssim": ssim(x, y, bits),
    }
