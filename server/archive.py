"""The server's encrypted archive: content-addressed containers it cannot read.

    archive/objects/<sha[:2]>/<sha256>   one container per file, as received
    archive/index.jsonl                  one line per stored container

The server never holds a site key; it reads only the unauthenticated header
(method, shape) for the index.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from encryption.container import ContainerError, read_header


class Archive:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.index_path = self.root / "index.jsonl"
        self.objects.mkdir(parents=True, exist_ok=True)

    def put(self, blob: bytes, *, site: str, server_round: int, kind: str) -> str:
        """Store a container (idempotent); return its sha256."""
        digest = hashlib.sha256(blob).hexdigest()
        path = self.objects / digest[:2] / digest
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(blob)
            os.replace(tmp, path)
        try:
            header = read_header(blob)
            method, shape = header.method, list(header.shape)
        except ContainerError as exc:
            method, shape = f"unreadable: {exc}", None
        entry = {
            "sha256": digest,
            "site": site,
            "round": server_round,
            "kind": kind,
            "bytes": len(blob),
            "method": method,
            "shape": shape,
        }
        with self.index_path.open("a") as fh:
            fh.write(json.dumps(entry) + "\n")
        return digest

    def get(self, digest: str) -> bytes:
        path = self.objects / digest[:2] / digest
        if not path.is_file():
            raise FileNotFoundError(f"archive has no object {digest}")
        return path.read_bytes()

    def index(self) -> list[dict]:
        if not self.index_path.exists():
            return []
        return [json.loads(line) for line in self.index_path.read_text().splitlines() if line]

    def truncate_rounds(self, last_round: int) -> None:
        """Drop index lines after `last_round` (used by --resume)."""
        kept = [e for e in self.index() if e["round"] <= last_round]
        self.index_path.write_text("".join(json.dumps(e) + "\n" for e in kept))
