"""Certificates for TLS and SuperNode authentication, and a check of a SuperLink's chain.

`write_certificates()` makes a CA, a SuperLink server certificate (SANs: the
compose service name, localhost, 127.0.0.1) and one EC P-384 authentication
key pair per SuperNode (OpenSSH format, what `flower-supernode
--auth-supernode-private-key` and `flwr supernode register` read). It uses
the `cryptography` package rather than openssl so that it runs the same way
on every platform and in the image. Private keys are written with mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from simulations.deploy.errors import SERVER_NAMES, DeployError


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

    def check(self, sites: int, *, auth: bool = True) -> None:
        need = [self.ca, self.server_cert, self.server_key]
        if auth:
            need += [p for i in range(sites) for p in (self.node_key(i), self.node_pub(i))]
        missing = [str(p) for p in need if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"certificate folder {self.folder}: missing {', '.join(missing)} "
                "(make them with `python deploy/certs.py --out DIR --sites N`)"
            )


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)


def write_certificates(
    folder: str | Path,
    *,
    sites: int = 3,
    names: Iterable[str] = SERVER_NAMES,
    days: int = 365,
    overwrite: bool = False,
) -> Certificates:
    """CA + SuperLink certificate (SANs `names`) + one auth key pair per site, under `folder`.

    Existing files are kept unless `overwrite` (node keys for new sites are added).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    certs = Certificates(Path(folder))
    certs.folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    pem = serialization.Encoding.PEM
    if overwrite or not all(p.is_file() for p in (certs.ca, certs.server_cert, certs.server_key)):
        ca_key = ec.generate_private_key(ec.SECP384R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "medfed federation CA")])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
            .sign(ca_key, hashes.SHA384())
        )
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
        _write_private(
            certs.server_key,
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        )
        # the CA key is not kept: nothing needs to sign again; rerun to rotate everything
    for i in range(sites):
        if overwrite or not certs.node_key(i).is_file() or not certs.node_pub(i).is_file():
            write_node_key(certs.node_key(i), certs.node_pub(i))
    return certs


def write_node_key(private_path: Path, public_path: Path) -> None:
    """One SuperNode authentication key pair: EC P-384 in OpenSSH format."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    _write_private(
        private_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
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
