"""The known-plaintext attack: it must fail against AES (mean-guess level)
and succeed against a fixed pixel permutation."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from conftest import smooth_images

from encryption import Encryptor, get_encryptor
from encryption.attacks import known_plaintext_attack
from encryption.base import Header


class FixedPermutation(Encryptor):
    """Test-only weak cipher: one key-independent pixel permutation."""

    name = "test-permutation"
    deterministic = True
    aes_payload = False

    def _perm(self, n: int) -> np.ndarray:
        return np.random.default_rng(1234).permutation(n)

    def _encrypt_payload(self, images: np.ndarray, bits: int) -> tuple[bytes, dict[str, Any]]:
        n, c, h, w = images.shape
        return images.reshape(n, c, -1)[:, :, self._perm(h * w)].tobytes(), {}

    def _decrypt_payload(self, header: Header, payload: bytes) -> np.ndarray:
        n, c, h, w = header.shape
        flat = np.frombuffer(payload, dtype=header.dtype).reshape(n, c, h * w)
        out = np.empty_like(flat)
        out[:, :, self._perm(h * w)] = flat
        return out.reshape(header.shape)


def _attack(enc: Encryptor):
    """The attack with a budget of steps, not seconds: a loaded machine takes as
    many steps as an idle one, so the assertions see the same attack."""
    images = smooth_images(72, 1, 24, 8, seed=11)
    leaked, unseen = images[:60], images[60:]

    result = known_plaintext_attack(
        leaked,
        enc.cipher_image(enc.encrypt(leaked)),
        unseen,
        enc.cipher_image(enc.encrypt(unseen)),
        8,
        seconds=None,
        max_steps=50,  # the residual stage runs; the linear stage breaks the permutation
    )
    assert result.steps == 50
    return result


def test_permutation_round_trips():
    enc = FixedPermutation()
    images = smooth_images(2, 1, 24, 8)

    np.testing.assert_array_equal(enc.decrypt(enc.encrypt(images)), images)


def test_attack_breaks_a_fixed_permutation():
    result = _attack(FixedPermutation())

    assert result.ridge > 0  # the linear stage found the permutation
    assert result.kpa_psnr > result.mean_guess_psnr + 6.0, result
    assert result.kpa_ssim > result.mean_guess_ssim + 0.1, result


def test_attack_on_aes_stays_at_the_mean_guess():
    result = _attack(get_encryptor("aes-gcm"))

    assert result.kpa_psnr == pytest.approx(result.mean_guess_psnr, abs=0.5), result


def test_attack_rejects_mismatched_pairs():
    images = smooth_images(4, 1, 16, 8)
    with pytest.raises(ValueError, match="one cipher view"):
        known_plaintext_attack(images, images[:3], images, images, 8)


@pytest.mark.parametrize("budget", [{"max_steps": -1}, {"seconds": -1.0}, {"seconds": math.nan}])
def test_attack_rejects_a_negative_budget(budget):
    images = smooth_images(4, 1, 16, 8)
    with pytest.raises(ValueError, match="budget must not be negative"):
        known_plaintext_attack(images, images, images, images, 8, **budget)
