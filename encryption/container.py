"""The ciphertext container shared by every method.

Layout (version 1, all integers big-endian):

    magic    4 bytes  b"MFED"
    version  1 byte   1
    hlen     2 bytes  length of the header JSON
    header   hlen     UTF-8 JSON: method, shape, dtype, bits, extra
    nonce    12 bytes
    plen     8 bytes  payload length
    payload  plen     AES-GCM ciphertext, or the method's cipher-image
    tag      16 bytes AES-GCM tag over everything before it

For AES methods the payload is encrypted with AES-256-GCM and the prefix
(magic .. plen) is associated data. For learned methods the payload is the
method's own output, stored as is, and authenticated with GMAC (AES-GCM
over an empty plaintext with prefix + payload as associated data): their
confidentiality is the method's own, their integrity is not left to chance.

`open_container` only ever returns a valid (Header, payload) or raises
ContainerError (IntegrityError for a failed tag).

Any key holder (a consortium peer) can seal a container, so an authentic tag
does not make a header honest: a header declaring more than
`MAX_CONTAINER_VALUES` pixel values is refused before anything is decoded,
and each method checks its `extra` fields against what its own encryptor
would have written (`require_extra`) before it allocates or loops on them.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"MFED"
VERSION = 1
NONCE_BYTES = 12
TAG_BYTES = 16
_FIXED = struct.Struct(">4sBH")
_PLEN = struct.Struct(">Q")
MAX_HEADER_BYTES = 4096
# Largest N * C * H * W one container may declare (256 MiB of uint16 pixels):
# bounds what decryption of any authentic container allocates. Encryptors
# refuse larger batches (split them), so every container they write decodes.
MAX_CONTAINER_VALUES = 2**27
_DTYPES = ("uint8", "uint16")


class ContainerError(ValueError):
    """A container that is malformed, truncated or for another method."""


class IntegrityError(ContainerError):
    """The AEAD tag did not verify: wrong key, or the bytes were changed."""


@dataclass(frozen=True)
class Header:
    method: str
    shape: tuple[int, ...]
    dtype: str
    bits: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        doc = {
            "method": self.method,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "bits": self.bits,
            "extra": self.extra,
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Header:
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ContainerError(f"container header is not valid JSON: {exc}") from None
        if not isinstance(doc, dict) or set(doc) != {"method", "shape", "dtype", "bits", "extra"}:
            raise ContainerError(
                "container header must hold exactly method, shape, dtype, bits, extra"
            )
        method, shape, dtype, bits, extra = (
            doc[k] for k in ("method", "shape", "dtype", "bits", "extra")
        )
        if not isinstance(method, str) or not method:
            raise ContainerError("container header: method must be a non-empty string")
        if (
            not isinstance(shape, list)
            or len(shape) != 4
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)
        ):
            raise ContainerError(f"container header: shape must be 4 positive ints, got {shape!r}")
        values = shape[0] * shape[1] * shape[2] * shape[3]
        if values > MAX_CONTAINER_VALUES:
            raise ContainerError(
                f"container header: shape {shape} declares {values} values, "
                f"more than the limit {MAX_CONTAINER_VALUES}"
            )
        if dtype not in _DTYPES:
            raise ContainerError(f"container header: dtype must be one of {_DTYPES}, got {dtype!r}")
        top = 8 if dtype == "uint8" else 16
        if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= top:
            raise ContainerError(
                f"container header: bits must be 1..{top} for {dtype}, got {bits!r}"
            )
        if not isinstance(extra, dict):
            raise ContainerError("container header: extra must be an object")
        return cls(method=method, shape=tuple(shape), dtype=dtype, bits=bits, extra=extra)


def require_extra(header: Header, method: str, key: str, expected: Any) -> Any:
    """`expected` if the header's `extra[key]` equals it, else ContainerError
    naming the method and the key. Callers go on with `expected` (their own
    value), never with what the container says."""
    got = header.extra.get(key, "<missing>")
    if type(got) is bool and type(expected) is not bool or got != expected:
        raise ContainerError(f"{method}: container field {key}={got!r}, expected {expected!r}")
    return expected


def is_native_panic(exc: BaseException) -> bool:
    """True for a panic raised by a native (Rust, via pyo3) extension: pyo3's
    PanicException derives from BaseException, so `except Exception` misses it."""
    return type(exc).__module__ == "pyo3_runtime" and type(exc).__name__ == "PanicException"


def seal_container(
    key: bytes, header: Header, payload: bytes, *, encrypt: bool, nonce: bytes
) -> bytes:
    """Build a container; `encrypt` chooses AES-GCM payload or GMAC-only."""
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"nonce must be {NONCE_BYTES} bytes")
    raw_header = header.to_bytes()
    if len(raw_header) > MAX_HEADER_BYTES:
        raise ValueError(f"container header too large ({len(raw_header)} bytes)")
    aead = AESGCM(key)
    body_len = len(payload)
    prefix = (
        _FIXED.pack(MAGIC, VERSION, len(raw_header)) + raw_header + nonce + _PLEN.pack(body_len)
    )
    if encrypt:
        sealed = aead.encrypt(nonce, payload, prefix)  # ciphertext || tag
        return prefix + sealed
    tag = aead.encrypt(nonce, b"", prefix + payload)
    return prefix + payload + tag


def read_header(blob: bytes) -> Header:
    """The header of a container, parsed but NOT authenticated (for routing
    and accounting only; `open_container` authenticates)."""
    return _split(blob)[0]


def read_body(blob: bytes) -> tuple[Header, bytes]:
    """Header and raw payload (ciphertext for AES methods), NOT authenticated:
    what an eavesdropper sees; used for the cipher view of the metrics."""
    header, _, _, body, _ = _split(blob)
    return header, body


def _split(blob: bytes) -> tuple[Header, bytes, bytes, bytes, bytes]:
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise ContainerError(f"container must be bytes, got {type(blob).__name__}")
    blob = bytes(blob)
    if len(blob) < _FIXED.size:
        raise ContainerError(f"container truncated: {len(blob)} bytes")
    magic, version, hlen = _FIXED.unpack_from(blob)
    if magic != MAGIC:
        raise ContainerError(f"not a medfed container (magic {magic!r})")
    if version != VERSION:
        raise ContainerError(
            f"unsupported container version {version} (this build reads {VERSION})"
        )
    if hlen > MAX_HEADER_BYTES:
        raise ContainerError(f"container header length {hlen} exceeds {MAX_HEADER_BYTES}")
    pos = _FIXED.size + hlen
    if len(blob) < pos + NONCE_BYTES + _PLEN.size + TAG_BYTES:
        raise ContainerError(f"container truncated: {len(blob)} bytes")
    header = Header.from_bytes(blob[_FIXED.size : pos])
    nonce = blob[pos : pos + NONCE_BYTES]
    (plen,) = _PLEN.unpack_from(blob, pos + NONCE_BYTES)
    body_start = pos + NONCE_BYTES + _PLEN.size
    if len(blob) != body_start + plen + TAG_BYTES:
        raise ContainerError(
            f"container length {len(blob)} does not match its payload length {plen} "
            "(truncated or padded)"
        )
    prefix = blob[:body_start]
    return header, prefix, nonce, blob[body_start : body_start + plen], blob[body_start + plen :]


def open_container(key: bytes, blob: bytes, *, encrypted: bool) -> tuple[Header, bytes]:
    """Authenticate and open a container; return (header, plaintext payload)."""
    header, prefix, nonce, body, tag = _split(blob)
    aead = AESGCM(key)
    try:
        if encrypted:
            payload = aead.decrypt(nonce, body + tag, prefix)
        else:
            aead.decrypt(nonce, tag, prefix + body)
            payload = body
    except InvalidTag:
        raise IntegrityError(
            f"{header.method} container failed authentication: wrong key or altered bytes"
        ) from None
    return header, payload
