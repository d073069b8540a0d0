"""A site's plain-Python pieces that need no federation."""

from __future__ import annotations

import numpy as np
import pytest

from client.site import round_trip
from encryption import get_encryptor


def test_a_shard_larger_than_one_container_round_trips_in_parts(monkeypatch):
    import encryption.base as base
    import encryption.container as container

    monkeypatch.setattr(container, "MAX_CONTAINER_VALUES", 200)
    monkeypatch.setattr(base, "MAX_CONTAINER_VALUES", 200)
    enc = get_encryptor("aes-gcm", b"\1" * 32)
    images = np.random.default_rng(0).integers(0, 255, (10, 1, 8, 8), dtype=np.uint8)
    with pytest.raises(ValueError, match="in parts"):
        enc.encrypt(images, bits=8)  # one container cannot hold the shard
    restored = round_trip(enc, images, 8)
    np.testing.assert_array_equal(restored, images)
