"""HPKE (encryption/hpke.py) against RFC 9180's published test vectors, against
an independent implementation (OpenSSL's, through `cryptography`), and its
rejections.

Vectors: the CFRG HPKE test-vectors file (github.com/cfrg/draft-irtf-cfrg-hpke,
test-vectors.json, the vectors of RFC 9180 Appendix A; as shipped in the
`cryptography_vectors` package, HPKE/test-vectors.json), first encryption
(sequence number 0) of each entry. A.1.1 and A.1.3 are the RFC's printed
DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / AES-128-GCM Base and Auth
vectors; the AES-256-GCM (aead_id 0x0002) entries are the same file's.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from pyhpke import AEADId, CipherSuite, KDFId, KEMId, KEMKey, KEMKeyPair

from encryption import hpke
from encryption.container import IntegrityError

INFO = "4f6465206f6e2061204772656369616e2055726e"  # "Ode on a Grecian Urn"
PT = "4265617574792069732074727574682c20747275746820626561757479"  # "Beauty is truth, ..."
AAD = "436f756e742d30"  # "Count-0"

# RFC 9180 A.1.1 (Base) and A.1.3 (Auth): DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM
RFC_A1 = {
    "A.1.1-base": {
        "mode": 0,
        "skRm": "4612c550263fc8ad58375df3f557aac531d26850903e55a9f23f21d8534e8ac8",
        "pkRm": "3948cfe0ad1ddb695d780e59077195da6c56506b027329794ab02bca80815c4d",
        "skEm": "52c4a758a802cd8b936eceea314432798d5baf2d7e9235dc084ab1b9cfa2f736",
        "enc": "37fda3567bdbd628e88668c3c8d7e97d1d1253b6d4ea6d44c150f741f1bf4431",
        "skSm": None,
        "pkSm": None,
        "ct": "f938558b5d72f1a23810b4be2ab4f84331acc02fc97babc53a52ae8218a355a96d8770ac83d07bea87e13c512a",
    },
    "A.1.3-auth": {
        "mode": 2,
        "skRm": "fdea67cf831f1ca98d8e27b1f6abeb5b7745e9d35348b80fa407ff6958f9137e",
        "pkRm": "1632d5c2f71c2b38d0a8fcc359355200caa8b1ffdf28618080466c909cb69b2e",
        "skEm": "ff4442ef24fbc3c1ff86375b0be1e77e88a0de1e79b30896d73411c5ff4c3518",
        "enc": "23fb952571a14a25e3d678140cd0e5eb47a0961bb18afcf85896e5453c312e76",
        "skSm": "dc4a146313cce60a278a5323d321f051c5707e9c45ba21a3479fecdf76fc69dd",
        "pkSm": "8b0c70873dc5aecb7f9ee4e62406a397b350e57012be45cf53b7105ae731790b",
        "ct": "5fd92cc9d46dbf8943e72a07e42f363ed5f721212cd90bcfd072bfd9f44e06b80fd17824947496e21b680c141b",
    },
}

# CFRG test-vectors.json: mode 0 / 2, kem_id 0x0020, kdf_id 0x0001, aead_id 0x0002 (AES-256-GCM)
CFRG_AES256 = {
    "aes256-base": {
        "mode": 0,
        "skRm": "497b4502664cfea5d5af0b39934dac72242a74f8480451e1aee7d6a53320333d",
        "pkRm": "430f4b9859665145a6b1ba274024487bd66f03a2dd577d7753c68d7d7d00c00c",
        "skEm": "179d4b53b6365c45b600c4163b61d95cbc2f4d9e36f1695558dce265ab8bab11",
        "enc": "6c93e09869df3402d7bf231bf540fadd35cd56be14f97178f0954db94b7fc256",
        "skSm": None,
        "pkSm": None,
        "ct": "e5d84cd531cfb583096e7cfa9641bd3079cf3a91cda813c52deb5f512be9931980a41de125a925cdad859d5b7a",
    },
    "aes256-auth": {
        "mode": 2,
        "skRm": "47f1eee3670dfaaf27c30a83d06ee9f257af174727c17b35328ef730dfc1cd81",
        "pkRm": "3668d659cec6f338f4f8dc6da6733118d2a633f186a3c1415c895111a8eb7c7d",
        "skEm": "805b278cabd22c9dbd461bf25771703eda4950ed3ef35b369163097899555356",
        "enc": "9e59f4b1fa5c876f684765290c34e51145894cc4f244342b9fb1a4bdfd8bb426",
        "skSm": "98fdf9b9773578a79d4ba82fbe483c74cc2e3b8d9525d148a18969fd79a74876",
        "pkSm": "4a91c3d0893433f5e31a79fc520f885527a1bc60bf2b0c72693dd7f0b2e41a5a",
        "ct": "10b964283ac2cc0bdc4c85ab617291b446bf3832e9359b2c3a0facc50ea75a3c1afd08aeaacd6041d02eb560ec",
    },
}

h = bytes.fromhex


def _priv(hexkey: str | None) -> X25519PrivateKey | None:
    return None if hexkey is None else X25519PrivateKey.from_private_bytes(h(hexkey))


def _pub(hexkey: str | None) -> X25519PublicKey | None:
    return None if hexkey is None else X25519PublicKey.from_public_bytes(h(hexkey))


@pytest.mark.parametrize("name", sorted(CFRG_AES256))
def test_seal_reproduces_the_aes256_vectors(name):
    # Prepare
    v = CFRG_AES256[name]
    # Execute
    enc, ct = hpke.seal(
        _pub(v["pkRm"]),
        h(PT),
        info=h(INFO),
        aad=h(AAD),
        sender=_priv(v["skSm"]),
        ephemeral=_priv(v["skEm"]),
    )
    # Assert
    assert enc.hex() == v["enc"]
    assert ct.hex() == v["ct"]


@pytest.mark.parametrize("name", sorted(CFRG_AES256))
def test_open_recovers_the_aes256_vectors(name):
    v = CFRG_AES256[name]
    pt = hpke.open_sealed(
        _priv(v["skRm"]), h(v["enc"]), h(v["ct"]), info=h(INFO), aad=h(AAD), sender=_pub(v["pkSm"])
    )
    assert pt == h(PT)


@pytest.mark.parametrize("name", sorted(RFC_A1))
def test_library_reproduces_rfc_appendix_a1(name):
    """The same KEM and KDF under the RFC's printed AES-128-GCM vectors (pyhpke directly:
    encryption/hpke.py fixes AES-256-GCM)."""
    # Prepare
    v = RFC_A1[name]
    suite = CipherSuite.new(KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256, AEADId.AES128_GCM)
    eph = _priv(v["skEm"])
    eks = KEMKeyPair(
        KEMKey.from_pyca_cryptography_key(eph), KEMKey.from_pyca_cryptography_key(eph.public_key())
    )
    sks = None if v["skSm"] is None else KEMKey.from_pyca_cryptography_key(_priv(v["skSm"]))
    # Execute
    enc, ctx = suite.create_sender_context(
        KEMKey.from_pyca_cryptography_key(_pub(v["pkRm"])), info=h(INFO), sks=sks, eks=eks
    )
    ct = ctx.seal(h(PT), aad=h(AAD))
    # Assert
    assert enc.hex() == v["enc"]
    assert ct.hex() == v["ct"]


def _openssl_hpke():
    pytest.importorskip("cryptography.hazmat.primitives.hpke")
    from cryptography.hazmat.primitives import hpke as ossl

    return ossl, ossl.Suite(ossl.KEM.X25519, ossl.KDF.HKDF_SHA256, ossl.AEAD.AES_256_GCM)


def test_agrees_with_an_independent_implementation():
    """Base mode against OpenSSL's HPKE (cryptography >= 47): each opens what the other seals."""
    # Prepare
    ossl, suite = _openssl_hpke()
    sk = X25519PrivateKey.generate()
    msg, info = b"site key and weights" * 10, b"medfed/test"
    # Execute: ours -> theirs (their single-shot format is enc || ct)
    enc, ct = hpke.seal(sk.public_key(), msg, info=info)
    theirs_opened = suite.decrypt(enc + ct, sk, info=info)
    # theirs -> ours
    blob = suite.encrypt(msg, sk.public_key(), info=info)
    ours_opened = hpke.open_sealed(sk, blob[: hpke.ENC_BYTES], blob[hpke.ENC_BYTES :], info=info)
    # Assert
    assert theirs_opened == msg
    assert ours_opened == msg


def test_agrees_with_an_independent_implementation_on_aad():
    ossl, suite = _openssl_hpke()
    if not hasattr(ossl.rust_openssl.hpke, "_decrypt_with_aad"):
        pytest.skip("this cryptography exposes no HPKE aad")
    sk = X25519PrivateKey.generate()
    enc, ct = hpke.seal(sk.public_key(), b"m", info=b"i", aad=b"the grant header")
    opened = ossl.rust_openssl.hpke._decrypt_with_aad(
        suite, enc + ct, sk, info=b"i", aad=b"the grant header"
    )
    assert opened == b"m"


# --------------------------------------------------------------------------- rejections
@pytest.fixture(scope="module")
def sealed():
    recipient, sender = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    enc, ct = hpke.seal(recipient.public_key(), b"x" * 64, info=b"i", aad=b"a", sender=sender)
    return recipient, sender, enc, ct


def _flip(data: bytes, i: int) -> bytes:
    return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]


@pytest.mark.parametrize(
    "change",
    [
        "recipient",
        "sender",
        "base-mode",
        "info",
        "aad",
        "ciphertext-bit",
        "tag-bit",
        "enc-bit",
        "truncated",
        "low-order-enc",
        "short-enc",
    ],
)
def test_open_rejects(sealed, change):
    # Prepare
    recipient, sender, enc, ct = sealed
    kw = {
        "recipient": recipient,
        "enc": enc,
        "ciphertext": ct,
        "info": b"i",
        "aad": b"a",
        "sender": sender.public_key(),
    }
    changes = {
        "recipient": {"recipient": X25519PrivateKey.generate()},
        "sender": {"sender": X25519PrivateKey.generate().public_key()},
        "base-mode": {"sender": None},
        "info": {"info": b"j"},
        "aad": {"aad": b"b"},
        "ciphertext-bit": {"ciphertext": _flip(ct, 3)},
        "tag-bit": {"ciphertext": _flip(ct, len(ct) - 1)},
        "enc-bit": {"enc": _flip(enc, 5)},
        "truncated": {"ciphertext": ct[:10]},
        "low-order-enc": {"enc": bytes(32)},
        "short-enc": {"enc": enc[:31]},
    }
    kw.update(changes[change])
    # Execute / Assert
    with pytest.raises(hpke.HPKEError) as err:
        hpke.open_sealed(kw.pop("recipient"), kw.pop("enc"), kw.pop("ciphertext"), **kw)
    assert isinstance(err.value, IntegrityError)
    assert "HPKE" in str(err.value)


def test_seal_is_randomised():
    sk = X25519PrivateKey.generate()
    a = hpke.seal(sk.public_key(), b"same")
    b = hpke.seal(sk.public_key(), b"same")
    assert a[0] != b[0] and a[1] != b[1]


def test_keys_must_be_x25519():
    from cryptography.hazmat.primitives.asymmetric import ec

    with pytest.raises(TypeError, match="X25519"):
        hpke.seal(ec.generate_private_key(ec.SECP256R1()).public_key(), b"m")
