"""encryption/material.py on hostile bytes: a grant's material comes from another party,
so reading it ends in the material or in MaterialError, never in anything else."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from encryption.material import MAGIC, VERSION, DecryptionMaterial, MaterialError

KEY = bytes(range(32))


def _good() -> bytes:
    state = {"w": torch.ones(2, 3), "a": np.arange(4, dtype=np.int32), "b": b"xy", "n": [1, (2.0,)]}
    return DecryptionMaterial(KEY, "aes-gcm", state).to_bytes()


def _material(doc_text: str | bytes, data: bytes = b"") -> bytes:
    text = doc_text.encode() if isinstance(doc_text, str) else doc_text
    return struct.pack(">4sBI", MAGIC, VERSION, len(text)) + text + data


def _doc(state: object) -> str:
    """The material's JSON with `state` (a string is put in as it is: raw JSON)."""
    raw = state if isinstance(state, str) else json.dumps(state)
    return '{"key": "' + KEY.hex() + '", "method": "aes-gcm", "state": ' + raw + "}"


def _entry(*value: object) -> list:
    return ["dict", [["t", list(value)]]]


PROBES = {
    "nested 200000 deep": _material("[" * 200_000 + "]" * 200_000),
    "state nested 200000 deep": _material(_doc("[" * 200_000 + "]" * 200_000)),
    "an integer of 5000 digits": _material(_doc("9" * 5000)),
    "a tensor of shape (0, 2^70)": _material(_doc(_entry("tensor", "float32", [0, 2**70], 0, 0))),
    "an array of shape (0, 2^70)": _material(_doc(_entry("ndarray", "float32", [0, 2**70], 0, 0))),
    "an array of 100 dimensions": _material(
        _doc(_entry("ndarray", "float32", [1] * 100, 0, 4)), b"\0" * 4
    ),
    "a tensor of 100 dimensions": _material(
        _doc(_entry("tensor", "float32", [1] * 100, 0, 4)), b"\0" * 4
    ),
    "not UTF-8": _material(b"\xff\xfe"),
    "a lone surrogate": _material(_doc('"\\ud800"')),
    "a huge offset": _material(_doc(["bytes", 2**80, 1]), b"\0"),
    "a key of the wrong length": _material('{"key": "00", "method": "aes-gcm", "state": {}}'),
    "a method that is a number": _material(_doc(["dict", []]).replace('"aes-gcm"', "5")),
}


@pytest.mark.parametrize("what", list(PROBES))
def test_hostile_material_raises_only_material_error(what):
    with pytest.raises(MaterialError, match="decryption material"):
        DecryptionMaterial.from_bytes(PROBES[what])


def test_a_state_that_does_not_fit_its_method_is_material_error():
    # well-formed bytes whose state the method cannot load: refused, not a crash later
    material = DecryptionMaterial(KEY, "aes-gcm", {"no-such-field": 1})
    with pytest.raises(MaterialError, match="aes-gcm"):
        DecryptionMaterial.from_bytes(material.to_bytes()).encryptor()
    with pytest.raises(MaterialError, match="no-such-method"):
        DecryptionMaterial(KEY, "no-such-method").encryptor()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=400), st.integers(0, 255)),
        min_size=1,
        max_size=8,
    ),
    st.integers(min_value=-40, max_value=40),
)
def test_mutated_material_is_read_or_refused_with_material_error(flips, resize):
    data = bytearray(_good())
    for at, value in flips:
        data[at % len(data)] = value
    data = data[: len(data) + resize] if resize < 0 else data + bytes(resize)
    try:
        DecryptionMaterial.from_bytes(bytes(data))
    except MaterialError as exc:
        assert str(exc).startswith("decryption material")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=30,
)
tags = st.sampled_from(["dict", "list", "tuple", "bytes", "tensor", "ndarray", "other"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tags, st.lists(json_values, max_size=5), st.binary(max_size=64))
def test_random_tagged_states_are_read_or_refused_with_material_error(tag, args, data):
    doc = {"key": KEY.hex(), "method": "aes-gcm", "state": [tag, *args]}
    try:
        DecryptionMaterial.from_bytes(_material(json.dumps(doc), data))
    except MaterialError as exc:
        assert str(exc).startswith("decryption material")


def test_a_grant_holding_hostile_material_is_refused_naming_the_grantor(tmp_path, monkeypatch):
    # the grant opens (a peer signed and sealed it) but its material is hostile
    from client.keys import GrantMaterialError, SiteKeys
    from study.config import Study

    keys = SiteKeys(Study(), "site-1", tmp_path / "site-1", tmp_path / "identity")
    grants = tmp_path / "site-1" / "grants"
    grants.mkdir(parents=True)
    (grants / "site-0.v0.grant").write_bytes(b"sealed")
    (grants / "site-0.crt").write_bytes(b"certificate")
    monkeypatch.setattr(SiteKeys, "_open", lambda self, *a: PROBES["nested 200000 deep"])
    with pytest.raises(GrantMaterialError) as err:
        keys.peer_encryptor("site-0", 0)
    assert isinstance(err.value, ValueError)
    message = str(err.value)
    assert "site-1" in message and "site-0" in message and "version 0" in message
    assert "decryption material: bad JSON (RecursionError" in message
