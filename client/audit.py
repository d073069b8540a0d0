"""An audit of the files each site opens (for tests and for operators who want proof).

With `MEDFED_AUDIT_FILE_ACCESS=DIR` set, every process that runs the
ClientApp records, for each file it opens under a `sites/` folder, which
site's message it was handling and the path (DIR/access-<pid>.log, one
"site<TAB>path" line each). A site that opened another site's state folder
shows up as a line whose path is under `sites/site-K/` while the site was
not site-K. Python's audit hooks (sys.addaudithook) see every open() made
through Python, by medfed or by a library.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
from collections.abc import Iterator
from pathlib import Path

ENV = "MEDFED_AUDIT_FILE_ACCESS"
_current_site: contextvars.ContextVar[str | None] = contextvars.ContextVar("site", default=None)
_installed: dict[str, object] = {}  # per process: the log file, once


def _hook(event: str, args: tuple) -> None:
    if event != "open" or _installed.get("busy"):
        return
    site = _current_site.get()
    target = args[0] if args else None
    if site is None or isinstance(target, int) or target is None:
        return
    try:
        path = os.path.abspath(os.fsdecode(target))
    except (TypeError, ValueError):
        return
    if f"{os.sep}sites{os.sep}" not in path:
        return
    _installed["busy"] = True
    try:
        log = _installed["log"]
        log.write(f"{site}\t{path}\n")
        log.flush()
    finally:
        _installed["busy"] = False


def install() -> None:
    folder = os.environ.get(ENV)
    if not folder or "log" in _installed:
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    _installed["busy"] = True
    _installed["log"] = open(Path(folder) / f"access-{os.getpid()}.log", "a")  # noqa: SIM115
    _installed["busy"] = False
    sys.addaudithook(_hook)


@contextlib.contextmanager
def site_scope(site: str) -> Iterator[None]:
    """Opens inside this block are attributed to `site`."""
    install()
    token = _current_site.set(site)
    try:
        yield
    finally:
        _current_site.reset(token)


def foreign_opens(folder: str | os.PathLike) -> list[tuple[str, str]]:
    """(site, path) of every recorded open of another site's state folder."""
    out = []
    for log in Path(folder).glob("access-*.log"):
        for line in log.read_text().splitlines():
            site, _, path = line.partition("\t")
            parts = Path(path).parts
            if "sites" in parts:
                owner = (
                    parts[parts.index("sites") + 1]
                    if parts.index("sites") + 1 < len(parts)
                    else None
                )
                if owner is not None and owner.startswith("site-") and owner != site:
                    out.append((site, path))
    return out
