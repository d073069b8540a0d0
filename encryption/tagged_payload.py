"""The payload layout of the deterministic lossless learned methods
(bp-chaos, invertible): N keyed per-image MACs of `MAC_BYTES` bytes, then
the cipher pixels in the plaintext's dtype, little-endian.

The MAC is HMAC-SHA256 under a sub-key of the site key over the bit depth,
the image shape and the pixels, truncated to 16 bytes. It reveals only the
equality of images (these methods are deterministic anyway). bp-chaos also
seeds its key streams with it (an SIV-style IV); both methods recompute it
after decryption and refuse a mismatch, so a wrong state can never yield a
silently wrong image.
"""

from __future__ import annotations

import hmac

import numpy as np

from encryption.container import ContainerError, Header
from encryption.keys import derive_key

MAC_BYTES = 16


def image_macs(key: bytes, purpose: str, images: np.ndarray, bits: int) -> list[bytes]:
    """One MAC per image of (N, C, H, W) `images`, keyed by HKDF(key, purpose)."""
    mac_key = derive_key(key, purpose)
    shape = ",".join(str(s) for s in images.shape[1:]).encode()
    prefix = b"%d|%s|" % (bits, shape)
    le = images.astype(images.dtype.newbyteorder("<"), copy=False)
    return [hmac.new(mac_key, prefix + im.tobytes(), "sha256").digest()[:MAC_BYTES] for im in le]


def pack(macs: list[bytes], pixels: np.ndarray) -> bytes:
    """The payload: the MACs, then `pixels` (already little-endian)."""
    return b"".join(macs) + pixels.tobytes()


def unpack(
    method: str, header: Header, payload: bytes, pixel_shape: tuple[int, ...]
) -> tuple[list[bytes], np.ndarray]:
    """(per-image MACs, read-only cipher pixels shaped `pixel_shape`) of a
    payload for `header`; ContainerError naming `method` if the size is wrong."""
    n = header.shape[0]
    dtype = np.dtype(header.dtype).newbyteorder("<")
    expected = n * MAC_BYTES + int(np.prod(pixel_shape)) * dtype.itemsize
    if len(payload) != expected:
        raise ContainerError(
            f"{method}: payload of {len(payload)} bytes does not fit {header.shape} "
            f"(expected {expected})"
        )
    macs = [payload[i * MAC_BYTES : (i + 1) * MAC_BYTES] for i in range(n)]
    pixels = np.frombuffer(payload, dtype=dtype, offset=n * MAC_BYTES).reshape(pixel_shape)
    return macs, pixels


def top_byte_view(pixels: np.ndarray, bits: int) -> np.ndarray:
    """Cipher pixels as uint8: deeper bit depths keep their top 8 bits
    (uniform if the cipher is uniform)."""
    return (pixels.astype(np.int64) >> max(bits - 8, 0)).astype(np.uint8)
