"""Reading a study's encrypted archive as a grantee (the auditor, or a site).

The server stored every container it received and every grant, sealed, and
can read none of them. An identity that was granted a site's key versions
(`grants` policy, e.g. "0->auditor") opens those grants with its own private
key and decrypts exactly the containers of those versions; everything else
stays unreadable and is listed as such.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from encryption import get_encryptor
from encryption.grants import open_grant
from encryption.identity import Identity
from encryption.material import DecryptionMaterial
from server.archive import Archive
from study.config import Study
from study.schema import read_config


@dataclass
class OpenedArchive:
    identity: str
    decrypted: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)  # (site, round)
    labels: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    unreadable: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    grants: list[tuple[str, int]] = field(default_factory=list)  # (grantor, version) opened


def open_archive(run: str | Path, identity_key: str | Path) -> OpenedArchive:
    run = Path(run)
    study = Study.from_mapping(read_config(run)["study"], source=f"{run}/config.json")
    me = Identity.load(identity_key)
    if me.study != study.name:
        raise ValueError(
            f"{identity_key}: an identity of study {me.study!r}; {run} is study {study.name!r}"
        )
    archive = Archive(run / "archive")
    index = archive.index()
    result = OpenedArchive(me.name)
    materials: dict[tuple[str, int], DecryptionMaterial] = {}
    for entry in index:
        if entry.get("kind") == "grant" and entry.get("grantee") == me.name:
            grantor, version = entry["site"], int(entry["key_version"])
            cert = archive.certificate(grantor)
            if cert is None:
                raise FileNotFoundError(f"{run}/archive/certificates/{grantor}.crt is missing")
            blob = archive.get(entry["sha256"])
            material = open_grant(
                blob,
                identity=me,
                grantor=grantor,
                grantor_cert=cert,
                study=study.name,
                key_version=version,
            )
            materials[(grantor, version)] = DecryptionMaterial.from_bytes(material)
            result.grants.append((grantor, version))
    by_round: dict[tuple[str, int], dict[str, bytes]] = defaultdict(dict)
    for entry in index:
        if entry.get("kind") in ("images", "labels"):
            by_round[(entry["site"], int(entry["round"]))][entry["kind"]] = entry["sha256"]
    for (site, rnd), digests in sorted(by_round.items()):
        material = materials.get((site, study.key_version(rnd)))
        if material is None or "images" not in digests:
            result.unreadable[site].append(rnd)
            continue
        enc = material.encryptor()
        result.decrypted[(site, rnd)] = enc.decrypt(archive.get(digests["images"]))
        if "labels" in digests:
            labels = get_encryptor("aes-gcm", material.key).decrypt(archive.get(digests["labels"]))
            result.labels[(site, rnd)] = labels
    return result


def write_opened(opened: OpenedArchive, out: str | Path) -> list[Path]:
    """Each decrypted container as <out>/<site>/round-<r>.npz (images, labels)
    and a PNG of its first image."""
    from PIL import Image

    out = Path(out)
    written = []
    for (site, rnd), images in sorted(opened.decrypted.items()):
        folder = out / site
        folder.mkdir(parents=True, exist_ok=True)
        npz = folder / f"round-{rnd}.npz"
        arrays = {"images": images}
        if (site, rnd) in opened.labels:
            arrays["labels"] = opened.labels[(site, rnd)]
        np.savez_compressed(npz, **arrays)
        first = images[0, 0]
        scale = 255.0 / max(float(first.max()), 1.0)
        Image.fromarray(np.clip(first * scale, 0, 255).astype(np.uint8)).save(
            folder / f"round-{rnd}.png"
        )
        written.append(npz)
    return written
