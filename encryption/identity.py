"""A site's (or the auditor's) long-term key-agreement identity on disk.

One identity folder holds three files:

    identity.key   the X25519 private key, PKCS#8 PEM, mode 0600 (never leaves)
    identity.crt   its certificate from the study CA (PEM; public)
    ca.crt         the study CA certificate this identity trusts (PEM; public)

Enrolment, with the private key generated where it stays:

    request = request_identity(folder)                 # site: key made here, public PEM out
    cert = ca.issue("site-0", request)                 # operator: StudyCA.issue signs it
    install_certificate(folder, cert, ca.certificate_pem, identity="site-0", study=s)
    me = Identity.load(folder, identity="site-0", study=s)

`Identity.load` refuses a key file that group or others can read, and
checks the certificate against ca.crt, the expected name and study, and that
it certifies this very private key.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.x509.oid import NameOID

from encryption.pki import (
    CertificateIdentityError,
    PemLike,
    certificate_pem,
    check_identity_name,
    load_certificate,
    public_key_pem,
    verify_identity_certificate,
)
from encryption.private_files import load_private_key_file, private_key_pem, write_private_file

IDENTITY_KEY = "identity.key"
IDENTITY_CERT = "identity.crt"
CA_CERT = "ca.crt"
AUDITOR = "auditor"


def _same_key(a: X25519PublicKey, b: X25519PublicKey) -> bool:
    return public_key_pem(a) == public_key_pem(b)


def request_identity(folder: str | os.PathLike) -> bytes:
    """The certificate request of the identity in `folder`: its public key as PEM.

    Generates identity.key (mode 0600) on first use; later calls reuse it.
    """
    path = Path(folder) / IDENTITY_KEY
    if path.exists():
        key = load_private_key_file(path, X25519PrivateKey, "identity key")
    else:
        key = X25519PrivateKey.generate()
        write_private_file(path, private_key_pem(key))
    return public_key_pem(key.public_key())


def install_certificate(
    folder: str | os.PathLike,
    cert: PemLike,
    ca_cert: PemLike,
    *,
    identity: str,
    study: str,
    now: dt.datetime | None = None,
) -> Path:
    """Check `cert` (for `identity` in `study`, signed by `ca_cert`, for this folder's
    key) and write identity.crt and ca.crt beside identity.key; the folder."""
    folder = Path(folder)
    key = load_private_key_file(folder / IDENTITY_KEY, X25519PrivateKey, "identity key")
    cert_obj = load_certificate(cert, f"certificate of {identity}")
    ca_obj = load_certificate(ca_cert, "study CA certificate")
    certified = verify_identity_certificate(
        cert_obj, ca_cert=ca_obj, identity=identity, study=study, now=now
    )
    if not _same_key(certified, key.public_key()):
        raise CertificateIdentityError(
            f"certificate of {identity}: certifies another public key than {folder / IDENTITY_KEY}"
        )
    (folder / IDENTITY_CERT).write_bytes(certificate_pem(cert_obj))
    (folder / CA_CERT).write_bytes(certificate_pem(ca_obj))
    return folder


@dataclass(frozen=True)
class Identity:
    """A loaded identity: its name, study, private key, certificate and trusted CA."""

    name: str
    study: str
    private_key: X25519PrivateKey
    certificate: x509.Certificate
    ca_certificate: x509.Certificate

    @property
    def public_key(self) -> X25519PublicKey:
        return self.private_key.public_key()

    @property
    def certificate_pem(self) -> bytes:
        return certificate_pem(self.certificate)

    @property
    def ca_certificate_pem(self) -> bytes:
        return certificate_pem(self.ca_certificate)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        identity: str | None = None,
        study: str | None = None,
        ca_cert: PemLike | None = None,
        now: dt.datetime | None = None,
    ) -> Identity:
        """The identity in folder `path` (or `path` = its identity.key, certificate beside).

        `identity`, `study`: what the certificate must name; None takes them
        from the certificate itself (e.g. `medfed archive open --identity
        KEYFILE`), which must still verify against the CA.
        `ca_cert`: the CA to trust (default: the folder's ca.crt). Raises
        KeyFilePermissionError for a key file others can read, FileNotFoundError
        naming a missing file, CertificateError for a certificate that does not
        certify this key as `identity` in `study`.
        """
        path = Path(path)
        folder = path.parent if path.is_file() else path
        key_path = path if path.is_file() else folder / IDENTITY_KEY
        key = load_private_key_file(key_path, X25519PrivateKey, "identity key")
        for needed in [folder / IDENTITY_CERT] + ([folder / CA_CERT] if ca_cert is None else []):
            if not needed.is_file():
                raise FileNotFoundError(
                    f"{needed} not found: the identity {identity!r} needs its certificate and "
                    "the study CA certificate beside its key"
                )
        cert = load_certificate((folder / IDENTITY_CERT).read_bytes(), str(folder / IDENTITY_CERT))
        ca = load_certificate(
            (folder / CA_CERT).read_bytes() if ca_cert is None else ca_cert, "study CA certificate"
        )
        identity = identity if identity is not None else _subject(cert, NameOID.COMMON_NAME)
        study = study if study is not None else _subject(cert, NameOID.ORGANIZATIONAL_UNIT_NAME)
        check_identity_name(identity)
        certified = verify_identity_certificate(
            cert, ca_cert=ca, identity=identity, study=study, now=now
        )
        if not _same_key(certified, key.public_key()):
            raise CertificateIdentityError(
                f"{folder / IDENTITY_CERT} certifies another public key than {key_path}"
            )
        return cls(identity, study, key, cert, ca)


def _subject(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> str:
    values = cert.subject.get_attributes_for_oid(oid)
    if len(values) != 1:
        raise CertificateIdentityError(
            f"certificate {cert.subject.rfc4514_string()!r} is not an identity certificate"
        )
    return str(values[0].value)
