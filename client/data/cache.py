"""On-disk caches: decoded tensors per site, and scan results per dataset root.

Keys hash path + size + mtime_ns of every source file (and the decoding
options), so a changed file invalidates the entry. Writes go to a temp file
and os.replace, so concurrent sites never read half a file. Nothing is kept
in module-level state: several simulated sites may share one process.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

CACHE_VERSION = "1"


def file_stamp(path: str | os.PathLike) -> tuple[str, int, int]:
    st = os.stat(path)
    return (os.path.abspath(path), st.st_size, st.st_mtime_ns)


def fingerprint(paths: Iterable[str | os.PathLike], *extra: object) -> str:
    """sha256 over (path, size, mtime_ns) of each file and the extra parts."""
    h = hashlib.sha256(CACHE_VERSION.encode())
    for part in extra:
        h.update(repr(part).encode())
        h.update(b"\0")
    for path in paths:
        h.update(repr(file_stamp(path)).encode())
        h.update(b"\0")
    return h.hexdigest()


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_arrays(cache_dir: str | os.PathLike, name: str, key: str) -> dict[str, np.ndarray] | None:
    path = Path(cache_dir) / f"{name}-{key[:24]}.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError):
        return None  # a damaged entry is rebuilt


def store_arrays(
    cache_dir: str | os.PathLike, name: str, key: str, arrays: dict[str, np.ndarray]
) -> Path:
    """Write the entry and remove older entries of the same name."""
    cache_dir = Path(cache_dir)
    path = cache_dir / f"{name}-{key[:24]}.npz"
    _atomic_write(path, lambda fh: np.savez(fh, **arrays))
    for old in cache_dir.glob(f"{name}-*.npz"):
        if old != path and len(old.stem) == len(path.stem):
            old.unlink(missing_ok=True)
    return path


def load_object(cache_dir: str | os.PathLike, name: str, key: str):
    path = Path(cache_dir) / f"{name}-{key[:24]}.pkl"
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as fh:
            return pickle.load(fh)  # our own cache file, written below
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError):
        return None


def store_object(cache_dir: str | os.PathLike, name: str, key: str, obj) -> None:
    cache_dir = Path(cache_dir)
    path = cache_dir / f"{name}-{key[:24]}.pkl"
    _atomic_write(path, lambda fh: pickle.dump(obj, fh, protocol=pickle.HIGHEST_PROTOCOL))
    for old in cache_dir.glob(f"{name}-*.pkl"):
        if old != path and len(old.stem) == len(path.stem):
            old.unlink(missing_ok=True)
