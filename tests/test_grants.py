"""Key grants (encryption/grants.py) with identities certified by a study CA
(encryption/pki.py, encryption/identity.py) and the material they carry
(encryption/material.py): round trips, and every rejection with its own error."""

from __future__ import annotations

import datetime as dt
import json
import stat
import struct

import numpy as np
import pytest
import torch
from conftest import smooth_images
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from encryption import IntegrityError, get_encryptor, hpke
from encryption.grants import (
    GrantAddresseeError,
    GrantContextError,
    GrantError,
    GrantHeader,
    GrantTamperedError,
    MalformedGrantError,
    open_grant,
    read_grant_header,
    seal_grant,
)
from encryption.identity import (
    IDENTITY_CERT,
    IDENTITY_KEY,
    Identity,
    install_certificate,
    request_identity,
)
from encryption.material import DecryptionMaterial, MaterialError
from encryption.pki import (
    CertificateExpiredError,
    CertificateIdentityError,
    CertificateKeyError,
    CertificateStudyError,
    Directory,
    MalformedCertificateError,
    StudyCA,
    UntrustedCertificateError,
    verify_identity_certificate,
)
from encryption.private_files import KeyFilePermissionError

STUDY = "multi-centre cxr"
NAMES = ("site-0", "site-1", "site-2", "auditor")


def _enrol(ca: StudyCA, folder, name: str) -> Identity:
    request = request_identity(folder)  # the site makes its key; only this PEM travels
    install_certificate(
        folder, ca.issue(name, request), ca.certificate_pem, identity=name, study=ca.study
    )
    return Identity.load(folder, identity=name, study=ca.study)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A study CA in the run folder and four enrolled identities, each in its own folder."""
    root = tmp_path_factory.mktemp("study")
    ca = StudyCA.create(root / "run" / "ca", STUDY)
    ids = {n: _enrol(ca, root / "sites" / n / "identity", n) for n in NAMES}
    return ca, ids, root


def _grant(ids, material=b"decryption material", grantee="site-1", **kw):
    args = {
        "grantor": ids["site-0"],
        "grantee": grantee,
        "grantee_cert": ids[grantee].certificate_pem,
        "study": STUDY,
        "key_version": 3,
    }
    args.update(kw)
    return seal_grant(material, **args)


def _open(ids, blob, identity="site-1", **kw):
    args = {
        "identity": ids[identity],
        "grantor": "site-0",
        "grantor_cert": ids["site-0"].certificate_pem,
        "study": STUDY,
        "key_version": 3,
    }
    args.update(kw)
    return open_grant(blob, **args)


# --------------------------------------------------------------------------- round trips
def test_grant_round_trip_and_header(world):
    _, ids, _ = world
    blob = _grant(ids, material=b"m" * 1000)
    assert read_grant_header(blob) == GrantHeader(STUDY, "site-0", "site-1", 3)
    assert _open(ids, blob) == b"m" * 1000


def test_grant_to_the_auditor(world):
    _, ids, _ = world
    blob = _grant(ids, grantee="auditor")
    assert _open(ids, blob, identity="auditor") == b"decryption material"


def test_grant_of_a_learned_encryptor_decrypts_the_grantors_containers(world):
    """learned-codec-aes fitted by the grantor; the grantee decrypts its container."""
    # Prepare: the grantor fits on its images and encrypts a batch
    _, ids, _ = world
    images = smooth_images(4, 1, 16, 8)
    grantor_enc = get_encryptor(
        "learned-codec-aes", epochs=1, min_steps=2, nf=8, latent_per_channel=2, crop=16
    )
    grantor_enc.fit(images)
    container = grantor_enc.encrypt(images)
    material = DecryptionMaterial.from_encryptor(grantor_enc).to_bytes()
    # Execute: the grant travels; the grantee opens it and builds its encryptor
    blob = _grant(ids, material=material)
    received = DecryptionMaterial.from_bytes(_open(ids, blob))
    decrypted = received.encryptor().decrypt(container)
    # Assert: the same images the grantor's own encryptor decrypts (lossy method)
    assert received.method == "learned-codec-aes"
    np.testing.assert_array_equal(decrypted, grantor_enc.decrypt(container))
    assert np.abs(decrypted.astype(int) - images.astype(int)).mean() < 8


def test_grant_of_bp_chaos_material(world):
    """A learned method with its own state layout (flat keys, tensors, ints, bools)."""
    _, ids, _ = world
    images = smooth_images(4, 1, 16, 8)
    enc = get_encryptor("bp-chaos", epochs=1)
    enc.fit(images)
    container = enc.encrypt(images)
    blob = _grant(ids, material=DecryptionMaterial.from_encryptor(enc).to_bytes())
    got = DecryptionMaterial.from_bytes(_open(ids, blob)).encryptor().decrypt(container)
    np.testing.assert_array_equal(got, images)  # lossless method


def test_grant_of_aes_gcm_material(world):
    _, ids, _ = world
    enc = get_encryptor("aes-gcm")
    images = smooth_images(2, 1, 8, 8)
    container = enc.encrypt(images)
    blob = _grant(ids, material=DecryptionMaterial.from_encryptor(enc).to_bytes())
    got = DecryptionMaterial.from_bytes(_open(ids, blob)).encryptor().decrypt(container)
    np.testing.assert_array_equal(got, images)


# --------------------------------------------------------------------------- grant rejections
def _flip(blob: bytes, i: int) -> bytes:
    return blob[:i] + bytes([blob[i] ^ 0x40]) + blob[i + 1 :]


@pytest.mark.parametrize("where", ["ciphertext", "tag", "enc"])
def test_tampered_grant(world, where):
    _, ids, _ = world
    blob = _grant(ids)
    at = {"ciphertext": len(blob) - 20, "tag": len(blob) - 1, "enc": len(blob) - 60}[where]
    with pytest.raises(GrantTamperedError, match="does not authenticate") as err:
        _open(ids, _flip(blob, at))
    assert isinstance(err.value, IntegrityError)


def test_changed_header_fails_authentication(world):
    """A server that rewrites the key version (or any header field) to match is caught."""
    _, ids, _ = world
    blob = _grant(ids, key_version=3)
    forged = blob[:12] + struct.pack(">I", 4) + blob[16:]  # the key_version field
    assert read_grant_header(forged).key_version == 4
    with pytest.raises(GrantTamperedError):
        _open(ids, forged, key_version=4)


def test_grant_for_another_site_relabelled(world):
    """Sealed to site-2, its header rewritten to name site-1: site-1 cannot open it."""
    _, ids, _ = world
    blob = _grant(ids, grantee="site-2")
    relabelled = blob.replace(b"\x06site-2", b"\x06site-1", 1)
    with pytest.raises(GrantTamperedError):
        _open(ids, relabelled, identity="site-1")


def test_grant_addressed_to_another_identity(world):
    _, ids, _ = world
    blob = _grant(ids, grantee="site-2")
    with pytest.raises(GrantAddresseeError, match="addressed to site-2, not to site-1"):
        _open(ids, blob, identity="site-1")


@pytest.mark.parametrize(
    "expect",
    [{"study": "another study"}, {"key_version": 2}, {"grantor": "site-2"}],
    ids=["study", "key-version", "grantor"],
)
def test_grant_for_another_context(world, expect):
    _, ids, _ = world
    blob = _grant(ids)
    if "grantor" in expect:
        expect["grantor_cert"] = ids["site-2"].certificate_pem
    field = next(iter(expect))
    with pytest.raises(GrantContextError, match=f"expected {field}"):
        _open(ids, blob, **expect)


def test_grant_forged_by_another_certified_identity(world):
    """site-2 seals material and labels it as from site-0: Auth mode rejects it."""
    _, ids, _ = world
    forged_identity = Identity("site-0", STUDY, ids["site-2"].private_key,
                               ids["site-0"].certificate, ids["site-0"].ca_certificate)  # fmt: skip
    blob = _grant(ids, grantor=forged_identity)
    with pytest.raises(GrantTamperedError, match="not sealed by site-0"):
        _open(ids, blob)


def test_grant_sealed_in_base_mode_by_the_server(world):
    """A server knows site-1's public key; a Base-mode grant it makes does not open."""
    _, ids, _ = world
    real = _grant(ids)
    header = real[: len(real) - 32 - 4 - len(b"decryption material") - 16]
    enc, ct = hpke.seal(ids["site-1"].public_key, b"server key", info=b"medfed/key-grant/v1",
                        aad=header)  # fmt: skip
    forged = header + enc + struct.pack(">I", len(ct)) + ct
    with pytest.raises(GrantTamperedError):
        _open(ids, forged)


@pytest.mark.parametrize(
    "damage",
    ["empty", "truncated", "extra-byte", "magic", "version", "suite", "ct-length", "bad-name"],
)
def test_malformed_envelope(world, damage):
    _, ids, _ = world
    blob = _grant(ids)
    bad = {
        "empty": b"",
        "truncated": blob[:-1],
        "extra-byte": blob + b"\0",
        "magic": b"XXXX" + blob[4:],
        "version": blob[:4] + b"\x09" + blob[5:],
        "suite": blob[:10] + b"\x00\x01" + blob[12:],  # aead_id 0x0001 (AES-128-GCM)
        "ct-length": blob[: len(blob) - 16 - len(b"decryption material") - 4]
        + struct.pack(">I", 5)
        + blob[len(blob) - 16 - len(b"decryption material") :],
        "bad-name": blob.replace(b"\x06site-0", b"\x06site/0", 1),
    }[damage]
    with pytest.raises(MalformedGrantError, match="grant envelope"):
        _open(ids, bad)


def test_key_version_range(world):
    _, ids, _ = world
    with pytest.raises(ValueError, match="key_version"):
        _grant(ids, key_version=-1)


# --------------------------------------------------------------------------- certificates
def test_seal_to_a_swapped_public_key(world):
    """The server hands site-2's certificate as site-1's: sealing refuses."""
    _, ids, _ = world
    with pytest.raises(CertificateIdentityError, match="swapped"):
        _grant(ids, grantee="site-1", grantee_cert=ids["site-2"].certificate_pem)


def test_certificate_from_another_ca(world, tmp_path):
    _, ids, _ = world
    rogue = StudyCA.create(tmp_path / "rogue", STUDY)  # same study name, same identity name
    impostor = _enrol(rogue, tmp_path / "site-1", "site-1")
    with pytest.raises(UntrustedCertificateError, match="not signed by the study CA"):
        _grant(ids, grantee_cert=impostor.certificate_pem)
    with pytest.raises(UntrustedCertificateError):
        _open(
            ids, _grant(ids), grantor_cert=_enrol(rogue, tmp_path / "s0", "site-0").certificate_pem
        )


def test_certificate_for_another_study(world):
    ca, ids, _ = world
    other = StudyCA(ca.folder, "another study", ca.key, ca.certificate)  # same CA key
    cert = other.issue("site-1", ids["site-1"].public_key)
    with pytest.raises(CertificateStudyError, match="issued for study 'another study'"):
        _grant(ids, grantee_cert=cert)


def test_expired_and_not_yet_valid_certificates(world):
    ca, ids, _ = world
    cert = ca.issue("site-1", ids["site-1"].public_key, days=1)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    earlier = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    with pytest.raises(CertificateExpiredError, match="expired on"):
        _grant(ids, grantee_cert=cert, now=later)
    with pytest.raises(CertificateExpiredError, match="not valid before"):
        _grant(ids, grantee_cert=cert, now=earlier)


def test_certificate_with_a_non_x25519_key(world):
    ca, ids, _ = world
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "site-1"),
                                 x509.NameAttribute(NameOID.ORGANIZATION_NAME, "medfed"),
                                 x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, STUDY)]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(ca.key, hashes.SHA384())
    )  # fmt: skip
    with pytest.raises(CertificateKeyError, match="not an X25519"):
        verify_identity_certificate(cert, ca_cert=ca.certificate, identity="site-1", study=STUDY)


def test_malformed_certificate_and_non_ca(world):
    ca, ids, _ = world
    with pytest.raises(MalformedCertificateError, match="certificate of site-1"):
        _grant(ids, grantee_cert=b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    with pytest.raises(MalformedCertificateError, match="is not a CA"):
        verify_identity_certificate(
            ids["site-1"].certificate_pem, ca_cert=ids["site-2"].certificate_pem,
            identity="site-1", study=STUDY,
        )  # fmt: skip


def test_directory_verifies_every_entry(world):
    ca, ids, _ = world
    pems = {n: ids[n].certificate_pem for n in NAMES}
    directory = Directory.from_pems(pems, ca_cert=ca.certificate_pem, study=STUDY)
    assert sorted(directory) == sorted(NAMES)
    assert directory.certificate_pem("site-2") == pems["site-2"]
    assert set(
        Directory.from_pems(directory.to_pems(), ca_cert=ca.certificate, study=STUDY)
    ) == set(NAMES)
    swapped = {**pems, "site-1": pems["site-2"]}
    with pytest.raises(CertificateIdentityError, match="certificate of site-1"):
        Directory.from_pems(swapped, ca_cert=ca.certificate_pem, study=STUDY)
    with pytest.raises(KeyError, match="no certificate for identity 'site-9'"):
        directory["site-9"]


# --------------------------------------------------------------------------- identities on disk
def test_identity_files_and_modes(world):
    ca, ids, root = world
    folder = root / "sites" / "site-0" / "identity"
    assert stat.S_IMODE((folder / IDENTITY_KEY).stat().st_mode) == 0o600
    assert stat.S_IMODE((ca.folder / "ca.key").stat().st_mode) == 0o600
    assert b"PRIVATE KEY" not in (folder / IDENTITY_CERT).read_bytes()
    # the CA's folder holds no site private key
    assert sorted(p.name for p in ca.folder.iterdir()) == ["ca.crt", "ca.key"]
    # a study CA that exists is loaded again, not replaced
    again = StudyCA.ensure(ca.folder, STUDY)
    assert again.certificate == ca.certificate
    with pytest.raises(FileExistsError):
        StudyCA.create(ca.folder, STUDY)


def test_readable_private_key_is_refused(tmp_path, world):
    ca, _, _ = world
    me = _enrol(ca, tmp_path / "me", "site-5")
    (tmp_path / "me" / IDENTITY_KEY).chmod(0o640)
    with pytest.raises(KeyFilePermissionError, match="mode 640"):
        Identity.load(tmp_path / "me", identity="site-5", study=STUDY)
    (tmp_path / "me" / IDENTITY_KEY).chmod(0o600)
    assert (
        Identity.load(tmp_path / "me" / IDENTITY_KEY, identity="site-5", study=STUDY).name
        == me.name
    )
    # name and study taken from the certificate (`--identity KEYFILE`), still verified
    found = Identity.load(tmp_path / "me" / IDENTITY_KEY)
    assert (found.name, found.study) == ("site-5", STUDY)
    (tmp_path / "me" / "ca.crt").write_bytes(StudyCA.create(tmp_path / "x", STUDY).certificate_pem)
    with pytest.raises(UntrustedCertificateError):
        Identity.load(tmp_path / "me" / IDENTITY_KEY)


def test_certificate_for_another_key_in_the_folder(tmp_path, world):
    ca, ids, _ = world
    _enrol(ca, tmp_path / "me", "site-1")
    (tmp_path / "me" / IDENTITY_CERT).write_bytes(ids["site-1"].certificate_pem)
    with pytest.raises(CertificateIdentityError, match="another public key"):
        Identity.load(tmp_path / "me", identity="site-1", study=STUDY)
    with pytest.raises(CertificateIdentityError, match="another public key"):
        install_certificate(tmp_path / "me", ids["site-1"].certificate_pem, ca.certificate_pem,
                            identity="site-1", study=STUDY)  # fmt: skip


def test_identity_names_are_checked(world):
    ca, ids, _ = world
    with pytest.raises(ValueError, match="identity name"):
        ca.issue("../site-0", ids["site-0"].public_key)


# --------------------------------------------------------------------------- material
def test_material_round_trip_keeps_every_type():
    state = {
        "version": 1,
        "rate": 0.5,
        "flag": True,
        "none": None,
        "name": "x",
        "shape": (2, 3),
        "list": [1, "a", [2.0]],
        "blob": b"\x00\x01",
        "array": np.arange(6, dtype=np.uint16).reshape(2, 3),
        "nested": {"w": torch.randn(3, 4), "b": torch.zeros(0), "i": torch.tensor(7)},
        "half": torch.randn(5).to(torch.bfloat16),
    }
    m = DecryptionMaterial(bytes(range(32)), "aes-gcm", state)
    back = DecryptionMaterial.from_bytes(m.to_bytes())
    assert back.key == m.key and back.method == "aes-gcm"
    s = back.state
    assert (s["version"], s["rate"], s["flag"], s["none"], s["name"]) == (1, 0.5, True, None, "x")
    assert s["shape"] == (2, 3) and s["list"] == [1, "a", [2.0]] and s["blob"] == b"\x00\x01"
    np.testing.assert_array_equal(s["array"], state["array"])
    assert s["array"].dtype == np.uint16
    for k in ("w", "b", "i"):
        assert torch.equal(s["nested"][k], state["nested"][k])
    assert s["half"].dtype == torch.bfloat16 and torch.equal(s["half"], state["half"])


@pytest.mark.parametrize(
    "damage", ["pickle", "magic", "json-length", "trailing", "gap", "dtype", "shape"]
)
def test_malformed_material(damage):
    import pickle

    good = DecryptionMaterial(bytes(32), "aes-gcm", {"w": torch.ones(2)}).to_bytes()
    json_len = struct.unpack(">I", good[5:9])[0]
    text = good[9 : 9 + json_len]
    data = good[9 + json_len :]

    def redo(new_text: bytes, new_data: bytes = data) -> bytes:
        return good[:5] + struct.pack(">I", len(new_text)) + new_text + new_data

    bad = {
        "pickle": pickle.dumps({"key": bytes(32)}),
        "magic": b"PK\x03\x04" + good[4:],
        "json-length": good[:5] + struct.pack(">I", 10**6) + good[9:],
        "trailing": good + b"\0",
        "gap": redo(text.replace(b",0,8]", b",1,8]"), b"\0" + data),
        "dtype": redo(text.replace(b'"float32"', b'"object"')),
        "shape": redo(text.replace(b"[2]", b"[3]")),
    }[damage]
    with pytest.raises(MaterialError, match="decryption material"):
        DecryptionMaterial.from_bytes(bad)


def test_errors_are_value_errors():
    assert issubclass(GrantError, ValueError) and issubclass(MaterialError, ValueError)


# --------------------------------------------------------------------------- the server's broker
def _broker(study, root):
    from server.archive import Archive
    from server.grants import GrantBroker

    return GrantBroker(study, Archive(root / "archive"))


def _enrolled(broker, ids):
    for i in range(3):
        broker.enrol(i, ids[f"site-{i}"].certificate_pem)
    return broker


def _sent(record) -> list[str]:
    return sorted(k for k in (record or {}) if k.startswith("grant/"))


def test_a_grantee_removed_on_resume_is_delivered_nothing(world, tmp_path):
    """Site 0 sealed grants to sites 1 and 2 in round 1; the study resumes with
    site 1 removed: site 1 gets none of them, site 2 gets its own once, and
    the delivered set survives a second resume."""
    from flwr.app import ConfigRecord

    from study.config import Study

    _, ids, _ = world
    study = Study(
        name=STUDY, num_sites=3, exchange="consortium", grants="0->1,0->2", out_dir=str(tmp_path)
    )
    first = _enrolled(_broker(study, tmp_path), ids)
    asked = first.outgoing(0, 1)
    assert asked["request-grantees"] == "site-1,site-2"
    sealed = {g: _grant(ids, grantee=g, key_version=0) for g in ("site-1", "site-2")}
    assert first.incoming(0, 1, ConfigRecord(sealed)) > 0
    # the study stops after round 1 and resumes without 0->1
    after = study.replace(grants="0->2", resume=True)
    resumed = _enrolled(_broker(after, tmp_path), ids)
    assert _sent(resumed.outgoing(1, 2)) == []
    assert _sent(resumed.outgoing(2, 2)) == ["grant/site-0/0"]
    resumed.confirmed(1)
    resumed.confirmed(2)
    assert resumed.policy_warnings(2) == []  # site 1 never held site 0's key
    again = _enrolled(_broker(after, tmp_path), ids)
    assert again.delivered == {("site-0", "site-2", 0)} and again.warnings == []
    assert _sent(again.outgoing(2, 3)) == [] and _sent(again.outgoing(1, 3)) == []
    lines = (tmp_path / "archive" / "grants-delivered.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == [
        {"grantor": "site-0", "grantee": "site-2", "key_version": 0, "round": 2}
    ]


def test_removing_a_grantee_that_holds_the_key_says_what_it_cannot_revoke(world, tmp_path):
    from flwr.app import ConfigRecord

    from study.config import Study

    _, ids, _ = world
    study = Study(
        name=STUDY, num_sites=3, exchange="consortium", grants="0->2", out_dir=str(tmp_path)
    )
    broker = _enrolled(_broker(study, tmp_path), ids)
    broker.outgoing(0, 1)
    broker.incoming(0, 1, ConfigRecord({"site-2": _grant(ids, grantee="site-2", key_version=0)}))
    assert _sent(broker.outgoing(2, 2)) == ["grant/site-0/0"]
    broker.confirmed(2)
    removed = _enrolled(_broker(study.replace(grants="2->0", resume=True), tmp_path), ids)
    [warning] = removed.policy_warnings(3)
    assert "site-2 is no longer a grantee of site-0" in warning
    assert "rotate-every = 0 nothing is revoked" in warning
    # with key versions, it keeps only the version in use, until that version ends
    rotating = study.replace(grants="2->0", resume=True, rotate_every=3)
    removed = _enrolled(_broker(rotating, tmp_path), ids)
    [warning] = removed.policy_warnings(3)
    assert "holds its key version 0, in use until round 3" in warning
    assert removed.policy_warnings(4) == []


def test_the_delivered_record_is_read_as_hostile(world, tmp_path):
    from study.config import Study

    _, ids, _ = world
    study = Study(
        name=STUDY, num_sites=3, exchange="consortium", grants="0->2", out_dir=str(tmp_path)
    )
    _broker(study, tmp_path)  # a new study: an empty record
    path = tmp_path / "archive" / "grants-delivered.jsonl"
    assert path.read_text() == ""
    good = {"grantor": "site-0", "grantee": "site-2", "key_version": 0, "round": 2}
    bad = [
        {**good, "grantor": "../ca"},
        {**good, "grantee": "../auditor"},
        {**good, "key_version": "0"},
        {**good, "round": -1},
        {**good, "extra": 1},
        [good],
    ]
    path.write_text("".join(json.dumps(d) + "\n" for d in [good, *bad]) + "{oops\n")
    broker = _broker(study, tmp_path)
    assert broker.delivered == {("site-0", "site-2", 0)}
    assert len(broker.warnings) == len(bad) + 1
    for number, warning in enumerate(broker.warnings, 2):
        assert warning.startswith(f"skipped: {path}, line {number}: "), warning
    assert "grantor: site '../ca' is not a site name" in broker.warnings[0]
    assert "key_version '0' is not an integer" in broker.warnings[2]
    # a link in its place is removed, never read nor appended through
    secret = tmp_path / "secret"
    secret.write_text("do not touch\n")
    path.unlink()
    path.symlink_to(secret)
    broker = _broker(study, tmp_path)
    assert "is a link: removed, not read" in broker.warnings[0]
    assert secret.read_text() == "do not touch\n" and not path.is_symlink()
