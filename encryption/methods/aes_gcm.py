"""`aes-gcm`: the baseline. AES-256-GCM (from `cryptography`) over the raw
little-endian pixel bytes; a fresh 96-bit nonce per container, so the same
images never give the same ciphertext. Exact.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from encryption.base import Encryptor
from encryption.container import Header
from encryption.registry import register_encryptor


def pixels_to_bytes(images: np.ndarray) -> bytes:
    return images.astype(images.dtype.newbyteorder("<"), copy=False).tobytes()


def bytes_to_pixels(header: Header, payload: bytes) -> np.ndarray:
    dtype = np.dtype(header.dtype).newbyteorder("<")
    expected = int(np.prod(header.shape)) * dtype.itemsize
    if len(payload) != expected:
        raise ValueError(f"payload is {len(payload)} bytes, shape {header.shape} needs {expected}")
    return np.frombuffer(payload, dtype=dtype).reshape(header.shape).astype(header.dtype)


@register_encryptor
class AesGcm(Encryptor):
    """AES-256-GCM over the raw pixel bytes: the exact, randomised baseline."""

    name = "aes-gcm"
    lossless = True
    deterministic = False

    def _encrypt_payload(self, images: np.ndarray, bits: int) -> tuple[bytes, dict[str, Any]]:
        return pixels_to_bytes(images), {}

    def _decrypt_payload(self, header: Header, payload: bytes) -> np.ndarray:
        return bytes_to_pixels(header, payload)
