"""Helpers shared by the learned-B tests (bp-chaos, invertible and their
slow measurement): a fixed key, key variants, fitted encryptors, avalanche
and speed measurements on cipher views."""

from __future__ import annotations

import time

import numpy as np

from encryption import Encryptor, get_encryptor
from encryption.metrics import npcr_uaci

KEY = bytes(range(32))


def flip_bit(key: bytes, byte: int, mask: int) -> bytes:
    """`key` with the bits of `mask` flipped in byte `byte`."""
    out = bytearray(key)
    out[byte] ^= mask
    return bytes(out)


def fitted(name: str, images: np.ndarray, key: bytes = KEY, **config) -> Encryptor:
    """Method `name` fitted on `images`, one epoch unless `config` says otherwise."""
    enc = get_encryptor(name, key, **{"epochs": 1, **config})
    enc.fit(images)
    return enc


def with_key(enc: Encryptor, key: bytes) -> Encryptor:
    """The same method and learned state as `enc`, under another site key."""
    other = get_encryptor(enc.name, key)
    other.load_state_dict(enc.state_dict())
    return other


def plaintext_avalanche(
    enc: Encryptor, images: np.ndarray, pixel: tuple[int, int, int]
) -> tuple[float, float]:
    """NPCR, UACI (percent) between the cipher views of `images` and of
    `images` with the lowest bit of `pixel` (c, y, x) flipped in every image."""
    changed = images.copy()
    changed[(slice(None), *pixel)] ^= 1
    return npcr_uaci(enc.cipher_image(enc.encrypt(images)), enc.cipher_image(enc.encrypt(changed)))


def key_avalanche(enc: Encryptor, images: np.ndarray, key: bytes) -> tuple[float, float]:
    """NPCR, UACI (percent) between the cipher views of `images` under
    `enc` and under `key` with the same learned state."""
    other = with_key(enc, key)
    return npcr_uaci(
        enc.cipher_image(enc.encrypt(images)), other.cipher_image(other.encrypt(images))
    )


def best_rate(enc: Encryptor, images: np.ndarray, repeats: int = 3) -> tuple[float, bytes]:
    """(best images/s over `repeats` encryptions of `images`, the last
    container). A one-image encryption first builds the key-derived caches;
    best of several because the cores are shared."""
    enc.encrypt(images[:1])
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        blob = enc.encrypt(images)
        rates.append(len(images) / (time.perf_counter() - start))
    return max(rates), blob
