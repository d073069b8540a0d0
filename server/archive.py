"""The server's encrypted archive: content-addressed containers and grants it cannot read.

    archive/objects/<sha[:2]>/<sha256>   one container or grant per file, as received
    archive/certificates/<identity>.crt  the identities' certificates (public)
    archive/index.jsonl                  one line per stored object: sha256, site,
                                         round, kind (images | labels | grant),
                                         bytes, method and shape (containers),
                                         grantee and key_version (grants)

The server never holds a site key or an identity key; it reads only the
unauthenticated headers (method, shape; grantor, grantee, version) for the
index. Only a grantee reads: `medfed archive open RUN --identity KEY`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from encryption.container import ContainerError, read_header
from study.schema import append_jsonl, iter_jsonl


class Archive:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.index_path = self.root / "index.jsonl"

    def put(
        self, blob: bytes, *, site: str, server_round: int, kind: str, extra: dict | None = None
    ) -> str:
        """Store a container or a grant (idempotent); return its sha256."""
        digest = hashlib.sha256(blob).hexdigest()
        path = self.objects / digest[:2] / digest
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(blob)
            os.replace(tmp, path)
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
        path = self.root / "certificates" / f"{identity}.crt"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_bytes() != pem:
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(pem)
            os.replace(tmp, path)

    def certificate(self, identity: str) -> bytes | None:
        path = self.root / "certificates" / f"{identity}.crt"
        return path.read_bytes() if path.is_file() else None

    def get(self, digest: str) -> bytes:
        path = self.objects / digest[:2] / digest
        if not path.is_file():
            raise FileNotFoundError(f"archive has no object {digest}")
        return path.read_bytes()

    def index(self) -> list[dict]:
        """Every index line; a damaged line is a SchemaError naming the file and line."""
        if not self.index_path.exists():
            return []
        return [doc for _, doc in iter_jsonl(self.index_path)]

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
