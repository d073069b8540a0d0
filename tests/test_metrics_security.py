"""Security metrics: Wu, Noonan and Agaian (2011) critical values and
statistics of known inputs."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import smooth_images

from encryption import get_encryptor
from encryption.metrics import (
    adjacent_correlation,
    chi_square,
    entropy,
    npcr_critical,
    npcr_uaci,
    uaci_interval,
)
from encryption.metrics.security import (
    CHI2_CRITICAL_8BIT,
    NPCR_IDEAL,
    UACI_IDEAL,
    critical_values,
    npcr_uaci_verdicts,
)
from encryption.metrics.size import size_metrics

PIXELS_256 = 256 * 256


@pytest.mark.parametrize(
    ("alpha", "npcr", "lo", "hi"),
    [
        (0.05, 99.5693, 33.2824, 33.6447),
        (0.01, 99.5527, 33.2255, 33.7016),
        (0.001, 99.5341, 33.1594, 33.7677),
    ],
)
def test_wu_critical_values_for_256x256(alpha, npcr, lo, hi):
    assert npcr_critical(PIXELS_256, alpha) == pytest.approx(npcr, abs=5e-5)
    got_lo, got_hi = uaci_interval(PIXELS_256, alpha)
    assert got_lo == pytest.approx(lo, abs=5e-5)
    assert got_hi == pytest.approx(hi, abs=5e-5)


def test_ideal_values():
    assert pytest.approx(99.6094, abs=5e-5) == NPCR_IDEAL
    assert pytest.approx(33.4635, abs=5e-5) == UACI_IDEAL
    assert set(critical_values(PIXELS_256)) == {
        f"{k}_{a}" for k in ("npcr", "uaci") for a in (0.05, 0.01, 0.001)
    }


def test_npcr_uaci_of_independent_random_images_pass():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (256, 256), dtype=np.uint8)
    b = rng.integers(0, 256, (256, 256), dtype=np.uint8)

    npcr, uaci = npcr_uaci(a, b)

    assert npcr == pytest.approx(NPCR_IDEAL, abs=0.05)
    assert uaci == pytest.approx(UACI_IDEAL, abs=0.2)
    verdicts = npcr_uaci_verdicts(npcr, uaci, PIXELS_256)
    assert verdicts["npcr_pass_0.001"] and verdicts["uaci_pass_0.001"]


def test_npcr_uaci_of_near_identical_images_fail():
    a = np.zeros((256, 256), dtype=np.uint8)
    b = a.copy()
    b[0, 0] = 1

    npcr, uaci = npcr_uaci(a, b)

    assert npcr == pytest.approx(100 / PIXELS_256)
    verdicts = npcr_uaci_verdicts(npcr, uaci, PIXELS_256)
    assert not verdicts["npcr_pass_0.05"] and not verdicts["uaci_pass_0.05"]


def test_entropy_and_chi_square():
    rng = np.random.default_rng(1)
    uniform = rng.integers(0, 256, (1, 1, 256, 256), dtype=np.uint8)
    flat = np.full((1, 1, 64, 64), 7, dtype=np.uint8)

    assert entropy(uniform) == pytest.approx(8.0, abs=0.01)
    assert entropy(flat) == 0.0
    assert entropy(uniform, bits=16) > 14.0  # 32768 words: at most 15 bits
    assert pytest.approx(293.25, abs=0.01) == CHI2_CRITICAL_8BIT
    assert chi_square(uniform) < CHI2_CRITICAL_8BIT
    assert chi_square(smooth_images(1, 1, 64, 8)) > CHI2_CRITICAL_8BIT


def test_correlation_smooth_image_near_one_and_aes_near_zero():
    smooth = smooth_images(2, 1, 64, 8)
    aes = get_encryptor("aes-gcm")

    plain = adjacent_correlation(smooth)
    cipher = adjacent_correlation(aes.cipher_image(aes.encrypt(smooth)))

    for name in ("corr_h", "corr_v", "corr_d"):
        assert plain[name] > 0.9
        assert abs(cipher[name]) < 0.05


def test_size_metrics():
    out = size_metrics(2048, (2, 1, 32, 32), "uint16", lossless_bytes=1024)

    assert out["bytes_per_image"] == 1024
    assert out["kb_per_image"] == pytest.approx(1.024)
    assert out["bpp"] == pytest.approx(8.0)
    assert out["ratio_to_raw"] == pytest.approx(0.5)
    assert out["ratio_to_lossless"] == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("alpha", "npcr", "lo", "hi"),
    [
        (0.05, 99.5693, 33.2824, 33.6447),
        (0.01, 99.5527, 33.2255, 33.7016),
        (0.001, 99.5341, 33.1594, 33.7677),
    ],
)
def test_critical_values_of_a_mean_over_images(alpha, npcr, lo, hi):
    # The mean NPCR of 4 independent 128 x 128 images has 1/4 the variance of
    # one image's: Wu's published single-image values for 256 x 256 = 4 x 128 x 128.
    values = 4 * 128 * 128

    got_npcr, (got_lo, got_hi) = npcr_critical(values, alpha), uaci_interval(values, alpha)
    one_image = npcr_critical(128 * 128, alpha)

    assert got_npcr == pytest.approx(npcr, abs=5e-5)
    assert (got_lo, got_hi) == pytest.approx((lo, hi), abs=5e-5)
    assert one_image < got_npcr  # one image's value is the more lenient
    # the distance to the ideal halves with 4x the values (sqrt(4))
    assert NPCR_IDEAL - one_image == pytest.approx(2 * (NPCR_IDEAL - got_npcr), rel=1e-9)


def test_mean_over_images_is_rejected_at_the_stated_rate():
    """A perfect cipher (independent uniform bytes), NPCR/UACI averaged over 16
    images of 32 x 32: judged with the critical values of all 16384 values the
    test rejects about alpha of the trials, as it says; judged with one image's
    values (the old key-change verdict) it would almost never reject."""
    rng = np.random.default_rng(3)
    trials, images, side, alpha = 1000, 16, 32, 0.05
    values = images * side * side
    npcr, uaci = np.empty(trials), np.empty(trials)
    for t in range(trials):
        a = rng.integers(0, 256, values, dtype=np.uint8)
        b = rng.integers(0, 256, values, dtype=np.uint8)
        npcr[t], uaci[t] = npcr_uaci(a, b)

    lo, hi = uaci_interval(values, alpha)
    lo1, hi1 = uaci_interval(side * side, alpha)
    npcr_rate = np.mean(npcr < npcr_critical(values, alpha))
    uaci_rate = np.mean((uaci < lo) | (uaci > hi))

    assert 0.03 <= npcr_rate <= 0.075 and 0.03 <= uaci_rate <= 0.075
    assert np.mean(npcr < npcr_critical(side * side, alpha)) < 0.005
    assert np.mean((uaci < lo1) | (uaci > hi1)) < 0.005
