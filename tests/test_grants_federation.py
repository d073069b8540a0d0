"""Key grants between hospitals that share nothing but the network: grants
travel only through the server (which cannot open them), no site reads
another site's folder, a removed grantee reads nothing shared after its
removal, and a server that tampers with, misaddresses or swaps keys is caught."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from client import audit
from client.site import Site
from encryption import IntegrityError, get_encryptor
from encryption.grants import GrantAddresseeError, GrantTamperedError
from encryption.keys import load_key_bundle
from encryption.pki import CertificateIdentityError, UntrustedCertificateError
from server import grants as grants_module
from server.archive import Archive
from simulations.archive_reader import open_archive
from simulations.identities import provision_identities
from simulations.runner import run_simulated_study
from study.config import Study
from study.schema import read_rounds


def small(out: Path, **changes) -> Study:
    base = dict(
        name="grants",
        num_sites=3,
        num_rounds=3,
        min_sites=1,
        image_size=32,
        phantom_patients=48,
        phantom_size=64,
        share_per_round=4,
        holdout_images=16,
        exchange="consortium",
        out_dir=str(out),
    )
    return Study(**{**base, **changes}).replace()


@pytest.fixture(autouse=True)
def data_home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MEDFED_DATA_HOME", str(tmp_path_factory.getbasetemp() / "grants-data"))


@pytest.mark.federation
def test_a_learned_consortium_exchanges_grants_through_the_server_only(tmp_path, monkeypatch):
    out, accesses = tmp_path / "run", tmp_path / "access"
    monkeypatch.setenv(audit.ENV, str(accesses))
    study = small(
        out, method="learned-codec-aes", method_epochs=1, rotate_every=2, auditor="auditor"
    )
    result = run_simulated_study(study)
    rounds = result.rounds
    assert all(s.ok for r in rounds for s in r.sites), [s.error for r in rounds for s in r.sites]
    # grants go up in the first round of each key version (1 and 3), down a round later
    assert [r.totals["grant_up"] > 0 for r in rounds] == [True, False, True]
    assert all(r.totals["grant_down"] > 0 for r in rounds)
    assert rounds[0].totals["ciphertext_down"] == 0 < rounds[1].totals["ciphertext_down"]
    r1, r2 = ({s.site: s for s in r.sites} for r in rounds[:2])
    # peers' images were decrypted with grants and trained on
    assert r2["site-0"].examples == r1["site-0"].examples + 2 * study.share_per_round
    # ... and reported per peer, with the reconstruction their grantor measured
    assert r1["site-0"].peers == {}
    assert set(r2["site-0"].peers) == {"site-1", "site-2"}
    for peer, seen in r2["site-0"].peers.items():
        assert seen["images"] == study.share_per_round
        assert seen["psnr"] == r1[peer].recon["psnr"] > 20
    # no site opened another site's state folder; each one opened its own
    assert audit.foreign_opens(accesses) == []
    logs = "".join(p.read_text() for p in accesses.glob("access-*.log"))
    for i in range(3):
        assert f"sites/site-{i}/key-v0.bundle" in logs
    # the server's archive holds grants it cannot open: no site key appears in it
    archive = Archive(out / "archive")
    stored = b"".join(archive.get(e["sha256"]) for e in archive.index())
    for i in range(3):
        for v in (0, 1):
            key, _, _ = load_key_bundle(out / "sites" / f"site-{i}" / f"key-v{v}.bundle")
            assert key not in stored
    grants = [e for e in archive.index() if e["kind"] == "grant"]
    assert {(e["site"], e["grantee"], e["key_version"]) for e in grants} == {
        (f"site-{i}", g, v)
        for i in range(3)
        for g in [f"site-{j}" for j in range(3) if j != i] + ["auditor"]
        for v in (0, 1)
    }
    # the auditor reads every container it was granted, as the owner decrypts it
    opened = open_archive(out, out / "auditor" / "identity.key")
    assert sorted(opened.decrypted) == [(f"site-{i}", r) for i in range(3) for r in (1, 2, 3)]
    images = [e for e in archive.index() if e["kind"] == "images" and e["site"] == "site-1"]
    owner = Site(study, 1, 3).encryptor(study.key_version(images[-1]["round"]))
    np.testing.assert_array_equal(
        opened.decrypted[("site-1", images[-1]["round"])],
        owner.decrypt(archive.get(images[-1]["sha256"])),
    )


@pytest.mark.federation
def test_a_removed_grantee_cannot_read_what_is_shared_after_its_removal(tmp_path):
    out = tmp_path / "run"
    before = small(out, num_rounds=2, rotate_every=1, grants="0->1,0->2,1->0,2->0")
    run_simulated_study(before)
    # the consortium removes site 1 from site 0's grantees and goes on
    after = before.replace(num_rounds=4, grants="0->2,1->0,2->0", resume=True)
    result = run_simulated_study(after)
    assert [r.round for r in result.rounds] == [3, 4]
    archive = Archive(out / "archive")
    late = [
        e
        for e in archive.index()
        if e["kind"] == "images" and e["site"] == "site-0" and e["round"] >= 3
    ]
    assert late
    reader, other = Site(after, 1, 3), Site(after, 2, 3)
    held = reader.keys.held_grants()
    assert ("site-0", 0) in held and not any(v >= 2 for g, v in held if g == "site-0")
    for entry in late:
        blob, version = archive.get(entry["sha256"]), after.key_version(entry["round"])
        for grantor, v in held:
            with pytest.raises(IntegrityError):
                reader.keys.peer_encryptor(grantor, v).decrypt(blob)
        if entry["round"] == 3:  # a grantee still in the policy reads it (round 4's
            # grant would reach site 2 in a fifth round)
            assert other.keys.peer_encryptor("site-0", version).decrypt(blob).shape[0] == 4


@pytest.fixture
def sites(tmp_path) -> list[Site]:
    study = small(tmp_path / "unit", auditor="auditor")
    provision_identities(study)
    return [Site(study, i, 3) for i in range(3)]


def sealed(sites: list[Site]) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """Site 0's grants of version 0 to sites 1 and 2, and every certificate."""
    certs = {s.name: s.keys.certificate_pem() for s in sites}
    enc = get_encryptor("aes-gcm", b"\1" * 32)
    grants = sites[0].keys.seal_grants(0, enc, {g: certs[g] for g in ("site-1", "site-2")})
    return grants, certs


def test_a_grant_opens_only_for_its_grantee_and_untampered(sites):
    grants, certs = sealed(sites)
    sites[1].keys.receive_grant("site-0", 0, grants["site-1"], certs["site-0"])
    assert sites[1].keys.peer_encryptor("site-0", 0).key == b"\1" * 32
    changed = bytearray(grants["site-1"])
    changed[-5] ^= 0x01
    with pytest.raises(GrantTamperedError):
        sites[1].keys.receive_grant("site-0", 0, bytes(changed), certs["site-0"])
    with pytest.raises(GrantAddresseeError, match="addressed to site-2, not to site-1"):
        sites[1].keys.receive_grant("site-0", 0, grants["site-2"], certs["site-0"])


def test_keys_the_study_ca_did_not_certify_or_swapped_are_refused(sites, tmp_path):
    _, certs = sealed(sites)
    enc = get_encryptor("aes-gcm", b"\2" * 32)
    # the server gives site 0 site 2's certificate as site 1's
    with pytest.raises(CertificateIdentityError, match="site-2"):
        sites[0].keys.seal_grants(0, enc, {"site-1": certs["site-2"]})
    # a certificate from a CA of the server's own making
    rogue = small(tmp_path / "rogue", auditor="auditor")
    provision_identities(rogue)
    forged = Site(rogue, 1, 3).keys.certificate_pem()
    with pytest.raises(UntrustedCertificateError):
        sites[0].keys.seal_grants(0, enc, {"site-1": forged})


@pytest.mark.federation
def test_a_server_that_swaps_public_keys_is_recorded_failed_by_the_site(tmp_path, monkeypatch):
    """End to end: the server relays site 2's certificate as site 1's; the
    grantor refuses to seal, and rounds.jsonl says why."""
    original = grants_module.GrantBroker.outgoing

    def swapping(self, site, server_round):
        record = original(self, site, server_round)
        if record is not None and "cert/site-1" in record:
            record["cert/site-1"] = self.certificates["site-2"]
        return record

    monkeypatch.setattr(grants_module.GrantBroker, "outgoing", swapping)
    out = tmp_path / "run"
    run_simulated_study(small(out, num_rounds=1))
    sites = {s.site: s for s in read_rounds(out)[0].sites}
    for grantor in ("site-0", "site-2"):  # the two sites asked to seal a grant to site-1
        assert sites[grantor].ok is False
        assert "CertificateIdentityError" in sites[grantor].error
        assert "site-2" in sites[grantor].error and "site-1" in sites[grantor].error
    assert sites["site-1"].ok


def test_sealed_grants_need_the_grantee_s_private_key(sites):
    grants, certs = sealed(sites)
    # site 2 holds its own key, not site 1's: site 1's grant stays closed to it
    with pytest.raises(GrantAddresseeError):
        sites[2].keys.receive_grant("site-0", 0, grants["site-1"], certs["site-0"])
    assert not (sites[2].folder / "grants" / "site-0.v0.grant").exists()
