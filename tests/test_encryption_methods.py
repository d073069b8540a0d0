"""One suite for every registered method: round trip, shapes and dtypes,
8/16-bit and multi-channel, state reload, tamper, wrong key, truncation.

Learned methods (`learned = True`) get `epochs=1` and are fitted once per
batch kind at 32 x 32, so the suite stays fast.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from encryption import ContainerError, IntegrityError, get_encryptor, list_encryptors
from encryption.keys import generate_key
from encryption.metrics import psnr
from encryption.registry import encryptor_class

METHODS = list_encryptors()
BATCHES = {"xray8": 8, "xray16": 12, "mri4": 16}  # fixture name -> bit depth
LOSSY_PSNR_FLOOR_DB = 10.0


def _config(name: str) -> dict:
    return {"epochs": 1} if encryptor_class(name).learned else {}


@pytest.fixture(scope="module")
def fitted_cache() -> dict:
    return {}


@pytest.fixture
def fitted(request, fitted_cache):
    """(encryptor, key, images, bits) for (method, batch kind), fitted once."""

    def get(name: str, kind: str):
        images = request.getfixturevalue(kind)
        if (name, kind) not in fitted_cache:
            key = generate_key()
            enc = get_encryptor(name, key=key, **_config(name))
            if enc.learned:
                enc.fit(images)
            fitted_cache[name, kind] = (enc, key)
        enc, key = fitted_cache[name, kind]
        return enc, key, images, BATCHES[kind]

    return get


@pytest.mark.parametrize("kind", sorted(BATCHES))
@pytest.mark.parametrize("name", METHODS)
def test_round_trip(name, kind, fitted):
    enc, _, images, bits = fitted(name, kind)

    blob = enc.encrypt(images, bits)
    out = enc.decrypt(blob)

    assert isinstance(blob, bytes)
    assert out.shape == images.shape and out.dtype == images.dtype
    if enc.lossless:
        np.testing.assert_array_equal(out, images)
    else:
        value = psnr(images, out, bits)
        assert not math.isnan(value)
        assert value > LOSSY_PSNR_FLOOR_DB, f"{name} on {kind}: PSNR {value:.2f} dB"


@pytest.mark.parametrize("name", METHODS)
def test_state_reload_reproduces_decryption(name, fitted):
    enc, key, images, bits = fitted(name, "xray8")
    blob = enc.encrypt(images, bits)

    clone = get_encryptor(name, key=key, **_config(name))
    clone.load_state_dict(enc.state_dict())

    np.testing.assert_array_equal(clone.decrypt(blob), enc.decrypt(blob))


@pytest.mark.parametrize("name", METHODS)
def test_determinism_flag_is_honest(name, fitted):
    enc, _, images, bits = fitted(name, "xray8")

    same = enc.encrypt(images, bits) == enc.encrypt(images, bits)

    assert same == enc.deterministic


@pytest.mark.parametrize("name", METHODS)
def test_cipher_image_is_uint8_batch(name, fitted):
    enc, _, images, bits = fitted(name, "xray8")

    view = enc.cipher_image(enc.encrypt(images, bits))

    assert view.dtype == np.uint8 and view.ndim == 4 and view.shape[0] == len(images)


@pytest.mark.parametrize("name", METHODS)
def test_flipped_bits_are_rejected(name, fitted):
    enc, _, images, bits = fitted(name, "xray8")
    blob = enc.encrypt(images, bits)
    hlen = int.from_bytes(blob[5:7], "big")
    header_end = 7 + hlen
    positions = {
        "magic": 0,
        "version": 4,
        "header length": 6,
        "header": 7 + hlen // 2,
        "nonce": header_end + 3,
        "payload length": header_end + 12 + 7,
        "payload start": header_end + 20,
        "payload middle": (header_end + 20 + len(blob) - 16) // 2,
        "tag": len(blob) - 1,
    }

    for where, pos in positions.items():
        for bit in (0, 7):
            bad = bytearray(blob)
            bad[pos] ^= 1 << bit
            with pytest.raises(ContainerError):
                enc.decrypt(bytes(bad))
                pytest.fail(f"{name}: flipped bit {bit} of byte {pos} ({where}) was accepted")


@pytest.mark.parametrize("name", METHODS)
def test_wrong_key_is_rejected(name, fitted):
    enc, _, images, bits = fitted(name, "xray8")
    blob = enc.encrypt(images, bits)
    other = get_encryptor(name, key=generate_key(), **_config(name))
    other.load_state_dict(enc.state_dict())

    with pytest.raises(IntegrityError):
        other.decrypt(blob)


@pytest.mark.parametrize("name", METHODS)
def test_truncated_blobs_are_rejected(name, fitted):
    enc, _, images, bits = fitted(name, "xray8")
    blob = enc.encrypt(images, bits)

    for cut in (0, 3, 10, len(blob) // 2, len(blob) - 16, len(blob) - 1):
        with pytest.raises(ContainerError):
            enc.decrypt(blob[:cut])
    with pytest.raises(ContainerError):
        enc.decrypt(blob + b"\x00")


@pytest.mark.parametrize("name", METHODS)
def test_container_of_another_method_is_rejected(name, fitted):
    enc, key, images, bits = fitted(name, "xray8")
    other_name = "lossless-aes" if name == "aes-gcm" else "aes-gcm"
    blob = get_encryptor(other_name, key=key).encrypt(images, bits)

    with pytest.raises(ContainerError):
        enc.decrypt(blob)
