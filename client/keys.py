"""A site's keys: its identity, its key versions, and the grants it holds.

Everything here lives in the site's own state folder and nowhere else:

    identity/              the site's X25519 identity: identity.key (0600),
                           identity.crt (from the study CA), ca.crt
    key-v<N>.bundle        key version N: a site key and the encryptor state
                           (learned weights), mode 0600. Version 0 is made by
                           fitting the encryptor; a later version (rotate-every)
                           keeps the weights and gets a new site key, so a
                           grantee of the old versions cannot read the new one:
                           every method's containers depend on the site key
                           (deepedn, whose weights alone would decode them,
                           seals its cipher image with it; tests/test_revocation.py)
    grants/<grantor>.v<N>.grant   grants this site received, sealed as they
                           came (opened with the identity key when needed)

Grants travel only through the server, in Flower messages: a grantor seals
its decryption material to each grantee's certified public key with HPKE
(encryption/grants.py), the server stores and forwards it and cannot open
it. A site verifies every certificate it is given against its own copy of
the study CA and the name it expects, so a server that swaps public keys is
detected (a certificate of another identity, or of no study CA, is refused).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from encryption import Encryptor, get_encryptor
from encryption.grants import open_grant, seal_grant
from encryption.identity import Identity
from encryption.keys import generate_key, load_key_bundle, save_key_bundle
from encryption.material import DecryptionMaterial, MaterialError
from encryption.pki import verify_identity_certificate
from encryption.private_files import write_private_file
from study.config import Study

IDENTITY_DIR = "identity"
_GRANT_NAME = re.compile(r"(?P<grantor>[A-Za-z0-9][A-Za-z0-9._-]{0,63})\.v(?P<version>\d+)\.grant")


class NoGrantError(ValueError):
    """This site holds no grant for what it was asked to decrypt."""


class GrantMaterialError(ValueError):
    """A grant this site holds opened, but the decryption material in it is not usable."""


@dataclass
class SiteKeys:
    study: Study
    name: str  # "site-N"
    folder: Path  # the site's state folder
    identity_dir: Path
    _identity: Identity | None = field(default=None, repr=False)

    # -- identity --------------------------------------------------------------
    def identity(self) -> Identity:
        if self._identity is None:
            if not self.identity_dir.is_dir():
                raise FileNotFoundError(
                    f"{self.name}: no identity at {self.identity_dir} (identity.key, "
                    "identity.crt, ca.crt): `medfed run` makes one per site; for a "
                    "deployment, `medfed deploy certs` (node-config identity-dir=...)"
                )
            self._identity = Identity.load(
                self.identity_dir, identity=self.name, study=self.study.name
            )
        return self._identity

    def certificate_pem(self) -> bytes:
        return self.identity().certificate_pem

    def verified(self, name: str, certificate_pem: bytes):
        """The public key `certificate_pem` certifies for `name` in this study,
        checked against this site's own copy of the study CA."""
        me = self.identity()
        return verify_identity_certificate(
            certificate_pem, ca_cert=me.ca_certificate_pem, identity=name, study=self.study.name
        )

    # -- key versions ------------------------------------------------------------
    def bundle_path(self, version: int) -> Path:
        return self.folder / f"key-v{version}.bundle"

    def encryptor(
        self, version: int, *, options: dict, fit: Callable[[Encryptor], None]
    ) -> Encryptor:
        """This site's encryptor of key `version`: loaded, or made (version 0 is
        fitted by calling `fit(encryptor)`; a later one takes version 0's state
        with a new site key). `options`: the method's options (device, epochs)."""
        path = self.bundle_path(version)
        if path.exists():
            key, method, state = load_key_bundle(path)
            if method != self.study.method:
                raise ValueError(
                    f"{path}: holds a {method!r} key bundle, the study uses "
                    f"{self.study.method!r}; use a new --out folder"
                )
            enc = get_encryptor(method, key, **options)
            enc.load_state_dict(state)
            return enc
        if version == 0:
            enc = get_encryptor(self.study.method, generate_key(), **options)
            fit(enc)
        else:
            first = self.encryptor(0, options=options, fit=fit)
            enc = get_encryptor(self.study.method, generate_key(), **options)
            enc.load_state_dict(first.state_dict())
        save_key_bundle(path, enc.key, enc.name, enc.state_dict())
        return enc

    # -- grants ---------------------------------------------------------------------
    def seal_grants(
        self, version: int, encryptor: Encryptor, grantees: Mapping[str, bytes]
    ) -> dict[str, bytes]:
        """Grants of key `version` to each grantee (name -> its certificate PEM)."""
        material = DecryptionMaterial.from_encryptor(encryptor).to_bytes()
        out = {}
        for grantee, cert in sorted(grantees.items()):
            self.verified(grantee, cert)  # a swapped key is refused here
            out[grantee] = seal_grant(
                material,
                grantor=self.identity(),
                grantee=grantee,
                grantee_cert=cert,
                study=self.study.name,
                key_version=version,
            )
        return out

    def receive_grant(self, grantor: str, version: int, blob: bytes, grantor_cert: bytes) -> None:
        """Check a grant opens (addressed here, from that grantor, untampered)
        and keep it, sealed, in this site's folder."""
        self._open(grantor, version, blob, grantor_cert)
        grants = self.folder / "grants"
        write_private_file(grants / f"{grantor}.v{version}.grant", blob, overwrite=True)
        write_private_file(grants / f"{grantor}.crt", grantor_cert, overwrite=True)

    def held_grants(self) -> list[tuple[str, int]]:
        """(grantor, version) of every grant this site holds."""
        folder = self.folder / "grants"
        found = (_GRANT_NAME.fullmatch(p.name) for p in folder.iterdir()) if folder.is_dir() else ()
        return sorted((m["grantor"], int(m["version"])) for m in found if m)

    def peer_encryptor(self, grantor: str, version: int) -> Encryptor:
        """The grantor's encryptor of key `version`, from the grant this site holds."""
        blob_path = self.folder / "grants" / f"{grantor}.v{version}.grant"
        cert_path = self.folder / "grants" / f"{grantor}.crt"
        if not blob_path.is_file() or not cert_path.is_file():
            held = ", ".join(f"{g} v{v}" for g, v in self.held_grants()) or "none"
            raise NoGrantError(
                f"{self.name} holds no grant of {grantor}'s key version {version} "
                f"(grants held: {held})"
            )
        material = self._open(grantor, version, blob_path.read_bytes(), cert_path.read_bytes())
        try:
            return DecryptionMaterial.from_bytes(material).encryptor()
        except MaterialError as exc:
            raise GrantMaterialError(
                f"{self.name}: the grant of {grantor}'s key version {version} is refused: {exc}"
            ) from None

    def _open(self, grantor: str, version: int, blob: bytes, grantor_cert: bytes) -> bytes:
        return open_grant(
            blob,
            identity=self.identity(),
            grantor=grantor,
            grantor_cert=grantor_cert,
            study=self.study.name,
            key_version=version,
        )
