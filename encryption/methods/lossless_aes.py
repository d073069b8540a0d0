"""`lossless-aes`: what a careful hospital does today. Every (image, channel)
plane is compressed losslessly with the best codec available (JPEG-LS,
JPEG 2000 reversible, PNG, all from imagecodecs), then the whole batch is
sealed with AES-256-GCM. Exact for 8- and 16-bit data and any channel count.

Per batch, each candidate codec compresses every plane; the smallest total
that decodes back bit-exactly wins (a codec that fails or does not round
trip is skipped). Channels are coded as separate grayscale planes because
the C = 4 MRI modalities are different images, not colour components.

Payload (encrypted, so its framing is hidden too):
    uint32 big-endian length of each of the N * C plane streams, in
    (image, channel) order, then the streams concatenated.
Header `extra`: {"codec": name}.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import numpy as np

from encryption.base import Encryptor
from encryption.container import ContainerError, Header
from encryption.registry import register_encryptor


def _codecs() -> dict[
    str, tuple[Callable[[np.ndarray, int], bytes], Callable[[bytes], np.ndarray]]
]:
    import imagecodecs

    table = {
        "jpegls": (lambda a, bits: imagecodecs.jpegls_encode(a), imagecodecs.jpegls_decode),
        "jpeg2k": (
            lambda a, bits: imagecodecs.jpeg2k_encode(
                a, level=0, reversible=True, bitspersample=bits
            ),
            imagecodecs.jpeg2k_decode,
        ),
        "png": (lambda a, bits: imagecodecs.png_encode(a, level=9), imagecodecs.png_decode),
    }
    # A build of imagecodecs may lack a codec: keep only those it has.
    available = {}
    for name, pair in table.items():
        if (
            getattr(imagecodecs, name.upper(), None) is not None
            and imagecodecs.__dict__[name.upper()].available
        ):
            available[name] = pair
    return available


CODECS = ("jpegls", "jpeg2k", "png")


def _encode_planes(planes: np.ndarray, bits: int, codec: str) -> list[bytes] | None:
    """Encode every (H, W) plane with `codec`; None if the codec fails."""
    encode = _codecs()[codec][0]
    try:
        return [bytes(encode(plane, bits)) for plane in planes]
    except Exception:  # noqa: BLE001 - a codec that cannot code this data is skipped
        return None


def _round_trips(planes: np.ndarray, streams: list[bytes], codec: str) -> bool:
    decode = _codecs()[codec][1]
    for plane, stream in zip(planes, streams, strict=True):
        try:
            back = decode(stream)
        except Exception:  # noqa: BLE001
            return False
        if (
            back.dtype != plane.dtype
            or back.shape != plane.shape
            or not np.array_equal(back, plane)
        ):
            return False
    return True


@register_encryptor
class LosslessAes(Encryptor):
    """Best lossless codec (JPEG-LS / JPEG 2000 / PNG) per batch, then AES-256-GCM."""

    name = "lossless-aes"
    lossless = True
    deterministic = False

    def __init__(
        self,
        key: bytes | None = None,
        *,
        codecs: tuple[str, ...] | list[str] = CODECS,
        **config: Any,
    ) -> None:
        super().__init__(key, **config)
        codecs = tuple(codecs)
        available = _codecs()
        unknown = [c for c in codecs if c not in available]
        if not codecs or unknown:
            raise ValueError(
                f"{self.name}: codecs {unknown or list(codecs)} not available; "
                f"available: {', '.join(available)}"
            )
        self.codecs = codecs

    def _encrypt_payload(self, images: np.ndarray, bits: int) -> tuple[bytes, dict[str, Any]]:
        n, c, h, w = images.shape
        planes = images.reshape(n * c, h, w)
        candidates = []
        for codec in self.codecs:
            streams = _encode_planes(planes, bits, codec)
            if streams is not None:
                candidates.append((sum(map(len, streams)), codec, streams))
        # Smallest first; only the winner's decode is checked (a codec that
        # does not round-trip bit-exactly loses to the next smallest).
        best = None
        for _, codec, streams in sorted(candidates, key=lambda c: c[0]):
            if _round_trips(planes, streams, codec):
                best = (codec, streams)
                break
        if best is None:
            raise ValueError(
                f"{self.name}: none of the codecs {', '.join(self.codecs)} round-trips "
                f"{images.dtype} images shaped {images.shape}"
            )
        codec, streams = best
        framing = struct.pack(f">{len(streams)}I", *map(len, streams))
        return framing + b"".join(streams), {"codec": codec}

    def _decrypt_payload(self, header: Header, payload: bytes) -> np.ndarray:
        n, c, h, w = header.shape
        codec = header.extra.get("codec")
        codecs = _codecs()
        if codec not in codecs:
            raise ContainerError(
                f"{self.name}: container codec {codec!r} is not available here "
                f"(available: {', '.join(codecs)})"
            )
        decode = codecs[codec][1]
        count = n * c
        if len(payload) < 4 * count:
            raise ContainerError(f"{self.name}: payload too short for {count} plane lengths")
        lengths = struct.unpack_from(f">{count}I", payload)
        if 4 * count + sum(lengths) != len(payload):
            raise ContainerError(f"{self.name}: plane lengths do not add up to the payload size")
        out = np.empty((count, h, w), dtype=header.dtype)
        pos = 4 * count
        for i, length in enumerate(lengths):
            try:
                plane = decode(payload[pos : pos + length])
            except Exception as exc:  # noqa: BLE001 - name the plane that failed
                raise ContainerError(
                    f"{self.name}: {codec} plane {i} does not decode: {exc}"
                ) from exc
            if plane.shape != (h, w) or plane.dtype != out.dtype:
                raise ContainerError(
                    f"{self.name}: {codec} plane {i} decoded as {plane.shape}/{plane.dtype}"
                )
            out[i] = plane
            pos += length
        return out.reshape(n, c, h, w)
