"""Key grants through the server: it stores and forwards them and cannot open them.

The study's grant policy (`grants`, study.config.Study.grant_pairs) says
which site may decrypt whose images. For each key version (`rotate-every`)
the server asks each grantor, in its train message, for the grants it does
not hold yet (`keys` record: `request-version`, `request-grantees`, and the
grantees' certificates as the sites enrolled with them); the grantor seals
its decryption material to each grantee and replies with them (`grants`
record). The server keeps every grant in the encrypted archive (kind
`grant`, with grantor, grantee and key version in the index) and delivers
each to its grantee in the grantee's next train message (`grant/<grantor>/
<version>`, with the grantor's certificate). Grants to the auditor (the
reading centre, not a node) stay in the archive for `medfed archive open`.

The server reads only the grants' public headers (who, to whom, which
version) to route them; it holds no private key. Every certificate it
relays is checked by the sites against their own copy of the study CA, so a
swapped key is detected there. Bytes: what a site receives in `keys` counts
as grant_down, the grants it sends as grant_up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from flwr.app import ConfigRecord

from encryption.grants import GrantError, read_grant_header
from server.archive import Archive
from study.config import Study

AUDITOR = "auditor"


class GrantRefused(ValueError):
    """A grant a site sent that does not match what was asked of it."""


@dataclass
class GrantBroker:
    study: Study
    archive: Archive
    auditor_certificate: bytes | None = None
    certificates: dict[str, bytes] = field(default_factory=dict)  # identity -> PEM
    held: dict[tuple[str, str, int], bytes] = field(default_factory=dict)
    delivered: set[tuple[str, str, int]] = field(default_factory=set)
    _pending: dict[int, list[tuple[str, str, int]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pairs = self.study.grant_pairs(auditor=self.auditor_certificate is not None)
        if self.auditor_certificate is not None:
            self.certificates[AUDITOR] = self.auditor_certificate
            self.archive.put_certificate(AUDITOR, self.auditor_certificate)
        for entry in self.archive.index():  # a resumed study keeps the grants it stored
            if entry.get("kind") == "grant":
                key = (entry["site"], entry["grantee"], int(entry["key_version"]))
                self.held[key] = self.archive.get(entry["sha256"])

    @classmethod
    def for_study(cls, study: Study, archive: Archive) -> GrantBroker:
        """The broker of `study`: the auditor's certificate is read from
        `auditor` (an identity folder or certificate file; relative to out-dir)."""
        cert = None
        if study.auditor:
            path = Path(study.auditor)
            path = path if path.is_absolute() else Path(study.out_dir) / path
            path = path if path.suffix == ".crt" else path / "identity.crt"
            if not path.is_file():
                raise FileNotFoundError(
                    f"auditor = {study.auditor!r}: no identity certificate at {path}"
                )
            cert = path.read_bytes()
        return cls(study, archive, cert)

    @property
    def active(self) -> bool:
        return bool(self.pairs)

    def may_read(self, grantor_site: int, reader_site: int) -> bool:
        return (grantor_site, f"site-{reader_site}") in self.pairs

    def enrol(self, site: int, certificate: bytes | None) -> None:
        if certificate is not None and self.certificates.get(f"site-{site}") != certificate:
            self.certificates[f"site-{site}"] = certificate
            self.archive.put_certificate(f"site-{site}", certificate)

    # -- to a site --------------------------------------------------------------------
    def outgoing(self, site: int, server_round: int) -> ConfigRecord | None:
        """The `keys` record for `site`'s train message of this round, if any."""
        name, version = f"site-{site}", self.study.key_version(server_round)
        record = ConfigRecord()
        missing = sorted(
            g for (i, g) in self.pairs if i == site and (name, g, version) not in self.held
        )
        missing = [g for g in missing if g in self.certificates]  # enrolled grantees only
        if missing:
            record["request-version"] = version
            record["request-grantees"] = ",".join(missing)
            for grantee in missing:
                record[f"cert/{grantee}"] = self.certificates[grantee]
        pending = []
        for (grantor, grantee, v), blob in sorted(self.held.items()):
            if grantee == name and (grantor, grantee, v) not in self.delivered:
                record[f"grant/{grantor}/{v}"] = blob
                record[f"cert/{grantor}"] = self.certificates[grantor]
                pending.append((grantor, grantee, v))
        self._pending[site] = pending
        return record if len(record) else None

    def confirmed(self, site: int) -> None:
        """`site` replied without error: the grants sent to it were stored."""
        self.delivered.update(self._pending.pop(site, []))

    # -- from a site ------------------------------------------------------------------
    def incoming(self, site: int, server_round: int, record: ConfigRecord) -> int:
        """Keep the grants `site` sent (checked against what was asked); their bytes."""
        name, version = f"site-{site}", self.study.key_version(server_round)
        size = 0
        for grantee, blob in record.items():
            try:
                header = read_grant_header(blob)
            except GrantError as exc:
                raise GrantRefused(f"{name} sent a malformed grant for {grantee}: {exc}") from None
            expected = (self.study.name, name, grantee, version)
            got = (header.study, header.grantor, header.grantee, header.key_version)
            if got != expected or (site, grantee) not in self.pairs:
                raise GrantRefused(
                    f"{name} sent a {header.describe()}; the study asked for grants of key "
                    f"version {version} to its grantees"
                )
            self.held[(name, grantee, version)] = blob
            self.archive.put(
                blob,
                site=name,
                server_round=server_round,
                kind="grant",
                extra={"grantee": grantee, "key_version": version},
            )
            size += len(blob)
        return size
