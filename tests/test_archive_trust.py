"""The server's archive read as hostile: whoever can write archive/ must not
make the server send another file of the run folder as an object, nor make
`medfed archive open` read outside the archive or stop at one bad entry."""

from __future__ import annotations

import argparse
import hashlib
import json
import os

import numpy as np
import pytest
from conftest import smooth_images

from encryption import get_encryptor
from encryption.grants import seal_grant
from encryption.identity import Identity, install_certificate, request_identity
from encryption.material import DecryptionMaterial
from encryption.pki import StudyCA
from server.archive import Archive, ArchiveError
from server.federation import pending_shares
from simulations.archive_reader import open_archive
from study.config import Study
from study.schema import SCHEMA, SchemaError

SECRET = b"-----BEGIN PRIVATE KEY-----\nthe study CA's key\n-----END PRIVATE KEY-----\n"


@pytest.fixture
def archive(tmp_path):
    (tmp_path / "ca").mkdir()
    (tmp_path / "ca" / "ca.key").write_bytes(SECRET)
    return Archive(tmp_path / "archive")


def _object(archive: Archive, digest: str):
    return archive.objects / digest[:2] / digest


def test_an_object_replaced_by_a_link_is_refused(archive, tmp_path):
    digest = archive.put(b"a container", site="site-0", server_round=1, kind="images")
    path = _object(archive, digest)
    path.unlink()
    path.symlink_to(tmp_path / "ca" / "ca.key")
    with pytest.raises(ArchiveError, match=r"is a link") as err:
        archive.get(digest)
    assert digest in str(err.value) and "PRIVATE" not in str(err.value)
    # a link is refused even to a file that holds the right bytes
    (tmp_path / "copy").write_bytes(b"a container")
    path.unlink()
    path.symlink_to(tmp_path / "copy")
    with pytest.raises(ArchiveError, match=r"is a link"):
        archive.get(digest)
    # storing the object again replaces the link, and never writes through it
    archive.put(b"a container", site="site-0", server_round=2, kind="images")
    assert not path.is_symlink() and archive.get(digest) == b"a container"
    assert (tmp_path / "ca" / "ca.key").read_bytes() == SECRET


def test_a_certificate_is_never_written_or_read_through_a_link(archive, tmp_path):
    secret = tmp_path / "ca" / "ca.key"
    folder = archive.root / "certificates"
    folder.mkdir(parents=True)
    for tmp in (".site-0.crt.tmp", "site-0.tmp"):  # where a write may go first
        (folder / tmp).symlink_to(secret)
    (folder / "site-1.crt").symlink_to(secret)
    assert archive.certificate("site-0") is None
    with pytest.raises(ArchiveError, match=r"site-1.crt is a link"):
        archive.certificate("site-1")
    archive.put_certificate("site-0", b"PEM 0")
    archive.put_certificate("site-1", b"PEM 1")
    assert archive.certificate("site-0") == b"PEM 0" and archive.certificate("site-1") == b"PEM 1"
    assert secret.read_bytes() == SECRET
    # a linked certificates folder is replaced, not written into
    folder.rename(tmp_path / "old-certificates")
    folder.symlink_to(tmp_path / "ca", target_is_directory=True)
    archive.put_certificate("site-2", b"PEM 2")
    assert not folder.is_symlink() and sorted(p.name for p in (tmp_path / "ca").iterdir()) == [
        "ca.key"
    ]
    with pytest.raises(ValueError, match="identity name"):
        archive.certificate("../ca/ca")


def test_a_linked_object_folder_is_refused(archive, tmp_path):
    digest = hashlib.sha256(SECRET).hexdigest()  # even with the right name
    archive.objects.mkdir(parents=True)
    (archive.objects / digest[:2]).symlink_to(tmp_path / "ca", target_is_directory=True)
    os.link(tmp_path / "ca" / "ca.key", tmp_path / "ca" / digest)
    with pytest.raises(ArchiveError, match=r"is a link or not a folder"):
        archive.get(digest)


def test_a_modified_object_is_refused(archive):
    digest = archive.put(b"a container", site="site-0", server_round=1, kind="images")
    _object(archive, digest).write_bytes(SECRET)
    with pytest.raises(ArchiveError, match=r"sha256 [0-9a-f]{64}, not its name") as err:
        archive.get(digest)
    assert "PRIVATE" not in str(err.value)


@pytest.mark.parametrize(
    "digest", ["../../ca/ca.key", "A" * 64, "0" * 63, "0" * 65, "../" + "0" * 61, 7, None]
)
def test_an_object_name_must_be_a_sha256(archive, digest):
    with pytest.raises(ArchiveError, match=r"is not 64 lowercase hex digits"):
        archive.get(digest)


def test_a_resumed_consortium_sends_no_unverified_share(archive, tmp_path):
    good = (
        archive.put(b"images 0", site="site-0", server_round=3, kind="images"),
        archive.put(b"labels 0", site="site-0", server_round=3, kind="labels"),
    )
    linked = (
        archive.put(b"images 1", site="site-1", server_round=3, kind="images"),
        archive.put(b"labels 1", site="site-1", server_round=3, kind="labels"),
    )
    altered = (
        archive.put(b"images 2", site="site-2", server_round=3, kind="images"),
        archive.put(b"labels 2", site="site-2", server_round=3, kind="labels"),
    )
    _object(archive, linked[0]).unlink()
    _object(archive, linked[0]).symlink_to(tmp_path / "ca" / "ca.key")
    _object(archive, altered[1]).write_bytes(b"labels 2, altered")

    pending, skipped = pending_shares(archive, {0: good, 1: linked, 2: altered}, 3)

    assert pending == {0: (b"images 0", b"labels 0")}
    assert len(skipped) == 2
    assert skipped[0].startswith("site-1's share of round 3 is not sent") and "link" in skipped[0]
    assert skipped[1].startswith("site-2's share of round 3 is not sent") and "sha256" in skipped[1]
    assert all("PRIVATE" not in s for s in skipped)


def test_index_lines_are_checked_field_by_field(archive):
    digest = archive.put(b"a container", site="site-0", server_round=1, kind="images")
    good = json.loads(archive.index_path.read_text())
    bad = [
        {**good, "site": "../../ca/ca"},
        {**good, "round": "NaN"},
        {**good, "round": -1},
        {**good, "round": True},
        {**good, "sha256": "../" + digest[3:]},
        {**good, "kind": "model"},
        {**good, "bytes": 1.5},
        {**good, "kind": "grant", "grantee": "../auditor", "key_version": 0},
        {**good, "kind": "grant", "grantee": "auditor", "key_version": "0"},
        [good],
    ]
    with open(archive.index_path, "a") as fh:
        for doc in bad:
            fh.write(json.dumps(doc) + "\n")
        fh.write('{"sha256": "' + digest + '", "round": NaN}\n')
        fh.write("not json\n")
    entries, problems = archive.read_index()
    assert entries == [good]
    assert len(problems) == len(bad) + 2
    for number, problem in enumerate(problems, 2):
        assert problem.startswith(f"{archive.index_path}, line {number}: "), problem
    assert "site '../../ca/ca' is not a site name" in problems[0]
    assert "round 'NaN' is not an integer" in problems[1]
    with pytest.raises(SchemaError, match=r"index.jsonl, line 2: .*line 3: .*line 4: .*9 more"):
        archive.index()


# -- medfed archive open -----------------------------------------------------------------
STUDY = "hostile archive"


def _identity(ca: StudyCA, folder, name: str) -> Identity:
    install_certificate(
        folder, ca.issue(name, request_identity(folder)), ca.certificate_pem, identity=name,
        study=STUDY,
    )  # fmt: skip
    return Identity.load(folder, identity=name, study=STUDY)


@pytest.fixture
def run(tmp_path):
    """A run folder whose archive holds site-0's grant to the auditor and its
    containers of rounds 1 and 2, and the study CA's key beside it."""
    run = tmp_path / "run"
    study = Study(name=STUDY, method="aes-gcm", out_dir=str(run))
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"schema": SCHEMA, "study": study.to_run_config()}))
    ca = StudyCA.create(run / "ca", STUDY)
    site, auditor = (_identity(ca, tmp_path / n, n) for n in ("site-0", "auditor"))
    enc = get_encryptor("aes-gcm")
    material = DecryptionMaterial.from_encryptor(enc).to_bytes()
    archive = Archive(run / "archive")
    archive.put_certificate("site-0", site.certificate_pem)
    grant = seal_grant(
        material, grantor=site, grantee="auditor", grantee_cert=auditor.certificate_pem,
        study=STUDY, key_version=0,
    )  # fmt: skip
    archive.put(
        grant, site="site-0", server_round=1, kind="grant",
        extra={"grantee": "auditor", "key_version": 0},
    )  # fmt: skip
    images = {}
    for rnd in (1, 2):
        images[rnd] = smooth_images(2, 1, 16, 8, seed=rnd)
        archive.put(enc.encrypt(images[rnd]), site="site-0", server_round=rnd, kind="images")
        labels = np.array([[rnd, 0]], dtype=np.uint8).reshape(1, 1, 1, 2)
        archive.put(
            get_encryptor("aes-gcm", enc.key).encrypt(labels),
            site="site-0", server_round=rnd, kind="labels",
        )  # fmt: skip
    return run, archive, images, tmp_path / "auditor" / "identity.key"


def test_archive_open_skips_hostile_entries_and_opens_the_good_ones(run, capsys):
    folder, archive, images, key = run
    good = [json.loads(line) for line in archive.index_path.read_text().splitlines()]
    container = next(e for e in good if e["kind"] == "images")
    ca_key = (folder / "ca" / "ca.key").read_bytes()
    hostile = [
        {**container, "site": "../ca/ca", "round": 3},  # a path out of the archive
        {**container, "round": "NaN"},
        {**container, "site": "site-0", "round": 4, "sha256": "../../ca/ca.key"},
    ]
    # and an object the index names whose file was swapped for a link to the CA key
    linked = archive.put(b"round 5", site="site-0", server_round=5, kind="images")
    path = archive.objects / linked[:2] / linked
    path.unlink()
    path.symlink_to(folder / "ca" / "ca.key")
    with open(archive.index_path, "a") as fh:
        for doc in hostile:
            fh.write(json.dumps(doc) + "\n")

    opened = open_archive(folder, key)

    assert opened.grants == [("site-0", 0)]
    assert sorted(opened.decrypted) == [("site-0", 1), ("site-0", 2)]
    for rnd in (1, 2):
        np.testing.assert_array_equal(opened.decrypted[("site-0", rnd)], images[rnd])
    assert len(opened.skipped) == 4, opened.skipped
    index = str(archive.index_path)
    assert f"{index}, line 7: site '../ca/ca' is not a site name" in opened.skipped[0]
    assert f"{index}, line 8: round 'NaN' is not an integer" in opened.skipped[1]
    assert f"{index}, line 9: sha256 '../../ca/ca.key' is not 64" in opened.skipped[2]
    assert "site-0 round 5" in opened.skipped[3] and "is a link" in opened.skipped[3]
    assert all(ca_key[:20].decode() not in s for s in opened.skipped)
    assert opened.unreadable == {"site-0": [5]}

    from simulations.commands.archive import main_open

    assert main_open(argparse.Namespace(run=str(folder), identity=str(key), out=None)) == 0
    err = capsys.readouterr().err
    assert "4 archive entries skipped:" in err and "line 8: round 'NaN'" in err


def test_archive_open_skips_a_grant_it_cannot_trust(run):
    folder, archive, _, key = run
    grant = next(e for e in archive.index() if e["kind"] == "grant")
    (archive.objects / grant["sha256"][:2] / grant["sha256"]).write_bytes(b"not the grant")

    opened = open_archive(folder, key)

    assert opened.grants == [] and opened.decrypted == {}
    assert len(opened.skipped) == 1 and "grant of site-0 key version 0" in opened.skipped[0]
    assert "not its name" in opened.skipped[0]
    assert opened.unreadable == {"site-0": [1, 2]}
