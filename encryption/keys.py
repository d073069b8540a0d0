"""Site keys: one 256-bit key per site, sub-keys by HKDF-SHA256, and the
site's key bundle (key + learned encryptor weights) on disk with mode 0600.

Learned weights are key material: the bundle never goes into a message.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from encryption.private_files import read_private_file, write_private_file

KEY_BYTES = 32
_SALT = b"medfed-v1"


def generate_key() -> bytes:
    """A fresh random 256-bit site key."""
    return secrets.token_bytes(KEY_BYTES)


def derive_key(key: bytes, purpose: str, length: int = KEY_BYTES) -> bytes:
    """Sub-key for `purpose` (e.g. "container/aes-gcm", "permutation")."""
    if len(key) != KEY_BYTES:
        raise ValueError(f"site key must be {KEY_BYTES} bytes, got {len(key)}")
    return HKDF(
        algorithm=hashes.SHA256(), length=length, salt=_SALT, info=b"medfed/" + purpose.encode()
    ).derive(key)


def derive_seed(key: bytes, purpose: str) -> int:
    """A 64-bit integer seed (permutations, chaotic-map initial values, inits)."""
    return int.from_bytes(derive_key(key, purpose, 8), "big")


def save_key_bundle(
    path: str | os.PathLike, key: bytes, method: str, state: dict[str, Any] | None = None
) -> Path:
    """Write key + method + encryptor state to `path` (mode 0600), in the
    pickle-free decryption-material format (encryption/material.py)."""
    from encryption.material import DecryptionMaterial

    if len(key) != KEY_BYTES:
        raise ValueError(f"site key must be {KEY_BYTES} bytes")
    path = Path(path)
    write_private_file(
        path, DecryptionMaterial(bytes(key), method, dict(state or {})).to_bytes(), overwrite=True
    )
    return path


def load_key_bundle(path: str | os.PathLike) -> tuple[bytes, str, dict[str, Any]]:
    """Read a bundle written by `save_key_bundle`: (key, method, state).

    Nothing is unpickled: a bundle in the old torch.save format is refused
    with a message to start a new out-dir (its key cannot be trusted to a
    loader that runs code)."""
    from encryption.material import MAGIC, DecryptionMaterial, MaterialError

    path = Path(path)
    data = read_private_file(path, "key bundle")
    if not data.startswith(MAGIC):
        raise ValueError(
            f"{path}: not a medfed key bundle of this version (an older, pickle-based bundle "
            "is not read); start the study in a new out-dir"
        )
    try:
        material = DecryptionMaterial.from_bytes(data)
    except MaterialError as exc:
        raise ValueError(f"{path}: not a medfed key bundle ({exc})") from None
    return material.key, material.method, material.state
