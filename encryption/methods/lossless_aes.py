"""`lossless-aes`: what a careful hospital does today. Every (image, channel)
plane is compressed losslessly with a standard codec (JPEG-LS, JPEG XL
lossless, reversible JPEG 2000 or PNG, all from imagecodecs), then the whole
batch is sealed with AES-256-GCM. Exact for 8- and 16-bit data and any
channel count.

The codec is picked per batch by a fixed rule (`codec_preference`), measured
on the project's corpora with `medfed bench lossless-codecs` (its table is in
docs/BENCHMARKS.md), not by coding every image with every codec and keeping
the smallest, which made encryption 1/814 as fast as AES-GCM. The rule:

- up to 8 bits: JPEG-LS on planes of at least `LARGE_PLANE_PIXELS` (the fastest
  candidate, within about 1 % of the smallest there); JPEG XL effort 2 on
  smaller planes, where JPEG-LS's adaptive contexts see too few pixels (4 %
  larger at 64 x 64, 23 % at 32 x 32);
- deeper data with a sparse histogram (distinct values under
  `SPARSE_OCCUPANCY` of what the plane could hold: phantoms, label-like or
  windowed data): JPEG XL effort 2, whose palette codes them (JPEG-LS is up to
  1.9 times larger on the MRI phantoms);
- deeper data that is smooth (mean |second difference| under `SMOOTH_RATIO`
  of mean |first difference|: upsampled volumes): reversible JPEG 2000, whose
  5/3 wavelet predicts them (the predictive codecs are 10 % to 2 times larger);
- other deeper data (CT, MR, DICOM X-rays): JPEG XL effort 3.

The statistics come from at most `STAT_PLANES` planes spread over the batch.
A codec that raises (a build without it, data it cannot code) gives way to
the next in the rule's order; the codecs are exact (tests round-trip every
candidate on 1- to 16-bit data), so encryption does not decode what it coded.
Channels are coded as separate grayscale planes because the C = 4 MRI
modalities are different images, not colour components.

Payload (encrypted, so its framing is hidden too): the uint32 big-endian
length of each of the N * C plane streams, in (image, channel) order, then
the streams. Header `extra`: {"codec": jpegls | jpeg2k | png | jpegxl} and,
for JPEG XL, "effort". Decryption reads the codec from the header, so
containers of the earlier every-codec version decode unchanged, and decodes
every stream into its slot of the output array: a stream declaring another
size than the header's shape fails before its decoder allocates anything.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import imagecodecs
import numpy as np

from encryption.base import Encryptor
from encryption.container import ContainerError, Header
from encryption.registry import register_encryptor

# The rule's thresholds (see the module docstring and `medfed bench lossless-codecs`).
LARGE_PLANE_PIXELS = 96 * 96
SPARSE_OCCUPANCY = 0.3
SMOOTH_RATIO = 0.7
STAT_PLANES = 8


@dataclass(frozen=True)
class Candidate:
    """One candidate codec: `family` names its decoder (the header's "codec"),
    `encode(plane, bits)` codes one (H, W) plane."""

    name: str
    family: str
    encode: Callable[[np.ndarray, int], bytes]
    extra: tuple[tuple[str, Any], ...] = ()


def _jpeg2k_encode(plane: np.ndarray, bits: int) -> bytes:
    # Declared depth never below the data's (values above `bits` stay exact).
    depth = max(bits, int(plane.max()).bit_length())
    return imagecodecs.jpeg2k_encode(plane, level=0, reversible=True, bitspersample=depth)


def _jpegxl(effort: int) -> Candidate:
    def encode(plane: np.ndarray, bits: int) -> bytes:
        return imagecodecs.jpegxl_encode(plane, lossless=True, effort=effort, numthreads=1)

    return Candidate(f"jpegxl-e{effort}", "jpegxl", encode, (("effort", effort),))


_ALL = (
    Candidate("jpegls", "jpegls", lambda plane, bits: imagecodecs.jpegls_encode(plane)),
    _jpegxl(2),
    _jpegxl(3),
    Candidate("jpeg2k", "jpeg2k", _jpeg2k_encode),
    Candidate("png", "png", lambda plane, bits: imagecodecs.png_encode(plane, level=9)),
)
_DECODERS: dict[str, Callable[..., np.ndarray]] = {
    "jpegls": imagecodecs.jpegls_decode,
    "jpegxl": imagecodecs.jpegxl_decode,
    "jpeg2k": imagecodecs.jpeg2k_decode,
    "png": imagecodecs.png_decode,
}


def _available(family: str) -> bool:
    codec = getattr(imagecodecs, family.upper(), None)
    return codec is not None and bool(codec.available)


# A build of imagecodecs may lack a codec: only those it has are candidates.
CANDIDATES: dict[str, Candidate] = {c.name: c for c in _ALL if _available(c.family)}
CODECS = tuple(CANDIDATES)
FALLBACK_ORDER = ("jpegls", "jpegxl-e3", "jpegxl-e2", "jpeg2k", "png")


def plane_statistics(planes: np.ndarray) -> tuple[float, float]:
    """(occupancy, smoothness) of (P, H, W) planes, from at most STAT_PLANES of them.

    occupancy: median over the planes of distinct values / min(value range + 1,
    pixels), 1 when every value the plane could hold in its range occurs;
    smoothness: mean |second difference| / mean |first difference| along rows
    and columns (about 1.7 for noise, near 0 for interpolated images; 1 for
    planes too small or flat to say)."""
    picks = np.unique(np.linspace(0, len(planes) - 1, min(len(planes), STAT_PLANES)).astype(int))
    sample = planes[picks]
    occupancy = []
    for plane in sample:
        flat = plane.ravel()
        lo, hi = int(flat.min()), int(flat.max())
        distinct = np.count_nonzero(np.bincount(flat - lo if lo else flat, minlength=1))
        occupancy.append(distinct / min(hi - lo + 1, flat.size))
    s = sample.astype(np.int32)
    if s.shape[1] < 3 or s.shape[2] < 3:
        return float(np.median(occupancy)), 1.0
    first = np.abs(np.diff(s, axis=1)).mean() + np.abs(np.diff(s, axis=2)).mean()
    second = np.abs(np.diff(s, n=2, axis=1)).mean() + np.abs(np.diff(s, n=2, axis=2)).mean()
    return float(np.median(occupancy)), float(second / first) if first else 1.0


def codec_preference(planes: np.ndarray, bits: int) -> tuple[str, ...]:
    """Every candidate, the rule's pick first, then FALLBACK_ORDER (see the
    module docstring) for (P, H, W) planes of `bits`-bit data."""
    if bits <= 8:
        large = planes.shape[1] * planes.shape[2] >= LARGE_PLANE_PIXELS
        first = "jpegls" if large else "jpegxl-e2"
    else:
        occupancy, smoothness = plane_statistics(planes)
        if occupancy < SPARSE_OCCUPANCY:
            first = "jpegxl-e2"
        elif smoothness < SMOOTH_RATIO:
            first = "jpeg2k"
        else:
            first = "jpegxl-e3"
    return (first, *(c for c in FALLBACK_ORDER if c != first))


# -- decoding with the header's shape checked first ------------------------------
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_J2K_START = b"\xff\x4f\xff\x51"  # SOC, then SIZ
_SIZ = struct.Struct(
    ">HHIIIIIIIIH"
)  # Lsiz Rsiz Xsiz Ysiz XOsiz YOsiz XTsiz YTsiz XTOsiz YTOsiz Csiz


def _j2k_codestream_start(stream: bytes) -> int:
    """Offset of the JPEG 2000 codestream in a raw codestream or a JP2 file."""
    if stream[:4] == _J2K_START:
        return 0
    if not stream.startswith(_JP2_SIGNATURE):
        raise ValueError("neither a JPEG 2000 codestream nor a JP2 file")
    pos = 0
    while pos + 8 <= len(stream):
        size, kind = struct.unpack_from(">I4s", stream, pos)
        head = 8
        if size == 1:
            (size,) = struct.unpack_from(">Q", stream, pos + 8)
            head = 16
        elif size == 0:
            size = len(stream) - pos
        if kind == b"jp2c":
            return pos + head
        if size < head:
            break
        pos += size
    raise ValueError("JP2 file without a codestream box")


def _check_j2k_size(stream: bytes, shape: tuple[int, int]) -> None:
    """The JPEG 2000 decoder allocates the declared image before it compares it
    with `out`: read the size from the SIZ marker first (one component, one
    tile, `shape`, as the encoder writes)."""
    start = _j2k_codestream_start(stream)
    if stream[start : start + 4] != _J2K_START:
        raise ValueError("JPEG 2000 codestream does not start with SOC and SIZ")
    _, _, xsiz, ysiz, xo, yo, xt, yt, xto, yto, components = _SIZ.unpack_from(stream, start + 4)
    size = (ysiz - yo, xsiz - xo)
    one_tile = xto <= xo and yto <= yo and xt >= xsiz - xto and yt >= ysiz - yto
    if components != 1 or size != tuple(shape) or not one_tile:
        raise ValueError(
            f"codestream declares {size} px, {components} component(s), tiles {xt}x{yt}"
        )


def decode_plane(family: str, stream: bytes | memoryview, out: np.ndarray) -> None:
    """Decode one plane stream of `family` into `out` (H, W), whose shape and
    dtype the stream must declare; ValueError (or the codec's error) if not."""
    if family == "jpeg2k":
        _check_j2k_size(bytes(stream[: 1 << 16]), out.shape)
    result = _DECODERS[family](stream, out=out)
    if result is not out:  # every decoder writes into `out`; never trust a copy
        raise ValueError(f"{family} decoder did not decode into the {out.shape} plane")


@register_encryptor
class LosslessAes(Encryptor):
    """Lossless codec chosen by a measured rule, then AES-256-GCM."""

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
        unknown = [c for c in codecs if c not in CANDIDATES]
        if not codecs or unknown:
            raise ValueError(
                f"{self.name}: codecs {unknown or list(codecs)} not available; "
                f"available: {', '.join(CANDIDATES)}"
            )
        self.codecs = codecs

    def _encrypt_payload(self, images: np.ndarray, bits: int) -> tuple[bytes, dict[str, Any]]:
        n, c, h, w = images.shape
        planes = images.reshape(n * c, h, w)
        order = [name for name in codec_preference(planes, bits) if name in self.codecs]
        for name in order:
            codec = CANDIDATES[name]
            try:
                streams = [bytes(codec.encode(plane, bits)) for plane in planes]
            except Exception:  # noqa: BLE001 - a codec that cannot code this data gives way
                continue
            framing = np.array([len(s) for s in streams], dtype=">u4").tobytes()
            return framing + b"".join(streams), {"codec": codec.family, **dict(codec.extra)}
        raise ValueError(
            f"{self.name}: none of the codecs {', '.join(order)} codes "
            f"{images.dtype} images shaped {images.shape}"
        )

    def _decrypt_payload(self, header: Header, payload: bytes) -> np.ndarray:
        n, c, h, w = header.shape
        family = header.extra.get("codec")
        if family not in _DECODERS or not _available(family):
            available = [f for f in _DECODERS if _available(f)]
            raise ContainerError(
                f"{self.name}: container codec {family!r} is not available here "
                f"(available: {', '.join(available)})"
            )
        count = n * c
        if len(payload) < 4 * count:
            raise ContainerError(f"{self.name}: payload too short for {count} plane lengths")
        lengths = np.frombuffer(payload, dtype=">u4", count=count).astype(np.int64)
        if 4 * count + int(lengths.sum()) != len(payload):
            raise ContainerError(f"{self.name}: plane lengths do not add up to the payload size")
        out = np.empty((count, h, w), dtype=header.dtype)
        view = memoryview(payload)
        pos = 4 * count
        for i in range(count):
            length = int(lengths[i])
            try:
                decode_plane(family, view[pos : pos + length], out[i])
            except Exception as exc:  # noqa: BLE001 - any codec error: name the plane
                raise ContainerError(
                    f"{self.name}: {family} plane {i} does not decode as {h}x{w} "
                    f"{header.dtype}: {exc}"
                ) from None
            pos += length
        return out.reshape(n, c, h, w)
