"""Private key files: written with mode 0600, refused when group or world can read them.

Shared by identity keys (encryption/identity.py) and the study CA key
(encryption/pki.py). A file whose mode lets anyone but its owner read it is
treated as leaked and not used: fix the mode (or rotate the key) first.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from cryptography.hazmat.primitives import serialization

K = TypeVar("K")


class KeyFilePermissionError(PermissionError):
    """A private key file that group or others may read or write."""


class UnsafeFileError(OSError):
    """A file that is not read: a link, not a regular file, too large, or refused by
    the caller's check of its status (the message says which, without the path)."""


def read_regular_file(
    path: str | os.PathLike,
    cap: int,
    check: Callable[[os.stat_result], str | None] | None = None,
) -> bytes:
    """At most `cap` bytes of the regular file `path`, opened without following a
    link (the last component). OSError when it cannot be opened; UnsafeFileError
    when it is not a regular file, is larger than `cap` (before or while it is
    read), or `check` (given the open file's status) returns a reason."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFileError("not a regular file")
        reason = check(st) if check is not None else None
        if reason:
            raise UnsafeFileError(reason)
        if st.st_size > cap:
            raise UnsafeFileError(f"{st.st_size} bytes, more than the {cap} it may hold")
        data = fh.read(cap + 1)
    if len(data) > cap:
        raise UnsafeFileError("grew while it was read")
    return data


def write_private_file(path: str | os.PathLike, data: bytes, *, overwrite: bool = False) -> Path:
    """Write `data` to `path` with mode 0600 (atomically: a 0600 temp file, then rename).

    FileExistsError if `path` exists and not `overwrite`.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists; not overwriting a private key")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return path


def read_private_file(path: str | os.PathLike, what: str = "private key") -> bytes:
    """The bytes of a private file; KeyFilePermissionError if its mode is not owner-only."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise KeyFilePermissionError(
            f"{what} {path} is accessible to group or others (mode {mode:o}); "
            "chmod 600 it (and rotate it if others may have read it)"
        )
    return path.read_bytes()


def load_private_key_file(path: str | os.PathLike, kind: type[K], what: str = "private key") -> K:
    """An unencrypted PKCS#8 PEM private key of class `kind` from a 0600 file."""
    data = read_private_file(path, what)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{what} {path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, kind):
        raise ValueError(f"{what} {path}: a {type(key).__name__}, expected {kind.__name__}")
    return key


def private_key_pem(key) -> bytes:
    """PKCS#8 PEM, unencrypted (the file's mode protects it)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
