"""One suite for every registered method: round trip, shapes and dtypes,
8/16-bit and multi-channel, state reload, tamper, wrong key, truncation, and
forged containers (sealed with the real key by another key holder, lying in
their header or payload: ContainerError after bounded work and memory).

Learned methods (`learned = True`) get `epochs=1` and are fitted once per
batch kind at 32 x 32, so the suite stays fast.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from encryption import ContainerError, IntegrityError, get_encryptor, list_encryptors
from encryption.keys import generate_key
from encryption.metrics import psnr
from encryption.registry import encryptor_class

METHODS = list_encryptors()
BATCHES = {"xray8": 8, "xray16": 12, "mri4": 16}  # fixture name -> bit depth
LOSSY_PSNR_FLOOR_DB = 10.0


def _config(name: str) -> dict:
    return {"epochs": 1} if encryptor_class(name).learned else {}


@pytest.fixture(scope="module")
def fitted_cache() -> dict:
    return {}


@pytest.fixture
def fitted(request, fitted_cache):
    """(encryptor, key, images, bits) for (method, batch kind), fitted once."""

    def get(name: str, kind: str):
        images = request.getfixturevalue(kind)
        if (name, kind) not in fitted_cache:
            key = generate_key()
            enc = get_encryptor(name, key=key, **_config(name))
            if enc.learned:
                enc.fit(images)
            fitted_cache[name, kind] = (enc, key)
        enc, key = fitted_cache[name, kind]
        return enc, key, images, BATCHES[kind]

    return get


@pytest.mark.parametrize("kind", sorted(BATCHES))
@pytest.mark.parametrize("name", METHODS)
def test_round_trip(name, kind, fitted):
    enc, _, images, bits = fitted(name, kind)

    blob = enc.encrypt(images, bits)
    out = enc.decrypt(blob)

    assert isinstance(blob, bytes)
    assert out.shape == images.shape and out.dtype == images.dtype
    if enc.lossless:
        np.testing.assert_array_equal(out, images)
    else:
        value = psnr(images, out, bits)
        assert not math.isnan(value)
        assert value > LOSSY_PSNR_FLOOR_DB, f"{name} on {kind}: PSNR {value:.2f} dB"


@pytest.mark.parametrize("name", METHODS)
def test_state_reload_reproduces_decryption(name, fitted):
    enc, key, images, bits = fitted(name, "xray8")
    blob = enc.encrypt(images, bits)

    clone = get_encryptor(name, key=key, **_config(name))
    clone.load_state_dict(enc.state_dict())

    np.testing.assert_array_equal(clone.decrypt(blob), enc.decrypt(blob))


@pytest.mark.parametrize("name", METHODS)
def test_determinism_flag_is_honest(name, fitted):
    enc, _, images, bits = fitted(name, "xray8")

    same = enc.encrypt(images, bits) == enc.encrypt(images, bits)

    assert same == enc.deterministic


@pytest.mark.parametrize("name", METHODS)
def test_cipher_image_is_uint8_batch(name, fitted):
    enc, _, images, bits = fitted(name, "xray8")

    view = enc.cipher_image(enc.encrypt(images, bits))

    assert view.dtype == np.uint8 and view.ndim == 4 and view.shape[0] == len(images)


@pytest.mark.parametrize("name", METHODS)
def test_flipped_bits_are_rejected(name, fitted):
    enc, _, images, bits = fitted(name, "xray8")
    blob = enc.encrypt(images, bits)
    hlen = int.from_bytes(blob[5:7], "big")
    header_end = 7 + hlen
    positions = {
        "magic": 0,
        "version": 4,
        "header length": 6,
        "header": 7 + hlen // 2,
        "nonce": header_end + 3,
        "payload length": header_end + 12 + 7,
        "payload start": header_end + 20,
        "payload middle": (header_end + 20 + len(blob) - 16) // 2,
        "tag": len(blob) - 1,
    }

    for where, pos in positions.items():
        for bit in (0, 7):
            bad = bytearray(blob)
            bad[pos] ^= 1 << bit
            with pytest.raises(ContainerError):
                enc.decrypt(bytes(bad))
                pytest.fail(f"{name}: flipped bit {bit} of byte {pos} ({where}) was accepted")


@pytest.mark.parametrize("name", METHODS)
def test_wrong_key_is_rejected(name, fitted):
    enc, _, images, bits = fitted(name, "xray8")
    blob = enc.encrypt(images, bits)
    other = get_encryptor(name, key=generate_key(), **_config(name))
    other.load_state_dict(enc.state_dict())

    with pytest.raises(IntegrityError):
        other.decrypt(blob)


@pytest.mark.parametrize("name", METHODS)
def test_truncated_blobs_are_rejected(name, fitted):
    enc, _, images, bits = fitted(name, "xray8")
    blob = enc.encrypt(images, bits)

    for cut in (0, 3, 10, len(blob) // 2, len(blob) - 16, len(blob) - 1):
        with pytest.raises(ContainerError):
            enc.decrypt(blob[:cut])
    with pytest.raises(ContainerError):
        enc.decrypt(blob + b"\x00")


@pytest.mark.parametrize("name", METHODS)
def test_container_of_another_method_is_rejected(name, fitted):
    enc, key, images, bits = fitted(name, "xray8")
    other_name = "lossless-aes" if name == "aes-gcm" else "aes-gcm"
    blob = get_encryptor(other_name, key=key).encrypt(images, bits)

    with pytest.raises(ContainerError):
        enc.decrypt(blob)


# -- forged containers: authentic (any key holder can seal one), but lying -------
FORGERY_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def forged_outcomes() -> dict:
    """Every method's forgeries (tests/forged_containers.py) decrypted in one
    fresh process whose address space may grow by BUDGET_BYTES only after
    setup (RLIMIT_AS), under a timeout: method -> (labels, {label: outcome})."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).parent
    env = {**os.environ, "MALLOC_ARENA_MAX": "2"}
    try:
        proc = subprocess.run(
            [sys.executable, str(here / "forged_containers.py"), *METHODS],
            capture_output=True,
            text=True,
            timeout=FORGERY_TIMEOUT_S,
            env=env,
            cwd=here,
        )
        stdout, ended = proc.stdout, f"exit code {proc.returncode}: {proc.stderr[-2000:]}"
    except subprocess.TimeoutExpired as exc:
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        ended = f"killed after {FORGERY_TIMEOUT_S} s (unbounded work?)"
    results: dict = {}
    for line in stdout.splitlines():
        doc = json.loads(line)
        if "forgeries" in doc:
            results[doc["method"]] = (doc["forgeries"], {})
        else:
            results[doc["method"]][1][doc["forgery"]] = doc
    return {"results": results, "ended": ended}


@pytest.mark.parametrize("name", METHODS)
def test_forged_containers_fail_as_container_errors_within_bounds(name, forged_outcomes):
    results = forged_outcomes["results"]
    assert name in results, f"{name}: no forgeries run ({forged_outcomes['ended']})"
    labels, outcomes = results[name]

    missing = [label for label in labels if label not in outcomes]
    bad = {
        label: doc["outcome"]
        for label, doc in outcomes.items()
        if doc["outcome"] not in ("ContainerError", "IntegrityError")
        and not (doc["outcome"] == "decoded" and doc["shape_ok"])
    }

    assert len(labels) >= 12
    assert not missing, f"{name}: stopped at forgery {missing[0]!r} ({forged_outcomes['ended']})"
    assert not bad, f"{name}: forgeries that did not fail as ContainerError: {bad}"
    if name == "bp-chaos":
        assert outcomes["rounds=1000000000"]["outcome"] == "ContainerError"
    if name == "lossless-aes":
        for family in ("jpegls", "png", "jpeg2k", "jpegxl"):
            assert outcomes[f"{family} plane declaring a huge image"]["outcome"] == "ContainerError"


_PROPERTY_FITTED: dict = {}


def _property_encryptor(name: str):
    """One fitted encryptor and container per method for the property test
    (hypothesis runs many examples; function-scoped fixtures would refit)."""
    if name not in _PROPERTY_FITTED:
        from forged_containers import build

        _PROPERTY_FITTED[name] = build(name)
    return _PROPERTY_FITTED[name]


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=10,
)


@pytest.mark.parametrize("name", METHODS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_forged_header_is_refused_or_decoded_to_its_shape(name, data):
    from forged_containers import reseal

    from encryption.container import read_header

    enc, blob = _property_encryptor(name)
    header = read_header(blob)
    extra = dict(header.extra)
    for key in data.draw(st.lists(st.sampled_from(sorted(extra) or ["none"]), max_size=3)):
        extra[key] = data.draw(_JSON)
    n, c, h, w = header.shape
    shape = data.draw(
        st.sampled_from([(n, c, h, w), (n + 1, c, h, w), (n, c, h + 1, w), (1, 1, 2**12, 2**12)])
    )
    forged = reseal(enc, blob, shape=shape, extra=extra, bits=data.draw(st.integers(1, 8)))

    try:
        out = enc.decrypt(forged)
    except ContainerError:
        return
    assert out.shape == shape and out.dtype == np.uint8
