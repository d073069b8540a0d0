"""The server's encrypted archive: content-addressed containers and grants it cannot read.

    archive/objects/<sha[:2]>/<sha256>   one container or grant per file, as received
    archive/certificates/<identity>.crt  the identities' certificates (public)
    archive/grants-delivered.jsonl       the grants delivered (server.grants)
    archive/index.jsonl                  one line per stored object: sha256, site,
                                         round, kind (images | labels | grant),
                                         bytes, method and shape (containers),
                                         grantee and key_version (grants)

The server never holds a site key or an identity key; it reads only the
unauthenticated headers (method, shape; grantor, grantee, version) for the
index. Only a grantee reads: `medfed archive open RUN --identity KEY`.

Whoever can write archive/ is not trusted: an object is read only as a
regular file inside objects/ (no link, at any level below the archive), its
name must be exactly 64 lowercase hex digits and its content must hash to
it, else `ArchiveError` names the object and what is wrong (a link to any
other file of the run folder never leaves the archive as an object). Each
index line is checked field by field (site `site-N`, sha256, round, kind,
bytes; grantee and key_version of a grant) before any value names a file:
`read_index` returns the good lines and one problem per bad line, naming
the file and the line; `index()` refuses the first bad line.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from pathlib import Path
from typing import Any

from encryption.container import MAX_CONTAINER_VALUES, ContainerError, read_header
from encryption.pki import check_identity_name
from study.schema import SchemaError, append_jsonl, loads

KINDS = ("images", "labels", "grant")
_DIGEST = re.compile(r"[0-9a-f]{64}")
_SITE = re.compile(r"site-(0|[1-9][0-9]{0,5})")
MAX_ROUND = 10**7
MAX_KEY_VERSION = 2**31 - 1
# The largest object read: a container at the value limit in uint16, with room
# for padding and its header; a certificate is far smaller.
MAX_OBJECT_BYTES = 4 * MAX_CONTAINER_VALUES + 2**20
MAX_CERTIFICATE_BYTES = 2**16
_NOFOLLOW = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


class ArchiveError(ValueError):
    """An archive object, certificate or index line that cannot be trusted."""


def check_digest(digest: Any, where: str = "archive object") -> str:
    """`digest` if it is a sha256 as the archive names objects: 64 lowercase hex."""
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise ArchiveError(f"{where}: sha256 {digest!r} is not 64 lowercase hex digits")
    return digest


def check_site(site: Any, where: str = "archive") -> str:
    if not isinstance(site, str) or not _SITE.fullmatch(site):
        raise ArchiveError(f"{where}: site {site!r} is not a site name (site-N)")
    return site


def _int_field(entry: dict, key: str, low: int, high: int) -> int:
    value = entry.get(key)
    if type(value) is not int or not low <= value <= high:
        raise ValueError(f"{key} {value!r} is not an integer in {low}..{high}")
    return value


def check_entry(entry: Any) -> dict:
    """An index line's document, its fields checked; ValueError says which is wrong."""
    if not isinstance(entry, dict):
        raise ValueError(f"not a JSON object but {type(entry).__name__}")
    digest, site = entry.get("sha256"), entry.get("site")
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise ValueError(f"sha256 {digest!r} is not 64 lowercase hex digits")
    if not isinstance(site, str) or not _SITE.fullmatch(site):
        raise ValueError(f"site {site!r} is not a site name (site-N)")
    _int_field(entry, "round", 0, MAX_ROUND)
    _int_field(entry, "bytes", 0, MAX_OBJECT_BYTES)
    kind = entry.get("kind")
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    if kind == "grant":
        try:
            check_identity_name(entry.get("grantee"))
        except ValueError as exc:
            raise ValueError(f"grantee: {exc}") from None
        _int_field(entry, "key_version", 0, MAX_KEY_VERSION)
    else:
        method, shape = entry.get("method"), entry.get("shape")
        if method is not None and not isinstance(method, str):
            raise ValueError(f"method {method!r} is not a string")
        if shape is not None and not (
            isinstance(shape, list)
            and len(shape) == 4
            and all(type(v) is int and v > 0 for v in shape)
        ):
            raise ValueError(f"shape {shape!r} is not 4 positive integers")
    return entry


def _open_nofollow(name: str, dir_fd: int | None, *, directory: bool) -> int:
    flags = _NOFOLLOW | (os.O_DIRECTORY if directory else 0)
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK, errno.ENOTDIR):
            raise ArchiveError(
                f"{name} is a link or not a {'folder' if directory else 'file'}"
            ) from None
        raise


class Archive:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.index_path = self.root / "index.jsonl"

    def put(
        self, blob: bytes, *, site: str, server_round: int, kind: str, extra: dict | None = None
    ) -> str:
        """Store a container or a grant (idempotent); return its sha256. An object
        already there is kept only if it reads back verified (else replaced: a
        link or altered file is never trusted, nor written through)."""
        digest = hashlib.sha256(blob).hexdigest()
        path = self.objects / digest[:2] / digest
        try:
            self.get(digest)
        except (ArchiveError, FileNotFoundError):
            self._write(path, blob)
        method, shape = None, None
        if kind != "grant":
            try:
                header = read_header(blob)
                method, shape = header.method, list(header.shape)
            except ContainerError as exc:
                method = f"unreadable: {exc}"
        entry = {
            "sha256": digest,
            "site": site,
            "round": server_round,
            "kind": kind,
            "bytes": len(blob),
            "method": method,
            "shape": shape,
            **(extra or {}),
        }
        append_jsonl(self.index_path, entry)
        return digest

    def put_certificate(self, identity: str, pem: bytes) -> None:
        """Keep an identity's certificate (public) beside the grants it signs or
        receives, so a grantee can check the grants it reads from the archive."""
        check_identity_name(identity)
        try:
            if self.certificate(identity) == pem:
                return
        except ArchiveError:
            pass  # a link or an oversized file in its place: replaced below
        self._write(self.root / "certificates" / f"{identity}.crt", pem)

    def _write(self, path: Path, data: bytes) -> None:
        """Write `path` (below the archive root) atomically, never through a link:
        a link or file planted where a folder or the temporary file goes is
        replaced."""
        folders = path.parent.relative_to(self.root).parts
        for depth in range(1, len(folders) + 1):
            folder = self.root.joinpath(*folders[:depth])
            if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
                folder.unlink()
            folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)

    def certificate(self, identity: str) -> bytes | None:
        """The certificate kept for `identity` (a checked identity name), read as a
        regular file of certificates/ (no link); None if there is none."""
        check_identity_name(identity)
        try:
            return self._read(("certificates", f"{identity}.crt"), MAX_CERTIFICATE_BYTES)
        except FileNotFoundError:
            return None

    def get(self, digest: str) -> bytes:
        """The object `digest`, read as a regular file inside objects/ (no link)
        and verified: its sha256 must be its name. ArchiveError says what is
        wrong; FileNotFoundError if the archive has no such object."""
        check_digest(digest)
        where = f"{self.objects}/{digest[:2]}/{digest}"
        try:
            blob = self._read(("objects", digest[:2], digest), MAX_OBJECT_BYTES)
        except FileNotFoundError:
            raise FileNotFoundError(f"archive has no object {digest} ({where})") from None
        except ArchiveError as exc:
            raise ArchiveError(f"archive object {where}: {exc}; not used") from None
        got = hashlib.sha256(blob).hexdigest()
        if got != digest:
            raise ArchiveError(
                f"archive object {where}: its content has sha256 {got}, not its name "
                "(altered or replaced); not used"
            )
        return blob

    def _read(self, parts: tuple[str, ...], limit: int) -> bytes:
        """The file root/parts[0]/.../parts[-1], each level opened without following
        a link; a regular file of at most `limit` bytes."""
        fds = [os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))]
        try:
            for name in parts[:-1]:
                fds.append(_open_nofollow(name, fds[-1], directory=True))
            fd = _open_nofollow(parts[-1], fds[-1], directory=False)
            with os.fdopen(fd, "rb") as fh:
                info = os.fstat(fh.fileno())
                if not stat.S_ISREG(info.st_mode):
                    raise ArchiveError(f"{parts[-1]} is not a regular file")
                if info.st_size > limit:
                    raise ArchiveError(f"{parts[-1]} is {info.st_size} bytes, over {limit}")
                data = fh.read(limit + 1)
            if len(data) > limit:
                raise ArchiveError(f"{parts[-1]} grew over {limit} bytes while read")
            return data
        finally:
            for fd in fds:
                os.close(fd)

    def read_index(self) -> tuple[list[dict], list[str]]:
        """(good index lines, one problem per bad line naming the file and line).
        A last line without its newline is a write cut short and left out."""
        if not self.index_path.exists():
            return [], []
        entries, problems = [], []
        with open(self.index_path, "rb") as fh:
            for number, raw in enumerate(fh, 1):
                if not raw.endswith(b"\n"):
                    break
                if not raw.strip():
                    continue
                where = f"{self.index_path}, line {number}"
                try:
                    entries.append(check_entry(loads(raw.decode("utf-8"), source=where)))
                except SchemaError as exc:
                    problems.append(str(exc))
                except (UnicodeDecodeError, ValueError) as exc:
                    problems.append(f"{where}: {exc}")
        return entries, problems

    def index(self) -> list[dict]:
        """Every index line, checked; bad lines are a SchemaError naming the file
        and each line (the first three)."""
        entries, problems = self.read_index()
        if problems:
            more = f"; and {len(problems) - 3} more bad line(s)" if len(problems) > 3 else ""
            raise SchemaError("; ".join(problems[:3]) + more)
        return entries

    def keep_rounds(self, last_round: int, index: list[dict]) -> None:
        """Keep the index lines of rounds <= last_round (--resume redoes the rest);
        `index` is what `index()` read and checked before anything changed."""
        if not self.index_path.exists() and not index:
            return  # nothing was archived (exchange = none)
        tmp = self.index_path.with_name(f".{self.index_path.name}.tmp")
        tmp.unlink(missing_ok=True)
        for entry in index:
            if entry["round"] <= last_round:
                append_jsonl(tmp, entry)
        tmp.touch()
        os.replace(tmp, self.index_path)
