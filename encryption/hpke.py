"""HPKE (RFC 9180), single-shot, for one cipher suite:
DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / AES-256-GCM.

The protocol is pyhpke's (a maintained RFC 9180 implementation on the
`cryptography` primitives); this module fixes the suite, takes and returns
`cryptography` X25519 keys and turns every failure into one `HPKEError`
with a plain message. Two modes: Base (anyone holding the recipient's public
key can seal) and Auth (the sender's static X25519 key is bound in the KEM,
so only the holder of that key could have sealed). tests/test_hpke.py checks
both against RFC 9180's published test vectors.

`seal` returns `(enc, ciphertext)`: `enc` is the 32-byte encapsulated
ephemeral public key, the ciphertext is the AES-256-GCM output with its
16-byte tag. `info` binds the application context into the key schedule,
`aad` is authenticated but not encrypted.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from pyhpke import AEADId, CipherSuite, KDFId, KEMId, KEMKey, KEMKeyPair, PyHPKEError

from encryption.container import IntegrityError

KEM_ID = 0x0020  # DHKEM(X25519, HKDF-SHA256)
KDF_ID = 0x0001  # HKDF-SHA256
AEAD_ID = 0x0002  # AES-256-GCM
MODE_AUTH = 0x02
ENC_BYTES = 32  # Nenc of DHKEM(X25519)
TAG_BYTES = 16  # Nt of AES-256-GCM

_SUITE = CipherSuite.new(KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256, AEADId.AES256_GCM)


class HPKEError(IntegrityError):
    """A ciphertext that does not open: wrong key, wrong info/aad, wrong sender, or changed."""


def _kem_key(key: X25519PrivateKey | X25519PublicKey, role: str):
    if not isinstance(key, X25519PrivateKey | X25519PublicKey):
        raise TypeError(f"HPKE {role} must be an X25519 key, got {type(key).__name__}")
    return KEMKey.from_pyca_cryptography_key(key)


def seal(
    recipient: X25519PublicKey,
    plaintext: bytes,
    *,
    info: bytes = b"",
    aad: bytes = b"",
    sender: X25519PrivateKey | None = None,
    ephemeral: X25519PrivateKey | None = None,
) -> tuple[bytes, bytes]:
    """Seal `plaintext` to `recipient`: (enc, ciphertext).

    `sender`: Auth mode with this static key (the recipient opens with its
    public key); None: Base mode. `ephemeral` fixes the ephemeral key: only
    for reproducing published test vectors, never in use (a reused ephemeral
    key with the same recipient and info reuses the AEAD key and nonce).
    """
    pkr = _kem_key(recipient, "recipient")
    sks = None if sender is None else _kem_key(sender, "sender")
    eks = None
    if ephemeral is not None:
        eks = KEMKeyPair(
            _kem_key(ephemeral, "ephemeral key"), _kem_key(ephemeral.public_key(), "ephemeral key")
        )
    try:
        enc, ctx = _SUITE.create_sender_context(pkr, info=bytes(info), sks=sks, eks=eks)
        return enc, ctx.seal(bytes(plaintext), aad=bytes(aad))
    except (PyHPKEError, ValueError) as exc:
        raise HPKEError(f"HPKE seal failed: {exc}") from None


def open_sealed(
    recipient: X25519PrivateKey,
    enc: bytes,
    ciphertext: bytes,
    *,
    info: bytes = b"",
    aad: bytes = b"",
    sender: X25519PublicKey | None = None,
) -> bytes:
    """Open what `seal` made; HPKEError when it does not authenticate.

    `sender`: the public key the sealer used in Auth mode (None: Base mode).
    """
    skr = _kem_key(recipient, "recipient")
    pks = None if sender is None else _kem_key(sender, "sender")
    if len(enc) != ENC_BYTES:
        raise HPKEError(f"HPKE: encapsulated key must be {ENC_BYTES} bytes, got {len(enc)}")
    if len(ciphertext) < TAG_BYTES:
        raise HPKEError(f"HPKE: ciphertext of {len(ciphertext)} bytes is shorter than its tag")
    try:
        ctx = _SUITE.create_recipient_context(bytes(enc), skr, info=bytes(info), pks=pks)
        return ctx.open(bytes(ciphertext), aad=bytes(aad))
    except (PyHPKEError, ValueError) as exc:
        # ValueError: an encapsulated key that is a low-order point (all-zero X25519 output)
        cause = "changed" if isinstance(exc, PyHPKEError) else f"invalid ({exc})"
        raise HPKEError(
            "HPKE: the ciphertext does not open with this key (wrong recipient, sender, "
            f"info or aad, or {cause})"
        ) from None
