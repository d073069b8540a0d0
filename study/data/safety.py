"""What a reader may open, and how large an image it may decode.

A hospital export is untrusted input: it may hold FIFOs, devices, sockets,
dangling or looping symlinks, symlinks that lead out of the data folder, and
files whose headers claim images far larger than the file. Every reader asks
this module before it opens or decodes anything:

- `file_problem(path, root)`: None for a regular file inside the data folder,
  else the reason it is refused. FIFOs, devices and sockets are never opened
  (opening a FIFO blocks until a writer appears, i.e. forever); a dangling or
  looping symlink is a reason, not an exception that stops a site; a symlink
  (or symlinked folder) that resolves outside the data folder is refused and
  its target named.
- `open_regular(path)`: opens without blocking (O_NONBLOCK) and re-checks the
  opened descriptor, so a file swapped for a FIFO after the check is refused
  rather than waited on.
- `inventory(root)`: one walk of the data folder into usable files and skips;
  the scan and its cache fingerprint both use it.
- `too_large(...)`: the reason for an image whose header claims more pixels
  (a plane) or voxels (a volume) than the study key `max-image-pixels`
  (default DEFAULT_MAX_IMAGE_PIXELS = 2**27 = 134217728), found from the
  header before any pixel buffer is allocated.

The walk is written here rather than with os.walk because os.walk files a
symlinked folder under "folders" and silently never enters it; we need to see
it to report one that leads out of the data folder.
"""

from __future__ import annotations

import errno
import io
import math
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from study.data.types import PathLike, Skip

DEFAULT_MAX_IMAGE_PIXELS = 2**27
# Non-pixel bytes a header may carry besides the pixels (DICOM elements, NIfTI
# extensions): bounds what is read or inflated before the pixel-size check.
MAX_HEADER_BYTES = 64 * 2**20


class UnsafeFileError(OSError):
    """A path that is not a regular file (FIFO, device, socket, folder) was about to be read."""


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "regular file"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a folder"
    return f"a special file (mode {stat.filemode(mode)})"


def _inside(real: str, root_real: str) -> bool:
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def _plain_descendant(path: Path, root: PathLike) -> bool:
    """True when path is root/a/b/... with no '..' and no symlinked folder below root.

    Then it lies inside root whatever root itself resolves to, and realpath (an
    lstat of every component from /) is not needed: one lstat per folder below root.
    """
    abs_root = os.path.abspath(root)
    abs_path = os.path.abspath(path)
    if not abs_path.startswith(abs_root.rstrip(os.sep) + os.sep) or ".." in Path(path).parts:
        return False
    folder = abs_root
    for part in abs_path[len(abs_root.rstrip(os.sep)) + 1 :].split(os.sep)[:-1]:
        folder = os.path.join(folder, part)
        if os.path.islink(folder):
            return False
    return True


def file_problem(path: PathLike, root: PathLike, *, root_real: str | None = None) -> str | None:
    """None when path is a regular file inside root (after every symlink), else why not.

    Nothing is opened: only lstat/stat and the symlink targets are looked at.
    root_real: os.path.realpath(root), when the caller checks many paths.
    """
    path = Path(path)
    try:
        st = os.lstat(path)
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    link = stat.S_ISLNK(st.st_mode)
    if link:
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        try:
            st = os.stat(path)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return f"looping symlink (to {target}): too many levels of symbolic links"
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return f"dangling symlink to {target} (its target does not exist)"
            return f"symlink to {target} cannot be followed: {exc.strerror or exc}"
    kind = _kind(st.st_mode)
    if kind != "regular file":
        what = f"symlink to {kind}" if link else kind
        return f"{what}, not a regular file: never opened"
    if not link and _plain_descendant(path, root):
        return None
    real = os.path.realpath(path)
    root_real = root_real or os.path.realpath(root)
    if not _inside(real, root_real):
        if link:
            return f"symlink to {real}, outside the data folder {root_real}: not read"
        return (
            f"resolves to {real} through a symlinked folder, outside the data folder "
            f"{root_real}: not read"
        )
    return None


def open_regular(path: PathLike) -> BinaryIO:
    """Open a regular file for binary reading; never blocks, refuses anything else.

    O_NONBLOCK makes open() of a FIFO return at once instead of waiting for a
    writer; fstat on the descriptor then decides, so no race with a swapped file.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UnsafeFileError(
                errno.EINVAL, f"{_kind(mode)}, not a regular file: never read", str(path)
            )
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def open_text(path: PathLike) -> io.TextIOWrapper:
    """open_regular for a CSV sidecar: UTF-8 (a leading BOM, as spreadsheets write, is dropped)."""
    return io.TextIOWrapper(open_regular(path), encoding="utf-8-sig", newline="")


def read_head(path: PathLike, size: int) -> bytes:
    """The first `size` bytes of a regular file (fewer when it is shorter)."""
    with open_regular(path) as fh:
        return fh.read(size)


@dataclass(frozen=True)
class Inventory:
    """A data folder's entries: regular files inside it, and everything refused with its reason."""

    files: list[Path]
    skipped: list[Skip]


def inventory(root: PathLike) -> Inventory:
    """Walk root (any depth; hidden names skipped) without following symlinked folders.

    Order is that of os.walk top-down with sorted names: a folder's files, then
    its subfolders. A symlink to a file inside root is a usable file; a
    symlinked folder inside root is not entered (its target is walked at its
    own path); one leading outside root is reported.
    """
    root = Path(root)
    root_real = os.path.realpath(root)
    files: list[Path] = []
    skipped: list[Skip] = []

    def where(path: Path) -> str:
        try:
            return path.relative_to(root).as_posix()
        except ValueError:
            return str(path)

    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(
                    (e for e in it if not e.name.startswith(".")), key=lambda e: e.name
                )
        except OSError as exc:
            skipped.append(Skip(where(folder), f"cannot list folder: {exc.strerror or exc}"))
            continue
        subfolders = []
        for entry in entries:
            path = Path(entry.path)
            try:
                if entry.is_dir(follow_symlinks=False):
                    subfolders.append(path)
                    continue
                if entry.is_file(follow_symlinks=False):
                    files.append(path)
                    continue
                linked_dir = entry.is_symlink() and entry.is_dir(follow_symlinks=True)
            except OSError:
                linked_dir = False
            if linked_dir:
                real = os.path.realpath(path)
                if not _inside(real, root_real):
                    skipped.append(
                        Skip(
                            where(path),
                            f"symlinked folder to {real}, outside the data folder {root_real}: "
                            "not read",
                        )
                    )
                continue
            problem = file_problem(path, root, root_real=root_real)
            if problem:
                skipped.append(Skip(where(path), problem))
            else:
                files.append(path)
        stack.extend(reversed(subfolders))
    return Inventory(files, skipped)


def check_limit(max_image_pixels: int) -> int:
    """The limit itself must be a positive int (a clear error naming the key otherwise)."""
    if isinstance(max_image_pixels, bool) or not isinstance(max_image_pixels, int):
        raise ValueError(f"max-image-pixels must be an integer, got {max_image_pixels!r}")
    if max_image_pixels < 1:
        raise ValueError(f"max-image-pixels must be >= 1, got {max_image_pixels}")
    return max_image_pixels


def too_large(
    dims: Sequence[int], limit: int, *, unit: str = "pixels", detail: str = ""
) -> str | None:
    """None when prod(dims) <= limit, else a reason naming the claimed size and the limit."""
    total = math.prod(int(d) for d in dims)
    if total <= limit:
        return None
    shape = " x ".join(str(int(d)) for d in dims)
    return (
        f"image too large: header claims {shape}{detail} = {total} {unit}, over "
        f"max-image-pixels {limit} (skipped before decoding)"
    )
