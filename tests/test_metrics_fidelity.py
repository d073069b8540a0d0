"""Fidelity metrics against scikit-image."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import smooth_images
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from encryption.metrics import fidelity, mse, mse01, psnr, ssim, ssim_torch
from encryption.metrics.fidelity import ssim_per_image


def _noisy(x: np.ndarray, bits: int, scale: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    maxv = 2**bits - 1
    y = x.astype(np.float64) + rng.normal(0, scale * maxv, x.shape)
    return np.clip(np.round(y), 0, maxv).astype(x.dtype)


@pytest.mark.parametrize(("channels", "bits"), [(1, 8), (1, 12), (4, 16)])
def test_ssim_matches_skimage(channels, bits):
    x = smooth_images(3, channels, 40, bits, seed=3)
    y = _noisy(x, bits, 0.05)
    maxv = 2**bits - 1

    ours = ssim_per_image(x, y, bits)

    for i in range(len(x)):
        ref = structural_similarity(
            x[i].astype(np.float64),
            y[i].astype(np.float64),
            data_range=maxv,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            channel_axis=0,
        )
        assert ours[i] == pytest.approx(ref, abs=1e-9)
    assert ssim(x, y, bits) == pytest.approx(float(np.mean(ours)))


def test_psnr_and_mse_match_skimage():
    x = smooth_images(2, 1, 32, 12, seed=4)
    y = _noisy(x, 12, 0.02)

    value = psnr(x, y, 12)

    ref = peak_signal_noise_ratio(x.astype(np.float64), y.astype(np.float64), data_range=4095)
    assert value == pytest.approx(ref, rel=1e-12)
    err = np.mean((x.astype(np.float64) - y) ** 2)
    assert mse(x, y) == pytest.approx(err)
    assert mse01(x, y, 12) == pytest.approx(err / 4095**2)


def test_identical_images_are_perfect():
    x = smooth_images(2, 1, 16, 8)

    out = fidelity(x, x.copy(), 8)

    assert out["mse"] == 0.0
    assert math.isinf(out["psnr"]) and out["psnr"] > 0
    assert out["ssim"] == pytest.approx(1.0)


def test_ssim_torch_is_a_differentiable_loss():
    x = torch.rand(2, 1, 24, 24, dtype=torch.float32)
    y = (x + 0.1 * torch.randn_like(x)).requires_grad_(True)

    loss = 1 - ssim_torch(x, y, 1.0, reduction="mean")
    loss.backward()

    assert y.grad is not None and torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0
    assert ssim_torch(x, x, 1.0).shape == (2,)


def test_ssim_rejects_tiny_and_mismatched_images():
    with pytest.raises(ValueError, match="at least 11"):
        ssim_torch(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8), 1.0)
    with pytest.raises(ValueError, match="shapes differ"):
        mse(np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 4, 5)))


def test_one_ssim_for_metric_fit_report_and_loss():
    """The learned methods' fit-report SSIM (encryption.nn.ssim, [0, 1] tensors)
    and a training loss (1 - ssim_torch) are the metric checked against
    scikit-image above, not a second implementation."""
    from encryption.nn import ssim as fit_ssim
    from encryption.nn import to_unit

    x = smooth_images(3, 1, 40, 12, seed=5)
    y = _noisy(x, 12, 0.05, seed=6)
    metric = ssim(x, y, 12)
    xt = torch.from_numpy(x / 4095.0)
    yt = torch.from_numpy(y / 4095.0).requires_grad_(True)

    report = fit_ssim(to_unit(x, 12), to_unit(y, 12))
    loss = 1 - ssim_torch(xt, yt, 1.0, reduction="mean")
    loss.backward()

    assert report == pytest.approx(metric, abs=1e-6)  # float32 pixels, float64 SSIM
    assert 1 - loss.item() == pytest.approx(metric, abs=1e-12)
    assert yt.grad is not None and torch.isfinite(yt.grad).all()
    assert math.isnan(fit_ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8)))
