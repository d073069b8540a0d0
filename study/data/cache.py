"""On-disk caches: decoded tensors per site (npz), and scan results per dataset root (JSON).

Keys hash path + size + mtime_ns + inode of every source file (and the
decoding options), so a changed file invalidates the entry. Writes go to a
temp file and os.replace, so concurrent sites never read half a file.
Nothing is kept in module-level state: several simulated sites may share one
process.

Nothing is unpickled: a cache folder is only as trustworthy as the disk it
is on, and unpickling a crafted file runs its code. Scan results are plain
JSON; arrays are npz read with allow_pickle=False after each member's npy
header has been checked against its stored size (so a crafted header cannot
make np.load allocate more than the file holds). A damaged or crafted entry
reads as a miss and is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

CACHE_VERSION = "2"


def file_stamp(path: str | os.PathLike) -> tuple[str, int, int, int]:
    """(absolute path, size, mtime_ns, inode); a path that cannot be followed stamps its link."""
    try:
        st = os.stat(path)
    except OSError:
        try:
            st = os.lstat(path)
        except OSError:
            return (os.path.abspath(path), -1, -1, -1)
    return (os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ino)


def fingerprint(paths: Iterable[str | os.PathLike], *extra: object) -> str:
    """sha256 over (path, size, mtime_ns, inode) of each file and the extra parts."""
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


def _drop_older(cache_dir: Path, name: str, keep: Path, suffixes: tuple[str, ...]) -> None:
    """Remove older entries of the same name (other keys), including legacy pickles."""
    for suffix in suffixes:
        for old in cache_dir.glob(f"{name}-*{suffix}"):
            if old != keep and len(old.name) - len(suffix) == len(keep.stem):
                old.unlink(missing_ok=True)


def _npz_is_plain(path: Path) -> bool:
    """Every member a stored (uncompressed) .npy of a non-object dtype whose header fits its size."""
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy") or info.compress_type != zipfile.ZIP_STORED:
                return False
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(member)
                elif version in ((2, 0), (3, 0)):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(member)
                else:
                    return False
                if dtype.hasobject:
                    return False
                count = 1
                for dim in shape:
                    count *= int(dim)
                if member.tell() + count * dtype.itemsize != info.file_size:
                    return False
    return True


def load_arrays(cache_dir: str | os.PathLike, name: str, key: str) -> dict[str, np.ndarray] | None:
    path = Path(cache_dir) / f"{name}-{key[:24]}.npz"
    if not path.is_file():
        return None
    try:
        if not _npz_is_plain(path):
            return None
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError):
        return None  # a damaged or crafted entry is rebuilt


def store_arrays(
    cache_dir: str | os.PathLike, name: str, key: str, arrays: dict[str, np.ndarray]
) -> Path:
    """Write the entry and remove older entries of the same name."""
    cache_dir = Path(cache_dir)
    path = cache_dir / f"{name}-{key[:24]}.npz"
    _atomic_write(path, lambda fh: np.savez(fh, **arrays))
    _drop_older(cache_dir, name, path, (".npz",))
    return path


def load_json(cache_dir: str | os.PathLike, name: str, key: str) -> object | None:
    """The JSON value stored under (name, key), or None (absent, damaged, or another key)."""
    path = Path(cache_dir) / f"{name}-{key[:24]}.json"
    if not path.is_file():
        return None
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (
        not isinstance(entry, dict)
        or entry.get("cache_version") != CACHE_VERSION
        or entry.get("key") != key
        or "value" not in entry
    ):
        return None
    return entry["value"]


def store_json(cache_dir: str | os.PathLike, name: str, key: str, value: object) -> Path:
    """Write a JSON value (plain data only) and remove older entries of the same name."""
    cache_dir = Path(cache_dir)
    path = cache_dir / f"{name}-{key[:24]}.json"
    text = json.dumps({"cache_version": CACHE_VERSION, "key": key, "value": value})
    _atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))
    _drop_older(cache_dir, name, path, (".json", ".pkl"))
    return path
