"""Checks that run before a study starts anything (no Ray, no Flower, no data):
a problem with the output folder is one clear line, not a traceback after
the federation has started."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

# a study writes little per round; below this much free space it would fail mid-run
MIN_FREE_BYTES = 50 * 1024 * 1024


class OutDirError(ValueError):
    """The output folder cannot hold a study's results."""


def check_out_dir(out: str | os.PathLike, *, min_free_bytes: int = MIN_FREE_BYTES) -> Path:
    """The absolute output folder, created, writable and with room; else OutDirError."""
    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise OutDirError(f"out-dir {out}: is a file, not a folder; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".medfed-write-check-") as fh:
            fh.write(b"\0" * 4096)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise OutDirError(f"out-dir {out}: cannot write there: {describe_os_error(exc)}") from None
    free = shutil.disk_usage(out).free
    if free < min_free_bytes:
        raise OutDirError(
            f"out-dir {out}: only {free / 1e6:.1f} MB free on its disk; a study needs at "
            f"least {min_free_bytes / 1e6:.0f} MB: free some space or choose another --out"
        )
    return out


def describe_os_error(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "the disk is full"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "permission denied (read-only folder or file system)"
    return exc.strerror or str(exc)
