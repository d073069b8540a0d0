"""The ciphertext container: layout, header validation and a property-based
test that the parser only ever returns a valid result or raises
ContainerError."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from encryption.container import (
    ContainerError,
    Header,
    IntegrityError,
    open_container,
    read_body,
    read_header,
    seal_container,
)

KEY = bytes(range(32))
HEADER = Header(method="aes-gcm", shape=(2, 1, 4, 4), dtype="uint8", bits=8, extra={"k": 1})


def _blob(encrypt: bool) -> bytes:
    return seal_container(KEY, HEADER, b"x" * 32, encrypt=encrypt, nonce=os.urandom(12))


@pytest.mark.parametrize("encrypt", [True, False])
def test_round_trip(encrypt):
    blob = _blob(encrypt)

    header, payload = open_container(KEY, blob, encrypted=encrypt)

    assert header == HEADER and payload == b"x" * 32
    assert read_header(blob) == HEADER
    body = read_body(blob)[1]
    assert (body == b"x" * 32) is (not encrypt)


def test_wrong_key_is_an_integrity_error():
    with pytest.raises(IntegrityError, match="wrong key or altered bytes"):
        open_container(bytes(32), _blob(True), encrypted=True)


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        (b"[]", "exactly"),
        (b'{"method":"m","shape":[1,1,1],"dtype":"uint8","bits":8,"extra":{}}', "shape"),
        (b'{"method":"m","shape":[1,1,1,1],"dtype":"int8","bits":8,"extra":{}}', "dtype"),
        (b'{"method":"m","shape":[1,1,1,1],"dtype":"uint8","bits":12,"extra":{}}', "bits"),
        (b'{"method":"","shape":[1,1,1,1],"dtype":"uint8","bits":8,"extra":{}}', "method"),
        (b"[" * 3000 + b"]" * 3000, "JSON"),
        (b"\xff\xfe", "JSON"),
    ],
)
def test_bad_headers_are_container_errors(doc, match):
    with pytest.raises(ContainerError, match=match):
        Header.from_bytes(doc)


def _check_parse(blob: bytes) -> None:
    for encrypted in (True, False):
        try:
            header, payload = open_container(KEY, blob, encrypted=encrypted)
        except ContainerError:
            pass
        else:
            assert isinstance(header, Header) and isinstance(payload, bytes)
    try:
        header = read_header(blob)
    except ContainerError:
        return
    assert isinstance(header, Header) and len(header.shape) == 4


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_random_bytes_never_crash_the_parser(blob):
    _check_parse(blob)
    _check_parse(b"MFED\x01" + blob)


@settings(max_examples=300, deadline=None)
@given(
    encrypt=st.booleans(),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
    cut=st.one_of(st.none(), st.integers(0, 10_000)),
)
def test_mutated_containers_never_crash_the_parser(encrypt, edits, cut):
    blob = bytearray(_blob(encrypt))
    for pos, value in edits:
        blob[pos % len(blob)] = value
    if cut is not None:
        blob = blob[: cut % (len(blob) + 1)]

    _check_parse(bytes(blob))
