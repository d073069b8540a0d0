"""Certificates for TLS and SuperNode authentication, and a check of a SuperLink's chain.

`write_certificates()` makes a CA, a SuperLink server certificate (SANs: the
compose service name, localhost, 127.0.0.1) and one EC P-384 authentication
key pair per SuperNode (OpenSSH format, what `flower-supernode
--auth-supernode-private-key` and `flwr supernode register` read). It uses
the `cryptography` package rather than openssl so that it runs the same way
on every platform and in the image. Private keys are written with mode 0600.

It also makes the study's key-grant identities (encryption/identity.py):
per site and for the `auditor`, an X25519 key pair and a certificate from the
same CA naming the identity and the study, in one folder per identity, so
that each hospital container can mount its own folder only:

    ca.crt  ca.key (mode 0600: the operator's; mount it into no container)
    server.pem  server.key  site-N.key  site-N.pub       (TLS, SuperNode auth)
    site-N/{identity.key, identity.crt, ca.crt}          (one per hospital)
    auditor/{identity.key, identity.crt, ca.crt}         (the reading centre)

The CA key is kept so that identities for sites added later can be issued.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from deploy.errors import SERVER_NAMES, DeployError

CA_NAME = "medfed federation CA"  # the common name of the federation's CA


@dataclass(frozen=True)
class Certificates:
    folder: Path

    @property
    def ca(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def server_cert(self) -> Path:
        return self.folder / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.folder / "server.key"

    def node_key(self, site: int) -> Path:
        return self.folder / f"site-{site}.key"

    def node_pub(self, site: int) -> Path:
        return self.folder / f"site-{site}.pub"

    @property
    def ca_key(self) -> Path:
        return self.folder / "ca.key"

    def identity_dir(self, identity: str) -> Path:
        """Folder of a grant identity (`site-N` or `auditor`): identity.key/.crt, ca.crt."""
        return self.folder / identity

    def check(self, sites: int, *, auth: bool = True, identities: bool = False) -> None:
        from encryption.identity import CA_CERT, IDENTITY_CERT, IDENTITY_KEY

        need = [self.ca, self.server_cert, self.server_key]
        if auth:
            need += [p for i in range(sites) for p in (self.node_key(i), self.node_pub(i))]
        if identities:
            need += [
                self.identity_dir(name) / f
                for name in identity_names(sites)
                for f in (IDENTITY_KEY, IDENTITY_CERT, CA_CERT)
            ]
        missing = [str(p) for p in need if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"certificate folder {self.folder}: missing {', '.join(missing)} "
                "(make them with `python deploy/certs.py --out DIR --sites N`)"
            )


def identity_names(sites: int) -> list[str]:
    """The grant identities of a federation of `sites` hospitals: site-0.., auditor."""
    from encryption.identity import AUDITOR

    return [f"site-{i}" for i in range(sites)] + [AUDITOR]


def write_certificates(
    folder: str | Path,
    *,
    sites: int = 3,
    names: Iterable[str] = SERVER_NAMES,
    days: int = 365,
    overwrite: bool = False,
    study: str = "demo",
) -> Certificates:
    """CA + SuperLink certificate (SANs `names`) + one auth key pair per site, under `folder`,
    and a grant identity per site and for the auditor, certified for `study`.

    Existing files are kept unless `overwrite` (node keys and identities for
    new sites are added; an identity whose certificate is not for this CA and
    study gets a new certificate for its existing key).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    from encryption.pki import make_ca
    from encryption.private_files import private_key_pem, write_private_file

    certs = Certificates(Path(folder))
    certs.folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    pem = serialization.Encoding.PEM
    if overwrite or not all(p.is_file() for p in (certs.ca, certs.server_cert, certs.server_key)):
        # the same CA as a study's (encryption/pki.py): EC P-384, path length 0
        ca_key, ca_cert = make_ca(common_name=CA_NAME, days=days)
        ca_name = ca_cert.subject
        names = list(names)
        sans: list[x509.GeneralName] = []
        for n in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        key = ec.generate_private_key(ec.SECP384R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
            .sign(ca_key, hashes.SHA384())
        )
        certs.ca.write_bytes(ca_cert.public_bytes(pem))
        certs.server_cert.write_bytes(cert.public_bytes(pem))
        write_private_file(certs.server_key, private_key_pem(key), overwrite=True)
        # kept (0600) to certify identities of sites added later; never mount it in a container
        write_private_file(certs.ca_key, private_key_pem(ca_key), overwrite=True)
    for i in range(sites):
        if overwrite or not certs.node_key(i).is_file() or not certs.node_pub(i).is_file():
            write_node_key(certs.node_key(i), certs.node_pub(i))
    write_identities(certs, identity_names(sites), study=study, days=days, overwrite=overwrite)
    return certs


def write_identities(
    certs: Certificates, identities: Iterable[str], *, study: str, days: int, overwrite: bool
) -> None:
    """Each identity's folder: its own X25519 key (made there, as a hospital would) and a
    certificate for it from the CA in `certs`; kept when it already verifies for `study`."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    from encryption.identity import IDENTITY_KEY, Identity, install_certificate, request_identity
    from encryption.pki import CertificateError, issue_identity_certificate
    from encryption.private_files import load_private_key_file

    ca_cert = x509.load_pem_x509_certificate(certs.ca.read_bytes())
    ca_key = None
    for name in identities:
        folder = certs.identity_dir(name)
        if overwrite:
            (folder / IDENTITY_KEY).unlink(missing_ok=True)
        else:
            try:
                Identity.load(folder, identity=name, study=study, ca_cert=ca_cert)
                continue
            except (FileNotFoundError, CertificateError):
                pass  # no identity yet, or certified by another CA or for another study
        if ca_key is None:
            if not certs.ca_key.is_file():
                raise DeployError(
                    f"certificate folder {certs.folder}: the identity {name!r} needs a "
                    f"certificate but the CA key {certs.ca_key.name} is not there (a folder "
                    "made by an older medfed); rerun with --overwrite to make a new CA"
                )
            ca_key = load_private_key_file(certs.ca_key, ec.EllipticCurvePrivateKey, "CA key")
        request = request_identity(folder)  # the private key never leaves `folder`
        cert = issue_identity_certificate(
            ca_key, ca_cert, request, identity=name, study=study, days=days
        )
        install_certificate(folder, cert, ca_cert, identity=name, study=study)


def write_node_key(private_path: Path, public_path: Path) -> None:
    """One SuperNode authentication key pair: EC P-384 in OpenSSH format."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from encryption.private_files import write_private_file

    key = ec.generate_private_key(ec.SECP384R1())
    write_private_file(
        private_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
        overwrite=True,
    )
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        + b"\n"
    )


def probe_tls(address: str, ca: str | Path, timeout: float = 10.0) -> None:
    """Check that the SuperLink at `address` presents a certificate that `ca` signed.

    The flwr CLI reports a failed verification only as "connection unavailable";
    this names the cause. Raises DeployError; returns None when the chain is good.
    """
    import ssl

    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        ctx = ssl.create_default_context(cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise DeployError(f"CA certificate {ca}: cannot be read ({exc})") from None
    try:
        with (
            socket.create_connection((host, int(port)), timeout=timeout) as sock,
            ctx.wrap_socket(sock, server_hostname=host),
        ):
            return
    except ssl.SSLCertVerificationError as exc:
        raise DeployError(
            f"TLS: the SuperLink's certificate at {address} is not signed by the CA in {ca}, "
            f"or does not name {host!r} ({exc.verify_message}); use the ca.crt made together "
            "with server.pem"
        ) from None
    except ssl.SSLError as exc:
        raise DeployError(f"TLS handshake with the SuperLink at {address} failed: {exc}") from None
    except OSError as exc:
        raise DeployError(f"cannot reach the SuperLink at {address}: {exc}") from None
