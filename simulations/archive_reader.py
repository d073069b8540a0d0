"""Reading a study's encrypted archive as a grantee (the auditor, or a site).

The server stored every container it received and every grant, sealed, and
can read none of them. An identity that was granted a site's key versions
(`grants` policy, e.g. "0->auditor") opens those grants with its own private
key and decrypts exactly the containers of those versions; everything else
stays unreadable and is listed as such.

The archive is read as hostile (whoever could write it may have): each index
line is checked field by field before a value names a file, objects are read
only as verified regular files of the archive (server.archive), and a bad
line, a missing or altered object, or a grant or container that does not
open is reported in `skipped` (file and line, or the object) and passed
over; the rest is still opened.
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
    skipped: list[str] = field(default_factory=list)  # each entry passed over, and why


# What an entry that cannot be used raises: ArchiveError (a link, an altered or
# misnamed object), GrantError, MaterialError and ContainerError are ValueErrors;
# a missing or unreadable file an OSError.
_UNUSABLE = (ValueError, OSError)


def open_archive(run: str | Path, identity_key: str | Path) -> OpenedArchive:
    run = Path(run)
    study = Study.from_mapping(read_config(run)["study"], source=f"{run}/config.json")
    me = Identity.load(identity_key)
    if me.study != study.name:
        raise ValueError(
            f"{identity_key}: an identity of study {me.study!r}; {run} is study {study.name!r}"
        )
    archive = Archive(run / "archive")
    index, problems = archive.read_index()
    result = OpenedArchive(me.name, skipped=[f"skipped: {p}" for p in problems])
    materials: dict[tuple[str, int], DecryptionMaterial] = {}
    for entry in index:
        if entry["kind"] == "grant" and entry["grantee"] == me.name:
            grantor, version = entry["site"], entry["key_version"]
            what = f"grant of {grantor} key version {version} (object {entry['sha256']})"
            try:
                cert = archive.certificate(grantor)
                if cert is None:
                    raise FileNotFoundError(f"{run}/archive/certificates/{grantor}.crt is missing")
                material = open_grant(
                    archive.get(entry["sha256"]),
                    identity=me,
                    grantor=grantor,
                    grantor_cert=cert,
                    study=study.name,
                    key_version=version,
                )
                materials[(grantor, version)] = DecryptionMaterial.from_bytes(material)
            except _UNUSABLE as exc:
                result.skipped.append(f"skipped {what}: {exc}")
                continue
            result.grants.append((grantor, version))
    by_round: dict[tuple[str, int], dict[str, str]] = defaultdict(dict)
    for entry in index:
        if entry["kind"] in ("images", "labels"):
            by_round[(entry["site"], entry["round"])][entry["kind"]] = entry["sha256"]
    for (site, rnd), digests in sorted(by_round.items()):
        material = materials.get((site, study.key_version(rnd)))
        if material is None or "images" not in digests:
            result.unreadable[site].append(rnd)
            continue
        try:
            images = material.encryptor().decrypt(archive.get(digests["images"]))
            labels = None
            if "labels" in digests:
                aes = get_encryptor("aes-gcm", material.key)
                labels = aes.decrypt(archive.get(digests["labels"]))
        except _UNUSABLE as exc:
            result.skipped.append(f"skipped {site} round {rnd}: {exc}")
            result.unreadable[site].append(rnd)
            continue
        result.decrypted[(site, rnd)] = images
        if labels is not None:
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
