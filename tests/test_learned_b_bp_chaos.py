"""bp-chaos: exact round trip, dtypes, bit depths, channels, keys, state
reload, avalanche (plaintext and key) and speed."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import smooth_images
from learned_b_helpers import (
    KEY,
    best_rate,
    fitted,
    flip_bit,
    key_avalanche,
    plaintext_avalanche,
    with_key,
)

from encryption import IntegrityError, get_encryptor
from encryption.container import open_container
from encryption.metrics import adjacent_correlation, entropy

OTHER_KEY = flip_bit(KEY, 7, 0x10)


def _cipher_pixels(enc, images: np.ndarray, bits: int | None = None) -> np.ndarray:
    _, payload = open_container(enc.container_key, enc.encrypt(images, bits), encrypted=False)
    return np.frombuffer(payload, dtype=images.dtype, offset=16 * len(images)).reshape(images.shape)


def _fitted(images: np.ndarray, **config):
    return fitted("bp-chaos", images, **config)


def test_exact_round_trip_8bit(xray8):
    enc = _fitted(xray8)
    blob = enc.encrypt(xray8)
    back = enc.decrypt(blob)
    assert back.dtype == np.uint8 and back.shape == xray8.shape
    np.testing.assert_array_equal(back, xray8)
    assert len(blob) > xray8.nbytes  # payload = raw pixels + 16-byte IV per image


def test_exact_round_trip_12bit_and_16bit_4ch(xray16, mri4):
    enc = _fitted(xray16)
    np.testing.assert_array_equal(enc.decrypt(enc.encrypt(xray16, bits=12)), xray16)
    enc = _fitted(mri4)
    back = enc.decrypt(enc.encrypt(mri4))
    assert back.dtype == np.uint16 and back.shape == (3, 4, 32, 32)
    np.testing.assert_array_equal(back, mri4)


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 1, 1, 7), (1, 2, 5, 3), (2, 3, 17, 31)])
def test_odd_sizes_round_trip(shape):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, shape, dtype=np.uint8)
    enc = _fitted(images)
    np.testing.assert_array_equal(enc.decrypt(enc.encrypt(images)), images)


def test_cipher_stays_in_bit_range(xray16):
    enc = _fitted(xray16)
    cipher = _cipher_pixels(enc, xray16, bits=12)
    assert cipher.max() < 2**12
    assert len(np.unique(cipher)) > 2000  # spread over the 12-bit range, not 8-bit


def test_encrypt_before_fit_is_a_clear_error(xray8):
    with pytest.raises(RuntimeError, match="fit"):
        get_encryptor("bp-chaos", KEY).encrypt(xray8)


def test_unknown_option_rejected():
    with pytest.raises(TypeError, match="unknown"):
        get_encryptor("bp-chaos", KEY, nonsense=1)


def test_non_positive_option_is_named(xray8):
    with pytest.raises(ValueError, match="rounds=0"):
        get_encryptor("bp-chaos", KEY, rounds=0)
    with pytest.raises(TypeError, match="bp-chaos.fit: unknown option.*nonsense"):
        get_encryptor("bp-chaos", KEY).fit(xray8, nonsense=1)


def test_wrong_key_fails_integrity(xray8):
    enc = _fitted(xray8)
    with pytest.raises(IntegrityError):
        with_key(enc, OTHER_KEY).decrypt(enc.encrypt(xray8))


def test_state_reload_decrypts_identically(xray8):
    enc = _fitted(xray8)
    blob = enc.encrypt(xray8)
    fresh = get_encryptor("bp-chaos", KEY)
    fresh.load_state_dict(enc.state_dict())
    np.testing.assert_array_equal(fresh.decrypt(blob), xray8)
    assert fresh.encrypt(xray8) == blob  # deterministic (SIV-style IV)


@pytest.mark.parametrize("plaintext_iv", [True, False])
def test_one_pixel_avalanche_64px(plaintext_iv):
    images = smooth_images(2, 1, 64, 8, seed=3)
    enc = _fitted(images, plaintext_iv=plaintext_iv)
    npcr, uaci = plaintext_avalanche(enc, images, (0, 40, 20))
    assert npcr > 99.0
    assert 31.0 < uaci < 36.0


def test_one_bit_key_change_gives_a_different_cipher():
    images = smooth_images(2, 1, 64, 8, seed=4)
    npcr, uaci = key_avalanche(_fitted(images), images, OTHER_KEY)
    assert npcr > 99.0
    assert 31.0 < uaci < 36.0


def test_cipher_looks_uniform_and_uncorrelated():
    images = smooth_images(4, 1, 64, 8, seed=5)
    cipher = _cipher_pixels(_fitted(images), images)
    assert entropy(cipher) > 7.98
    assert abs(adjacent_correlation(cipher)["corr_h"]) < 0.03


def test_flops_per_image_counts_predicted_pixels():
    enc = get_encryptor("bp-chaos", KEY, hidden=16)
    per_pixel = 2 * (4 * 16 + 16 + 16 + 1)
    assert enc.flops_per_image(4, 4) == per_pixel * (8 + 4)


@pytest.mark.slow
def test_default_config_128px_quality_and_speed():
    images = smooth_images(100, 1, 128, 8, seed=6)
    enc = get_encryptor("bp-chaos", KEY)
    report = enc.fit(images)
    assert report.seconds < 300
    assert report.metrics["max_abs_error"] == 0
    # the learned predictor is at least as good as the mean-of-neighbours one
    assert report.metrics["step1_mae"] <= 1.05 * report.metrics["step1_mean_of_neighbours_mae"]
    rate, blob = best_rate(enc, images)  # after building the key-only caches
    np.testing.assert_array_equal(enc.decrypt(blob), images)
    # The target is >= 100 images/s on two idle cores (see the measurement
    # test); the cores here are shared, so assert a floor that still catches
    # any per-pixel Python work (which would run at a few images/s).
    assert rate > 30, f"encrypt {rate:.0f} images/s at 128x128"


def test_cipher_image_is_the_cipher_without_ivs(xray16):
    enc = _fitted(xray16)
    blob = enc.encrypt(xray16, bits=12)
    view = enc.cipher_image(blob)
    assert view.dtype == np.uint8 and view.shape == xray16.shape
    np.testing.assert_array_equal(view, (_cipher_pixels(enc, xray16, 12) >> 4).astype(np.uint8))
