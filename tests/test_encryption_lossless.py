"""lossless-aes: the codec rule, every candidate exact on 1- to 16-bit data,
containers of the earlier every-codec version, and decoding that checks each
stream's declared size before its decoder allocates."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import smooth_images
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from encryption import ContainerError, get_encryptor
from encryption.container import read_header
from encryption.methods.lossless_aes import (
    CANDIDATES,
    LARGE_PLANE_PIXELS,
    codec_preference,
    decode_plane,
    plane_statistics,
)

KEY = bytes(range(32))


def test_containers_of_the_every_codec_version_still_decode():
    """tests/data/lossless_aes_v1.pkl: containers written before the codec rule
    (JPEG-LS, JPEG 2000 and PNG at 8, 12 and 16 bits, 1 and 4 channels)."""
    cases = pickle.loads((Path(__file__).parent / "data" / "lossless_aes_v1.pkl").read_bytes())
    enc = get_encryptor("lossless-aes", key=KEY)

    for label, case in cases.items():
        np.testing.assert_array_equal(enc.decrypt(case["blob"]), case["images"], err_msg=label)
    assert {read_header(c["blob"]).extra["codec"] for c in cases.values()} == {
        "jpegls",
        "jpeg2k",
        "png",
    }


@st.composite
def planes(draw):
    """(P, H, W) planes of a random depth 1..16 in uint8/uint16: noise, flat,
    few values or smooth ramps, some at the top of their range."""
    bits = draw(st.integers(1, 16))
    h, w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    p = draw(st.integers(1, 3))
    kind = draw(st.sampled_from(["noise", "flat", "few", "ramp"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    top = 2**bits - 1
    if kind == "noise":
        x = rng.integers(0, top + 1, (p, h, w))
    elif kind == "flat":
        x = np.full((p, h, w), rng.integers(0, top + 1))
    elif kind == "few":
        x = rng.choice(rng.integers(0, top + 1, 4), (p, h, w))
    else:
        x = (np.add.outer(np.arange(h), np.arange(w)) * top // max(1, h + w - 2))[None].repeat(p, 0)
    return x.astype(np.uint8 if bits <= 8 else np.uint16), bits


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(planes())
def test_every_candidate_codec_is_exact(sample):
    x, bits = sample
    out = np.empty(x.shape[1:], x.dtype)

    for name, codec in CANDIDATES.items():
        for plane in x:
            decode_plane(codec.family, codec.encode(plane, bits), out)
            np.testing.assert_array_equal(out, plane, err_msg=f"{name} at {bits} bits")


@pytest.mark.parametrize(("bits", "size"), [(8, 32), (8, 128), (12, 48), (16, 40)])
def test_round_trip_with_the_rules_pick(bits, size):
    images = smooth_images(3, 2, size, bits, seed=bits)
    enc = get_encryptor("lossless-aes", key=KEY)

    blob = enc.encrypt(images, bits)

    np.testing.assert_array_equal(enc.decrypt(blob), images)
    pick = codec_preference(images.reshape(-1, size, size), bits)[0]
    assert read_header(blob).extra["codec"] == CANDIDATES[pick].family


def test_rule_branches():
    rng = np.random.default_rng(0)
    noise8 = rng.integers(0, 256, (4, 128, 128), dtype=np.uint8)
    small8 = noise8[:, :32, :32].copy()
    sparse16 = rng.choice(np.arange(0, 65536, 997), (4, 64, 64)).astype(np.uint16)
    yy, xx = np.mgrid[0:64, 0:64]
    smooth16 = np.stack([(yy * 900 + xx * 80 + k * 7) for k in range(4)]).astype(np.uint16)
    noise12 = rng.integers(0, 4096, (4, 64, 64)).astype(np.uint16)

    assert 128 * 128 >= LARGE_PLANE_PIXELS > 32 * 32
    assert codec_preference(noise8, 8)[0] == "jpegls"
    assert codec_preference(small8, 8)[0] == "jpegxl-e2"
    assert codec_preference(sparse16, 16)[0] == "jpegxl-e2"
    assert codec_preference(smooth16, 16)[0] == "jpeg2k"
    assert codec_preference(noise12, 12)[0] == "jpegxl-e3"
    assert sorted(codec_preference(noise12, 12)) == sorted(CANDIDATES)


def test_plane_statistics_of_known_planes():
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 1 << 16, (2, 64, 64)).astype(np.uint16)
    ramp = np.add.outer(np.arange(64), np.arange(64))[None].astype(np.uint16) * 300

    occupancy, noisy = plane_statistics(noise)
    ramp_occupancy, flat = plane_statistics(ramp)

    assert occupancy > 0.9 and noisy == pytest.approx(
        np.sqrt(3), rel=0.1
    )  # noise: var d2 = 3 var d1
    assert flat == 0.0  # a plane: second differences vanish
    assert ramp_occupancy == pytest.approx(127 / 4096)  # 127 distinct sums in 64 x 64 pixels


def test_codecs_option_restricts_the_candidates():
    images = smooth_images(2, 1, 32, 8)

    blob = get_encryptor("lossless-aes", key=KEY, codecs=["png"]).encrypt(images)

    assert read_header(blob).extra == {"codec": "png"}
    with pytest.raises(ValueError, match="available: jpegls"):
        get_encryptor("lossless-aes", codecs=["gif"])


def test_jpeg2k_size_is_read_before_decoding():
    import imagecodecs

    stream = bytearray(
        imagecodecs.jpeg2k_encode(np.zeros((16, 16), np.uint8), level=0, reversible=True)
    )
    siz = stream.find(b"\xff\x4f\xff\x51") + 4
    stream[siz + 4 : siz + 12] = struct.pack(">II", 60000, 60000)

    with pytest.raises(ValueError, match=r"\(60000, 60000\)"):
        decode_plane("jpeg2k", bytes(stream), np.empty((16, 16), np.uint8))


def test_plane_of_another_size_is_a_container_error():
    from forged_containers import reseal

    from encryption.container import open_container

    enc = get_encryptor("lossless-aes", key=KEY, codecs=["jpegls"])
    small = enc.encrypt(smooth_images(1, 1, 16, 8))
    _, other_payload = open_container(
        enc.container_key, enc.encrypt(smooth_images(1, 1, 24, 8)), encrypted=True
    )

    with pytest.raises(ContainerError, match="plane 0 does not decode as 16x16 uint8"):
        enc.decrypt(reseal(enc, small, payload=other_payload))
