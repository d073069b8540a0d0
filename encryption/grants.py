"""Key grants: a grantor's decryption material sealed to one grantee with HPKE.

A grant carries bytes (in medfed: `DecryptionMaterial.to_bytes()`) from the
grantor to the grantee through a server that stores and forwards it and
cannot open it. It is sealed with HPKE (encryption/hpke.py, RFC 9180,
DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / AES-256-GCM) to the grantee's
X25519 key as certified by the study CA, in Auth mode with the grantor's
certified identity key as sender key: Base mode would let anyone who knows
the grantee's public key (the server among them) seal a grant "from" a site;
Auth mode lets only the holder of the grantor's identity key make one.

Envelope (big-endian), every byte of it before `enc` is the HPKE aad:

    magic "MFGR" | version 1 | HPKE mode (0x02, Auth) | kem_id u16 | kdf_id u16 |
    aead_id u16 | key_version u32 | study (u16 length + UTF-8) |
    grantor (u8 length + ASCII) | grantee (u8 length + ASCII) |
    enc (32 bytes) | ciphertext length u32 | ciphertext (material + 16-byte tag)

The header is readable without any key (`read_grant_header`: the server
routes by it); it is authenticated, so changing it makes the grant fail to
open. Errors, all GrantError (a ValueError), one per cause:
MalformedGrantError, GrantAddresseeError (for another identity),
GrantContextError (other study, key version or grantor), GrantTamperedError
(also an IntegrityError: changed, or not sealed by the grantor's key); and
the CertificateError subclasses of encryption/pki.py for the certificates.
"""

from __future__ import annotations

import datetime as dt
import struct
from dataclasses import dataclass

from encryption import hpke
from encryption.container import IntegrityError
from encryption.identity import Identity
from encryption.pki import (
    PemLike,
    check_identity_name,
    check_study_name,
    verify_identity_certificate,
)

MAGIC = b"MFGR"
VERSION = 1
INFO = b"medfed/key-grant/v1"
_FIXED = struct.Struct(">4sBBHHHI")
_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
MAX_KEY_VERSION = 2**32 - 1


class GrantError(ValueError):
    """A grant that cannot be sealed or opened as asked."""


class MalformedGrantError(GrantError):
    """Bytes that are not a well-formed grant envelope of this version and suite."""


class GrantAddresseeError(GrantError):
    """A grant addressed to another identity."""


class GrantContextError(GrantError):
    """A grant for another study, key version or grantor than expected."""


class GrantTamperedError(GrantError, IntegrityError):
    """A grant that does not authenticate: changed, or not sealed by the grantor's key."""


@dataclass(frozen=True)
class GrantHeader:
    """Who granted what to whom: the envelope's readable, authenticated header."""

    study: str
    grantor: str
    grantee: str
    key_version: int

    def to_bytes(self) -> bytes:
        study = self.study.encode()
        return (
            _FIXED.pack(
                MAGIC,
                VERSION,
                hpke.MODE_AUTH,
                hpke.KEM_ID,
                hpke.KDF_ID,
                hpke.AEAD_ID,
                self.key_version,
            )  # fmt: skip
            + _U16.pack(len(study))
            + study
            + _U8.pack(len(self.grantor))
            + self.grantor.encode()
            + _U8.pack(len(self.grantee))
            + self.grantee.encode()
        )

    def describe(self) -> str:
        return (
            f"grant from {self.grantor} to {self.grantee} "
            f"(study {self.study!r}, key version {self.key_version})"
        )


def _check_version(key_version: int) -> int:
    if not isinstance(key_version, int) or isinstance(key_version, bool):
        raise TypeError(f"key_version must be an int, got {type(key_version).__name__}")
    if not 0 <= key_version <= MAX_KEY_VERSION:
        raise ValueError(f"key_version {key_version} is outside 0..{MAX_KEY_VERSION}")
    return key_version


def _parse(blob: bytes) -> tuple[GrantHeader, bytes, bytes, bytes]:
    """(header, aad, enc, ciphertext) of an envelope; MalformedGrantError otherwise."""
    blob = bytes(blob)
    pos = 0

    def take(n: int, what: str) -> bytes:
        nonlocal pos
        if pos + n > len(blob):
            raise MalformedGrantError(
                f"grant envelope: truncated in {what} ({len(blob)} bytes, needs {pos + n} so far)"
            )
        out = blob[pos : pos + n]
        pos += n
        return out

    magic, version, mode, kem, kdf, aead, key_version = _FIXED.unpack(
        take(_FIXED.size, "the fixed header")
    )
    if magic != MAGIC:
        raise MalformedGrantError("grant envelope: bad magic (not a medfed key grant)")
    if version != VERSION:
        raise MalformedGrantError(f"grant envelope: unsupported version {version}")
    suite = (mode, kem, kdf, aead)
    want = (hpke.MODE_AUTH, hpke.KEM_ID, hpke.KDF_ID, hpke.AEAD_ID)
    if suite != want:
        raise MalformedGrantError(
            "grant envelope: HPKE mode/suite "
            + "/".join(f"0x{v:04x}" for v in suite)
            + " is not "
            + "/".join(f"0x{v:04x}" for v in want)
        )
    try:
        study = take(_U16.unpack(take(2, "study length"))[0], "study").decode()
        grantor = take(take(1, "grantor length")[0], "grantor").decode("ascii")
        grantee = take(take(1, "grantee length")[0], "grantee").decode("ascii")
        check_study_name(study)
        check_identity_name(grantor)
        check_identity_name(grantee)
    except (UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, MalformedGrantError):
            raise
        raise MalformedGrantError(f"grant envelope: bad header ({exc})") from None
    aad = blob[:pos]
    enc = take(hpke.ENC_BYTES, "the encapsulated key")
    (ct_len,) = _U32.unpack(take(4, "ciphertext length"))
    if ct_len < hpke.TAG_BYTES:
        raise MalformedGrantError(f"grant envelope: ciphertext of {ct_len} bytes has no tag")
    ct = take(ct_len, "the ciphertext")
    if pos != len(blob):
        raise MalformedGrantError(
            f"grant envelope: {len(blob) - pos} bytes after the ciphertext (expected none)"
        )
    return GrantHeader(study, grantor, grantee, key_version), aad, enc, ct


def read_grant_header(blob: bytes) -> GrantHeader:
    """The header of a grant (no key needed: what a server stores and routes it by).

    Not authenticated until `open_grant` succeeds."""
    return _parse(blob)[0]


def seal_grant(
    material: bytes,
    *,
    grantor: Identity,
    grantee: str,
    grantee_cert: PemLike,
    study: str,
    key_version: int,
    ca_cert: PemLike | None = None,
    now: dt.datetime | None = None,
) -> bytes:
    """Seal `material` from `grantor` to `grantee`; the grant envelope.

    `grantee_cert` must be the study CA's certificate for `grantee` in
    `study` (CertificateError otherwise: a server that swapped in another
    key is caught here). `ca_cert`: the CA to trust (default: the grantor's).
    """
    check_study_name(study)
    check_identity_name(grantee)
    _check_version(key_version)
    if grantor.study != study:
        raise GrantContextError(
            f"grant for study {study!r}: the grantor identity {grantor.name} belongs to "
            f"study {grantor.study!r}"
        )
    recipient = verify_identity_certificate(
        grantee_cert,
        ca_cert=grantor.ca_certificate if ca_cert is None else ca_cert,
        identity=grantee,
        study=study,
        now=now,
    )
    header = GrantHeader(study, grantor.name, grantee, key_version)
    aad = header.to_bytes()
    enc, ct = hpke.seal(recipient, bytes(material), info=INFO, aad=aad, sender=grantor.private_key)
    return aad + enc + _U32.pack(len(ct)) + ct


def open_grant(
    blob: bytes,
    *,
    identity: Identity,
    grantor: str,
    grantor_cert: PemLike,
    study: str,
    key_version: int,
    ca_cert: PemLike | None = None,
    now: dt.datetime | None = None,
) -> bytes:
    """The material in a grant from `grantor` to `identity` for (`study`, `key_version`).

    `grantor_cert`: the study CA's certificate for `grantor` (its key
    authenticates the grant). `ca_cert`: the CA to trust (default: the
    identity's). Raises a GrantError or CertificateError naming the cause.
    """
    _check_version(key_version)
    header, aad, enc, ct = _parse(blob)
    if header.grantee != identity.name:
        raise GrantAddresseeError(
            f"{header.describe()} is addressed to {header.grantee}, not to {identity.name}"
        )
    for field, want in (("study", study), ("key_version", key_version), ("grantor", grantor)):
        if getattr(header, field) != want:
            raise GrantContextError(
                f"{header.describe()}: expected {field} {want!r}, the grant says "
                f"{getattr(header, field)!r}"
            )
    if identity.study != study:
        raise GrantContextError(
            f"identity {identity.name} belongs to study {identity.study!r}, not {study!r}"
        )
    sender = verify_identity_certificate(
        grantor_cert,
        ca_cert=identity.ca_certificate if ca_cert is None else ca_cert,
        identity=grantor,
        study=study,
        now=now,
    )
    try:
        return hpke.open_sealed(identity.private_key, enc, ct, info=INFO, aad=aad, sender=sender)
    except hpke.HPKEError:
        raise GrantTamperedError(
            f"{header.describe()} does not authenticate: it was changed in transit, or it was "
            f"not sealed by {grantor}'s certified key to {identity.name}'s key"
        ) from None
