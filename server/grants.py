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

A grant is delivered only while the current policy allows it (checked at
delivery: a grantee removed on --resume gets none of the grants sealed to it
before), and the grants delivered are appended to `archive/grants-delivered
.jsonl` (grantor, grantee, key_version, round), so a resumed study neither
sends them again nor forgets who holds what. That file is read as hostile
(each field's type and bounds; a bad line is skipped with a warning naming
the file and line). Removing a grantee revokes only key versions it does not
hold yet: with `rotate-every = 0` one version serves the whole study, so a
removed grantee that was given it keeps reading, and `policy_warnings` says
so (the study emits it as a warning event and in its first round record).

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
from encryption.pki import check_identity_name
from server.archive import MAX_KEY_VERSION, MAX_ROUND, Archive, ArchiveError, check_site
from study.config import Study
from study.protocol import KeyMessages
from study.schema import SchemaError, append_jsonl, loads

AUDITOR = "auditor"
DELIVERED = "grants-delivered.jsonl"  # in the archive folder
_DELIVERED_FIELDS = ("grantor", "grantee", "key_version", "round")


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
    warnings: list[str] = field(default_factory=list)  # what reading the archive passed over
    _pending: dict[int, tuple[int, list[tuple[str, str, int]]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pairs = self.study.grant_pairs(auditor=self.auditor_certificate is not None)
        if self.auditor_certificate is not None:
            self.certificates[AUDITOR] = self.auditor_certificate
            self.archive.put_certificate(AUDITOR, self.auditor_certificate)
        for entry in self.archive.index():  # a resumed study keeps the grants it stored
            if entry["kind"] == "grant":
                key = (entry["site"], entry["grantee"], entry["key_version"])
                try:
                    self.held[key] = self.archive.get(entry["sha256"])
                except (ArchiveError, FileNotFoundError) as exc:
                    # not held: its grantor is asked again while its version is in use
                    self.warnings.append(f"a stored grant is not used: {exc}")
        self.delivered_path = self.archive.root / DELIVERED
        if self.delivered_path.is_symlink():  # never read or appended through a link
            self.warnings.append(f"{self.delivered_path} is a link: removed, not read")
            self.delivered_path.unlink()
        if not self.delivered_path.is_file() and not self.held and self.active:
            self.delivered_path.parent.mkdir(parents=True, exist_ok=True)
            self.delivered_path.touch()  # a new study: nothing delivered yet, and known
        # a run of an earlier version kept no record: its stored grants may be delivered
        self.delivered_known = self.delivered_path.is_file()
        if self.delivered_known:
            self.delivered.update(self._read_delivered())

    def _read_delivered(self) -> list[tuple[str, str, int]]:
        """The delivered grants the run folder records; a bad line is skipped with
        a warning (a grant skipped here is only sent again, if still allowed)."""
        out = []
        with open(self.delivered_path, "rb") as fh:
            for number, raw in enumerate(fh, 1):
                if not raw.endswith(b"\n"):
                    break  # a write cut short
                where = f"{self.delivered_path}, line {number}"
                try:
                    doc = loads(raw.decode("utf-8"), source=where)
                    if not isinstance(doc, dict) or sorted(doc) != sorted(_DELIVERED_FIELDS):
                        raise ValueError(f"must hold exactly {', '.join(_DELIVERED_FIELDS)}")
                    check_site(doc["grantor"], "grantor")
                    check_identity_name(doc["grantee"])
                    for key, high in (("key_version", MAX_KEY_VERSION), ("round", MAX_ROUND)):
                        value = doc[key]
                        if type(value) is not int or not 0 <= value <= high:
                            raise ValueError(f"{key} {value!r} is not an integer in 0..{high}")
                except SchemaError as exc:
                    self.warnings.append(f"skipped: {exc}")
                    continue
                except (UnicodeDecodeError, ValueError) as exc:
                    self.warnings.append(f"skipped: {where}: {exc}")
                    continue
                out.append((doc["grantor"], doc["grantee"], doc["key_version"]))
        return out

    def allows(self, grantor: str, grantee: str) -> bool:
        """Whether the current policy lets `grantee` read `grantor`'s images."""
        site = grantor.removeprefix("site-")
        return site.isdigit() and (int(site), grantee) in self.pairs

    def policy_warnings(self, from_round: int) -> list[str]:
        """What removing a grantee cannot revoke: a removed grantee keeps every key
        version it was given (the auditor: every grant stored for it). With
        rotate-every = 0 that is the study's only version; with key versions, the
        one in use at `from_round` until the next begins."""
        had: dict[tuple[str, str], set[int]] = {}
        given = set(self.delivered)
        given |= {k for k in self.held if k[1] == AUDITOR or not self.delivered_known}
        for grantor, grantee, version in given:
            if not self.allows(grantor, grantee):
                had.setdefault((grantor, grantee), set()).add(version)
        current = self.study.key_version(from_round)
        out = []
        for (grantor, grantee), versions in sorted(had.items()):
            if not self.study.rotate_every:
                out.append(
                    f"grants: {grantee} is no longer a grantee of {grantor}, but with "
                    f"rotate-every = 0 nothing is revoked: {grantee} holds {grantor}'s only "
                    f"key version (0) and can read every container {grantor} shares from "
                    "now on; set rotate-every so that a new key version revokes it"
                )
            elif current in versions:
                until = (current + 1) * self.study.rotate_every
                out.append(
                    f"grants: {grantee} is no longer a grantee of {grantor} but holds its key "
                    f"version {current}, in use until round {until}: it can read what "
                    f"{grantor} shares until then, and gets no later version"
                )
        return out

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
        keys = KeyMessages()
        missing = sorted(
            g for (i, g) in self.pairs if i == site and (name, g, version) not in self.held
        )
        missing = [g for g in missing if g in self.certificates]  # enrolled grantees only
        if missing:
            keys.request_version, keys.request_grantees = version, tuple(missing)
            for grantee in missing:
                keys.certificates[grantee] = self.certificates[grantee]
        pending = []
        for (grantor, grantee, v), blob in sorted(self.held.items()):
            if (
                grantee == name
                and (grantor, grantee, v) not in self.delivered
                and self.allows(grantor, grantee)  # the policy now, not when it was sealed
                and grantor in self.certificates
            ):
                keys.delivered[(grantor, v)] = blob
                keys.certificates[grantor] = self.certificates[grantor]
                pending.append((grantor, grantee, v))
        self._pending[site] = (server_round, pending)
        record = keys.to_record()
        return record if len(record) else None

    def confirmed(self, site: int) -> None:
        """`site` replied without error: the grants sent to it were stored (and
        the run folder says so, for a resumed study)."""
        server_round, pending = self._pending.pop(site, (0, []))
        for grantor, grantee, version in pending:
            if (grantor, grantee, version) in self.delivered:
                continue
            self.delivered.add((grantor, grantee, version))
            self.delivered_path.parent.mkdir(parents=True, exist_ok=True)
            line = {"grantor": grantor, "grantee": grantee, "key_version": version}
            line["round"] = server_round
            append_jsonl(self.delivered_path, line)
            self.delivered_known = True

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
