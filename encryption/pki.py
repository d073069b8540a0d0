"""Identity certificates: a study CA certifies each identity's X25519 public key.

An identity certificate is an X.509 certificate whose subject is
`CN=<identity>, O=medfed, OU=<study>` (identity: `site-N`, `auditor`, ...),
whose key is X25519 (key usage: key agreement only), `CA:FALSE`, signed by
the study CA. Verifying one (`verify_identity_certificate`) checks, in this
order: it parses, the CA certificate is a CA, it is signed by that CA (chain
of one), the CA and it are within their validity periods, it names the
expected identity and study, and its key is X25519. Each failure has its own
exception, all `CertificateError` (a ValueError), with one message that
names the identity.

`StudyCA` is the per-study CA of a simulation: the operator makes it once in
the study's run folder (`ca.key` mode 0600, `ca.crt`) and signs public keys
that sites send (`issue`); it never sees a private key. `Directory` holds
identity -> certificate entries, each verified against the CA as it is added.

X25519 keys cannot sign, so there is no CSR: the request is the PEM public
key; the channel that brings it to the CA vouches for the name (the
operator's runner in simulation, the operator itself in `medfed deploy certs`).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from cryptography.x509.oid import NameOID

from encryption.private_files import load_private_key_file, private_key_pem, write_private_file

CA_KEY = "ca.key"
CA_CERT = "ca.crt"
ORGANIZATION = "medfed"
DEFAULT_DAYS = 365
_IDENTITY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

PemLike = bytes | str | x509.Certificate


# --------------------------------------------------------------------------- errors
class CertificateError(ValueError):
    """An identity certificate that cannot be trusted for the expected identity."""


class MalformedCertificateError(CertificateError):
    """Not a PEM X.509 certificate, or the CA certificate is not a CA."""


class UntrustedCertificateError(CertificateError):
    """Not signed by the study CA."""


class CertificateExpiredError(CertificateError):
    """Outside its validity period (or the CA's)."""


class CertificateIdentityError(CertificateError):
    """Certifies another identity: a swapped public key."""


class CertificateStudyError(CertificateIdentityError):
    """Certifies the identity for another study."""


class CertificateKeyError(CertificateError):
    """Certifies a key that is not an X25519 key-agreement key."""


# --------------------------------------------------------------------------- names
def check_identity_name(name: str) -> str:
    """`name` if it is a valid identity (letters, digits, '.', '_', '-'; 1..64 chars)."""
    if not isinstance(name, str) or not _IDENTITY_RE.fullmatch(name):
        raise ValueError(
            f"identity name {name!r} is not valid: 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (e.g. site-0, auditor)"
        )
    return name


def check_study_name(study: str) -> str:
    if not isinstance(study, str) or not study or "/" in study or len(study.encode()) > 1024:
        raise ValueError(f"study name {study!r}: must be a non-empty name without '/'")
    return study


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def load_certificate(pem: PemLike, what: str = "certificate") -> x509.Certificate:
    """A certificate from PEM bytes/str; MalformedCertificateError naming `what`."""
    if isinstance(pem, x509.Certificate):
        return pem
    data = pem.encode() if isinstance(pem, str) else bytes(pem)
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise MalformedCertificateError(f"{what}: not a PEM X.509 certificate ({exc})") from None


def certificate_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def public_key_pem(key: X25519PublicKey) -> bytes:
    """The certificate request a site sends: its X25519 public key as PEM."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_key(pem: bytes | str, what: str = "public key") -> X25519PublicKey:
    data = pem.encode() if isinstance(pem, str) else bytes(pem)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise CertificateKeyError(f"{what}: not a PEM public key ({exc})") from None
    if not isinstance(key, X25519PublicKey):
        raise CertificateKeyError(f"{what}: a {type(key).__name__}, not an X25519 key")
    return key


def _attr(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    values = name.get_attributes_for_oid(oid)
    return str(values[0].value) if len(values) == 1 else None


# --------------------------------------------------------------------------- issue
def issue_identity_certificate(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    public_key: X25519PublicKey | bytes | str,
    *,
    identity: str,
    study: str,
    days: int = DEFAULT_DAYS,
    now: dt.datetime | None = None,
) -> bytes:
    """PEM certificate for `identity`'s X25519 `public_key` (object or PEM) in `study`."""
    check_identity_name(identity)
    check_study_name(study)
    if not isinstance(public_key, X25519PublicKey):
        public_key = load_public_key(public_key, f"public key of {identity}")
    if ca_key.public_key().public_numbers() != ca_cert.public_key().public_numbers():
        raise ValueError("the CA key does not belong to the CA certificate")
    start = (now or _utcnow()) - dt.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, identity),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, study),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, True, False, False, False, False),
            critical=True,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA384())
    )
    return certificate_pem(cert)


def make_ca(
    *, common_name: str, days: int = DEFAULT_DAYS, now: dt.datetime | None = None
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed EC P-384 CA (path length 0: it signs leaves only)."""
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start = (now or _utcnow()) - dt.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA384())
    )
    return key, cert


# --------------------------------------------------------------------------- verify
def verify_identity_certificate(
    cert: PemLike,
    *,
    ca_cert: PemLike,
    identity: str,
    study: str,
    now: dt.datetime | None = None,
) -> X25519PublicKey:
    """The X25519 public key that the study CA certified for `identity` in `study`.

    Raises a CertificateError subclass (see the module docstring) otherwise.
    """
    ca = load_certificate(ca_cert, "study CA certificate")
    leaf = load_certificate(cert, f"certificate of {identity}")
    try:
        is_ca = ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise MalformedCertificateError(
            f"study CA certificate ({ca.subject.rfc4514_string()}) is not a CA certificate"
        )
    try:
        leaf.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise UntrustedCertificateError(
            f"certificate of {identity}: not signed by the study CA "
            f"({ca.subject.rfc4514_string()}); issuer {leaf.issuer.rfc4514_string()}"
        ) from None
    now = now or _utcnow()
    for what, c in (("the study CA certificate", ca), (f"certificate of {identity}", leaf)):
        if now < c.not_valid_before_utc:
            raise CertificateExpiredError(
                f"{what} is not valid before {c.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
            )
        if now > c.not_valid_after_utc:
            raise CertificateExpiredError(
                f"{what} expired on {c.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
            )
    named = _attr(leaf.subject, NameOID.COMMON_NAME)
    if named != identity or _attr(leaf.subject, NameOID.ORGANIZATION_NAME) != ORGANIZATION:
        raise CertificateIdentityError(
            f"certificate of {identity}: it certifies {leaf.subject.rfc4514_string()!r}, "
            f"not {identity!r} (a public key for another identity: swapped?)"
        )
    cert_study = _attr(leaf.subject, NameOID.ORGANIZATIONAL_UNIT_NAME)
    if cert_study != study:
        raise CertificateStudyError(
            f"certificate of {identity}: issued for study {cert_study!r}, not {study!r}"
        )
    try:
        basic = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
        leaf_is_ca = basic.ca
    except x509.ExtensionNotFound:
        leaf_is_ca = False
    key = leaf.public_key()
    if leaf_is_ca or not isinstance(key, X25519PublicKey):
        raise CertificateKeyError(
            f"certificate of {identity}: certifies a {type(key).__name__}"
            f"{' CA' if leaf_is_ca else ''}, not an X25519 key-agreement key"
        )
    return key


# --------------------------------------------------------------------------- study CA
@dataclass(frozen=True)
class StudyCA:
    """The operator's CA of one study: signs identities' public keys, never sees private keys."""

    folder: Path
    study: str
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @property
    def certificate_pem(self) -> bytes:
        return certificate_pem(self.certificate)

    @classmethod
    def create(cls, folder: str | Path, study: str, *, days: int = DEFAULT_DAYS) -> StudyCA:
        """A new CA in `folder` (ca.key mode 0600, ca.crt); FileExistsError if one is there."""
        check_study_name(study)
        folder = Path(folder)
        if (folder / CA_KEY).exists() or (folder / CA_CERT).exists():
            raise FileExistsError(f"{folder}: a study CA is already there (ca.key / ca.crt)")
        key, cert = make_ca(common_name=f"medfed study CA: {study}"[:64], days=days)
        write_private_file(folder / CA_KEY, private_key_pem(key))
        (folder / CA_CERT).write_bytes(certificate_pem(cert))
        return cls(folder, study, key, cert)

    @classmethod
    def load(cls, folder: str | Path, study: str) -> StudyCA:
        """The CA that `create` wrote in `folder` (ca.key must be mode 0600)."""
        folder = Path(folder)
        key = load_private_key_file(folder / CA_KEY, ec.EllipticCurvePrivateKey, "study CA key")
        cert = load_certificate((folder / CA_CERT).read_bytes(), str(folder / CA_CERT))
        if key.public_key().public_numbers() != cert.public_key().public_numbers():
            raise ValueError(f"{folder}: {CA_KEY} does not belong to {CA_CERT}")
        return cls(folder, check_study_name(study), key, cert)

    @classmethod
    def ensure(cls, folder: str | Path, study: str, *, days: int = DEFAULT_DAYS) -> StudyCA:
        """`load` the CA in `folder` if there is one (a resumed study), else `create` it."""
        if (Path(folder) / CA_KEY).exists():
            return cls.load(folder, study)
        return cls.create(folder, study, days=days)

    def issue(
        self, identity: str, public_key: X25519PublicKey | bytes | str, *, days: int = DEFAULT_DAYS
    ) -> bytes:
        """PEM certificate binding `identity` (in this study) to its X25519 `public_key`."""
        return issue_identity_certificate(
            self.key, self.certificate, public_key, identity=identity, study=self.study, days=days
        )


# --------------------------------------------------------------------------- directory
class Directory(Mapping[str, X25519PublicKey]):
    """Identity -> certified X25519 public key of one study, every entry verified on entry.

    `from_pems({"site-0": pem, ...}, ca_cert=..., study=...)` builds one from
    what the server forwards; any entry that does not verify raises the
    CertificateError of that entry (nothing is skipped).
    """

    def __init__(self, *, ca_cert: PemLike, study: str) -> None:
        self.ca_cert = load_certificate(ca_cert, "study CA certificate")
        self.study = check_study_name(study)
        self._pems: dict[str, bytes] = {}
        self._keys: dict[str, X25519PublicKey] = {}

    @classmethod
    def from_pems(
        cls,
        entries: Mapping[str, bytes | str],
        *,
        ca_cert: PemLike,
        study: str,
        now: dt.datetime | None = None,
    ) -> Directory:
        directory = cls(ca_cert=ca_cert, study=study)
        for identity, pem in entries.items():
            directory.add(identity, pem, now=now)
        return directory

    def add(
        self, identity: str, cert: bytes | str, *, now: dt.datetime | None = None
    ) -> X25519PublicKey:
        """Verify `cert` for `identity` against the CA and keep it; its public key."""
        check_identity_name(identity)
        pem = cert.encode() if isinstance(cert, str) else bytes(cert)
        key = verify_identity_certificate(
            pem, ca_cert=self.ca_cert, identity=identity, study=self.study, now=now
        )
        self._pems[identity] = pem
        self._keys[identity] = key
        return key

    def certificate_pem(self, identity: str) -> bytes:
        self[identity]  # the KeyError that names the known identities
        return self._pems[identity]

    def to_pems(self) -> dict[str, str]:
        """identity -> PEM text (JSON-ready; what a Flower message carries)."""
        return {k: v.decode() for k, v in self._pems.items()}

    def __getitem__(self, identity: str) -> X25519PublicKey:
        try:
            return self._keys[identity]
        except KeyError:
            known = ", ".join(sorted(self._keys)) or "none"
            raise KeyError(
                f"no certificate for identity {identity!r} in the study {self.study!r} "
                f"directory (known: {known})"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)
