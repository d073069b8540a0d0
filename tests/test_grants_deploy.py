"""Key-grant identities made by `medfed deploy certs` (deploy/certificates.py):
one folder per hospital and for the auditor, certified by the federation's CA."""

from __future__ import annotations

import stat

import pytest
from cryptography.x509.oid import NameOID

from deploy import DeployError, write_certificates
from encryption.grants import open_grant, seal_grant
from encryption.identity import CA_CERT, IDENTITY_CERT, IDENTITY_KEY, Identity
from encryption.pki import UntrustedCertificateError


def test_identity_folders_per_site_and_auditor(tmp_path):
    # Execute
    certs = write_certificates(tmp_path, sites=2, study="cxr")
    # Assert: the layout a container mounts (its folder only), modes, and that it loads
    certs.check(2, identities=True)
    for name in ("site-0", "site-1", "auditor"):
        folder = certs.identity_dir(name)
        assert sorted(p.name for p in folder.iterdir()) == [CA_CERT, IDENTITY_CERT, IDENTITY_KEY]
        assert stat.S_IMODE((folder / IDENTITY_KEY).stat().st_mode) == 0o600
        assert (folder / CA_CERT).read_bytes() == certs.ca.read_bytes()
        assert Identity.load(folder, identity=name, study="cxr").name == name
    assert stat.S_IMODE(certs.ca_key.stat().st_mode) == 0o600
    # a grant between two hospitals that see only their own folders
    s0 = Identity.load(certs.identity_dir("site-0"), identity="site-0", study="cxr")
    aud = Identity.load(certs.identity_dir("auditor"), identity="auditor", study="cxr")
    blob = seal_grant(b"k", grantor=s0, grantee="auditor", grantee_cert=aud.certificate_pem,
                      study="cxr", key_version=0)  # fmt: skip
    assert open_grant(blob, identity=aud, grantor="site-0", grantor_cert=s0.certificate_pem,
                      study="cxr", key_version=0) == b"k"  # fmt: skip


def test_identities_kept_added_and_reissued(tmp_path):
    # Prepare
    certs = write_certificates(tmp_path, sites=1, study="cxr")
    key0 = (certs.identity_dir("site-0") / IDENTITY_KEY).read_bytes()
    crt0 = (certs.identity_dir("site-0") / IDENTITY_CERT).read_bytes()
    # Execute: a site is added later (same CA), then the study name changes
    write_certificates(tmp_path, sites=2, study="cxr")
    same = (certs.identity_dir("site-0") / IDENTITY_CERT).read_bytes()
    Identity.load(certs.identity_dir("site-1"), identity="site-1", study="cxr")
    write_certificates(tmp_path, sites=2, study="mri")
    # Assert
    assert same == crt0
    assert (certs.identity_dir("site-0") / IDENTITY_KEY).read_bytes() == key0  # key kept
    # a new certificate for the same key, naming the new study (load verifies both)
    reissued = Identity.load(certs.identity_dir("site-0"), identity="site-0", study="mri")
    assert (certs.identity_dir("site-0") / IDENTITY_CERT).read_bytes() != crt0
    ou = reissued.certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    assert [a.value for a in ou] == ["mri"]
    assert reissued.certificate_pem == (certs.identity_dir("site-0") / IDENTITY_CERT).read_bytes()


def test_overwrite_rotates_ca_and_identities(tmp_path):
    certs = write_certificates(tmp_path, sites=1)
    old_ca = certs.ca.read_bytes()
    key0 = (certs.identity_dir("site-0") / IDENTITY_KEY).read_bytes()
    write_certificates(tmp_path, sites=1, overwrite=True)
    assert (certs.identity_dir("site-0") / IDENTITY_KEY).read_bytes() != key0
    me = Identity.load(certs.identity_dir("site-0"), identity="site-0", study="demo")
    with pytest.raises(UntrustedCertificateError):
        Identity.load(certs.identity_dir("site-0"), identity="site-0", study="demo", ca_cert=old_ca)
    assert me.ca_certificate_pem == certs.ca.read_bytes()


def test_folder_without_ca_key_is_named(tmp_path):
    certs = write_certificates(tmp_path, sites=1)
    certs.ca_key.unlink()  # as made by an older medfed, which did not keep it
    with pytest.raises(DeployError, match="rerun with --overwrite"):
        write_certificates(tmp_path, sites=2)
