"""Site keys and key bundles."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from encryption.keys import (
    KEY_BYTES,
    derive_key,
    derive_seed,
    generate_key,
    load_key_bundle,
    save_key_bundle,
)


def test_derived_keys_are_stable_and_separated():
    key = generate_key()

    assert len(key) == KEY_BYTES and key != generate_key()
    assert derive_key(key, "a") == derive_key(key, "a")
    assert derive_key(key, "a") != derive_key(key, "b")
    assert derive_seed(key, "p") == derive_seed(key, "p") != derive_seed(key, "q")
    with pytest.raises(ValueError, match="32 bytes"):
        derive_key(b"short", "a")


def test_bundle_is_private_and_round_trips(tmp_path):
    key = generate_key()
    state = {"w": torch.arange(4.0)}

    path = save_key_bundle(tmp_path / "site" / "key.bundle", key, "deepedn", state)

    assert os.stat(path).st_mode & 0o777 == 0o600
    got_key, method, got_state = load_key_bundle(path)
    assert got_key == key and method == "deepedn"
    assert torch.equal(got_state["w"], state["w"])


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_readable_bundle_is_refused(tmp_path, mode):
    path = save_key_bundle(tmp_path / "key.bundle", generate_key(), "aes-gcm")
    os.chmod(path, mode)

    with pytest.raises(PermissionError, match="chmod 600"):
        load_key_bundle(path)


def test_missing_and_foreign_bundles(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_key_bundle(tmp_path / "nope")
    junk = tmp_path / "junk"
    junk.write_bytes(b"not a bundle")
    junk.chmod(0o600)
    with pytest.raises(ValueError, match="not a medfed key bundle"):
        load_key_bundle(junk)


def test_an_old_pickle_bundle_is_refused_without_being_loaded(tmp_path):
    """A bundle in torch.save (pickle) format is never unpickled: a crafted
    one cannot run code on the site that reads it."""
    marker = tmp_path / "owned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "key.bundle"
    torch.save({"format": "medfed-key-bundle", "payload": Payload()}, path)
    path.chmod(0o600)
    with pytest.raises(ValueError, match="older, pickle-based bundle is not read"):
        load_key_bundle(path)
    assert not marker.exists()
