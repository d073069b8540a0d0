"""Key rotation revokes: a grantee of an older key version learns nothing from
a newer container of any method. The attacker holds the older version's
decryption material (what a grant carries: site key and learned weights) and
ignores every integrity check: it runs the method's decoder on the payload as
stored and on the payload AES-CTR-decrypted under its own container key (what
AES-GCM would give without its tag check). It must do no better than the same
decoder run on random bytes of the payload's length."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import smooth_images
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from client.keys import SiteKeys
from encryption import ContainerError, list_encryptors
from encryption.container import _split
from encryption.material import DecryptionMaterial
from encryption.registry import encryptor_class
from study.config import Study

MARGIN_DB = 1.5


def _psnr(a: np.ndarray, b: np.ndarray, bits: int) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10((2**bits - 1) ** 2 / mse))


def _decode(enc, header, payload: bytes) -> np.ndarray | None:
    """The method's decoder on `payload`, no tag checked; None if it refuses."""
    try:
        out = enc._decrypt_payload(header, payload)
    except (ContainerError, ValueError, TypeError, LookupError, ArithmeticError):
        return None
    return out if out.shape == tuple(header.shape) else None


def _ctr(key: bytes, nonce: bytes, body: bytes) -> bytes:
    """AES-GCM's keystream applied without the tag check (GCM: counter nonce || 2)."""
    dec = Cipher(algorithms.AES(key), modes.CTR(nonce + b"\x00\x00\x00\x02")).decryptor()
    return dec.update(body) + dec.finalize()


def _best_psnr(enc, blob: bytes, images: np.ndarray, bits: int, payloads=None) -> float:
    header, _, nonce, body, _ = _split(blob)
    if payloads is None:
        payloads = [body, _ctr(enc.container_key, nonce, body)]
    found = [_decode(enc, header, p) for p in payloads]
    return max((_psnr(images, x, bits) for x in found if x is not None), default=-np.inf)


@pytest.mark.parametrize("name", list_encryptors())
def test_a_newer_key_version_is_unreadable_with_older_material(name, tmp_path):
    images = smooth_images(6, 1, 32, 8, seed=4)
    learned = encryptor_class(name).learned
    study = Study(name="revocation", method=name, out_dir=str(tmp_path))
    keys = SiteKeys(study, "site-0", tmp_path / "site-0", tmp_path / "identity")
    options = {"epochs": 40} if learned else {}
    v0 = keys.encryptor(0, options=options, fit=lambda enc: enc.fit(images))
    v1 = keys.encryptor(1, options=options, fit=lambda enc: enc.fit(images))
    assert v1.key != v0.key
    blob = v1.encrypt(images)
    owner = _psnr(images, v1.decrypt(blob), 8)
    # what a removed grantee kept: version 0's material, as its grant carried it
    old = DecryptionMaterial.from_bytes(DecryptionMaterial.from_encryptor(v0).to_bytes())
    old = old.encryptor()
    np.testing.assert_array_equal(old.decrypt(v0.encrypt(images)), v0.decrypt(v0.encrypt(images)))

    attack = _best_psnr(old, blob, images, 8)

    body = _split(blob)[3]
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, len(body), dtype=np.uint8).tobytes() for _ in range(3)]
    baseline = _best_psnr(old, blob, images, 8, payloads=noise)
    assert attack <= baseline + MARGIN_DB, (name, attack, baseline, owner)


def test_deepedn_reads_its_first_version_containers():
    """tests/data/deepedn_v1.pkl: containers written before the seal (the
    cipher image stored as is, GMAC only) decode to the same images with the
    same material; new ones are sealed, and the seal's field is checked."""
    import pickle
    from dataclasses import replace
    from pathlib import Path

    from encryption import IntegrityError
    from encryption.container import read_body, read_header, seal_container

    cases = pickle.loads((Path(__file__).parent / "data" / "deepedn_v1.pkl").read_bytes())
    for name, case in cases.items():
        enc = DecryptionMaterial.from_bytes(case["material"]).encryptor()
        assert "seal" not in read_header(case["blob"]).extra, name
        np.testing.assert_array_equal(enc.decrypt(case["blob"]), case["dec"], err_msg=name)
        blob = enc.encrypt(case["x"])
        header, body = read_body(blob)
        assert header.extra["seal"] == "aes-gcm", name
        assert body != read_body(case["blob"])[1], name  # the cipher image is not in the clear
        np.testing.assert_array_equal(enc.decrypt(blob), case["dec"], err_msg=name)
        np.testing.assert_array_equal(enc.cipher_image(blob), enc.cipher_image(case["blob"]))
        # a first-version container relabelled as sealed, or a sealed one as
        # first-version, fails its tag; an unknown seal is named
        old_header = read_header(case["blob"])
        with pytest.raises(IntegrityError):
            enc.decrypt(_relabel(case["blob"], old_header.extra | {"seal": "aes-gcm"}))
        unsealed = {k: v for k, v in header.extra.items() if k != "seal"}
        with pytest.raises(IntegrityError):
            enc.decrypt(_relabel(blob, unsealed))
        other = replace(header, extra=header.extra | {"seal": "rot13"})
        bad = seal_container(enc.container_key, other, body, encrypt=True, nonce=bytes(12))
        with pytest.raises(ContainerError, match="seal='rot13'"):
            enc.decrypt(bad)


def _relabel(blob: bytes, extra: dict) -> bytes:
    """`blob` with its header's extra replaced, nonce, payload and tag kept."""
    import struct
    from dataclasses import replace

    header, _, nonce, body, tag = _split(blob)
    raw = replace(header, extra=extra).to_bytes()
    prefix = struct.pack(">4sBH", b"MFED", 1, len(raw)) + raw + nonce + struct.pack(">Q", len(body))
    return prefix + body + tag


@pytest.mark.slow
def test_a_study_resumed_without_a_grantee_delivers_it_nothing(tmp_path, monkeypatch):
    """A consortium stops after round 1, when site 0's grants are sealed but
    not yet delivered; it resumes with site 1 removed from site 0's grantees:
    site 1 never holds site 0's key, site 2 does. Removing site 2 as well once
    it holds the study's only key version (rotate-every = 0) is said at the
    start of the next resume and in its first round record."""
    from client.site import Site
    from simulations.runner import run_simulated_study
    from study.schema import read_rounds

    monkeypatch.setenv("MEDFED_DATA_HOME", str(tmp_path / "data"))
    out = tmp_path / "run"
    before = Study(
        name="revocation", num_sites=3, num_rounds=1, min_sites=1, image_size=32,
        phantom_patients=48, phantom_size=64, share_per_round=4, holdout_images=16,
        exchange="consortium", grants="0->1,0->2,1->0,2->0", out_dir=str(out),
    ).replace()  # fmt: skip
    run_simulated_study(before)
    after = before.replace(num_rounds=2, grants="0->2,1->0,2->0", resume=True)
    result = run_simulated_study(after)
    assert [r.round for r in result.rounds] == [2]
    assert all(s.ok for s in result.rounds[0].sites), result.rounds[0].sites
    assert "site-0" not in dict(Site(after, 1, 3).keys.held_grants())
    assert ("site-0", 0) in Site(after, 2, 3).keys.held_grants()
    assert "warnings" not in result.rounds[0].extra

    last = after.replace(num_rounds=3, grants="1->0,2->0")
    run_simulated_study(last)
    [record] = [r for r in read_rounds(out) if r.round == 3]
    [warning] = record.extra["warnings"]
    assert "site-2 is no longer a grantee of site-0" in warning and "rotate-every = 0" in warning
    events = (out / "events.jsonl").read_text()
    assert "site-2 is no longer a grantee of site-0" in events
