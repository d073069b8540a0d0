"""Forged containers: authentic, but lying.

Any key holder (a consortium peer with a grant) can seal a container, so
these are sealed with the site's real container key and pass the AEAD tag;
what they carry is a header or payload that the method's own encryptor would
never write: a declared size far beyond the payload, absurd parameters
(10^9 chaos rounds), fields of the wrong type or missing, codec streams whose
own header declares a 30000 x 30000 image. Decrypting any of them must end in
ContainerError (or IntegrityError), after bounded work and memory.

`forgeries(enc, blob)` builds them from one real container; running this
module (`python forged_containers.py METHOD...`) decrypts every forgery of
each method in a fresh process whose address space is limited to what it
used after setup plus `BUDGET_BYTES`, printing one JSON line per forgery, so
the tests can check the outcome, the memory bound (RLIMIT_AS) and, through
their subprocess timeout, the work bound.
"""

from __future__ import annotations

import json
import os
import resource
import struct
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

BUDGET_BYTES = 512 * 2**20  # what decrypting one forgery may add to the address space
BIG_SIDE = 30000  # 30000 x 30000 uint16 is 1.8 GB: more than the budget
WRONG_VALUES = (None, -1, 0, 10**9, 2**64, "x", [], {}, 1.5, True, float("nan"), [10**9] * 3)


def reseal(enc, blob: bytes, *, header=None, payload: bytes | None = None, **changes) -> bytes:
    """`blob` with its header replaced (or `changes` applied to it) and/or its
    payload replaced, sealed again under `enc`'s real container key."""
    from dataclasses import replace

    from encryption.container import open_container, seal_container

    old_header, old_payload = open_container(enc.container_key, blob, encrypted=enc.aes_payload)
    new_header = header if header is not None else replace(old_header, **changes)
    return seal_container(
        enc.container_key,
        new_header,
        old_payload if payload is None else payload,
        encrypt=enc.aes_payload,
        nonce=os.urandom(12),
    )


def _with_extra(enc, blob: bytes, key: str, value=..., drop: bool = False) -> bytes:
    from encryption.container import read_header

    extra = dict(read_header(blob).extra)
    if drop:
        extra.pop(key, None)
    else:
        extra[key] = value
    return reseal(enc, blob, extra=extra)


def generic_forgeries(enc, blob: bytes) -> dict[str, bytes]:
    """Forgeries every method must refuse or decode to the header's shape."""
    from encryption.container import open_container, read_header

    header = read_header(blob)
    n, c, h, w = header.shape
    _, payload = open_container(enc.container_key, blob, encrypted=enc.aes_payload)
    rng = np.random.default_rng(0)
    other = ("uint16", 16) if header.dtype == "uint8" else ("uint8", 8)
    out = {
        "shape over the value limit": reseal(enc, blob, shape=(2**14, 1, 2**7, 2**7)),
        "shape at the value limit": reseal(enc, blob, shape=(1, 1, 2**13, 2**14)),
        "twice the images": reseal(enc, blob, shape=(2 * n, c, h, w)),
        "one more channel": reseal(enc, blob, shape=(n, c + 1, h, w)),
        "30000 px high": reseal(enc, blob, shape=(n, c, BIG_SIDE, w)),
        "bits 1": reseal(enc, blob, bits=1),
        "other dtype": reseal(enc, blob, dtype=other[0], bits=other[1]),
        "payload empty": reseal(enc, blob, payload=b""),
        "payload one byte short": reseal(enc, blob, payload=payload[:-1]),
        "payload four bytes long": reseal(enc, blob, payload=payload + bytes(4)),
        "payload zeros": reseal(enc, blob, payload=bytes(len(payload))),
        "payload random": reseal(enc, blob, payload=rng.bytes(len(payload))),
    }
    for key in header.extra:
        out[f"{key} missing"] = _with_extra(enc, blob, key, drop=True)
        for value in WRONG_VALUES:
            out[f"{key}={value!r}"[:60]] = _with_extra(enc, blob, key, value)
    return out


# -- codec streams whose own header declares a huge image ------------------------
def _jpegls_big(plane: np.ndarray) -> bytes:
    import imagecodecs

    s = bytearray(imagecodecs.jpegls_encode(plane))
    sof = s.find(b"\xff\xf7")  # SOF55: length, precision, height, width
    s[sof + 5 : sof + 9] = struct.pack(">HH", BIG_SIDE, BIG_SIDE)
    return bytes(s)


def _png_big(plane: np.ndarray) -> bytes:
    import imagecodecs

    s = bytearray(imagecodecs.png_encode(plane))
    s[16:24] = struct.pack(">II", BIG_SIDE, BIG_SIDE)  # IHDR width, height
    s[29:33] = struct.pack(">I", zlib.crc32(bytes(s[12:29])))
    return bytes(s)


def _jpeg2k_big(plane: np.ndarray) -> bytes:
    import imagecodecs

    s = bytearray(imagecodecs.jpeg2k_encode(plane, level=0, reversible=True))
    ihdr = s.find(b"ihdr")
    s[ihdr + 4 : ihdr + 12] = struct.pack(">II", BIG_SIDE, BIG_SIDE)
    siz = s.find(b"\xff\x4f\xff\x51") + 4  # SOC, SIZ: Lsiz Rsiz Xsiz Ysiz XOsiz YOsiz XTsiz YTsiz
    s[siz + 4 : siz + 12] = struct.pack(">II", BIG_SIDE, BIG_SIDE)
    s[siz + 20 : siz + 28] = struct.pack(">II", BIG_SIDE, BIG_SIDE)
    return bytes(s)


def _jpegxl_big(plane: np.ndarray) -> bytes:
    import imagecodecs

    # A real stream of a blank 4096 x 4096 image (the header is bit-packed:
    # coding a larger blank one would take the memory this test bounds).
    return imagecodecs.jpegxl_encode(np.zeros((4096, 4096), plane.dtype), lossless=True, effort=1)


def lossless_forgeries(enc, blob: bytes) -> dict[str, bytes]:
    """lossless-aes: the first plane replaced by a stream declaring a huge image."""
    from encryption.container import open_container, read_header

    header = read_header(blob)
    n, c, h, w = header.shape
    _, payload = open_container(enc.container_key, blob, encrypted=True)
    lengths = struct.unpack_from(f">{n * c}I", payload)
    streams = []
    pos = 4 * n * c
    for length in lengths:
        streams.append(payload[pos : pos + length])
        pos += length
    plane = (np.arange(h * w).reshape(h, w) % 200).astype(header.dtype)
    makers: dict[str, Callable[[np.ndarray], bytes]] = {
        "jpegls": _jpegls_big,
        "png": _png_big,
        "jpeg2k": _jpeg2k_big,
        "jpegxl": _jpegxl_big,
    }
    out = {}
    for family, make in makers.items():
        forged = [make(plane), *streams[1:]]
        body = struct.pack(f">{len(forged)}I", *map(len, forged)) + b"".join(forged)
        extra = {**header.extra, "codec": family}
        out[f"{family} plane declaring a huge image"] = reseal(
            enc, blob, header=_header(header, extra=extra), payload=body
        )
    return out


def _header(header, **changes):
    from dataclasses import replace

    return replace(header, **changes)


def codec_forgeries(enc, blob: bytes) -> dict[str, bytes]:
    """learned-codec-aes: parameters its entropy coder panics on, a word count
    beyond the payload."""
    from encryption.container import open_container, read_header

    header = read_header(blob)
    _, payload = open_container(enc.container_key, blob, encrypted=True)
    c = header.shape[1]
    old = {k: v for k, v in header.extra.items() if k != "residual_ratios"}
    return {
        "first-version residual scale 0": reseal(
            enc, blob, extra={**old, "residual_scales": [0.0] * c}
        ),
        "residual ratio 1": _with_extra(enc, blob, "residual_ratios", [1.0] * c),
        "residual step 1": _with_extra(enc, blob, "residual_step", 1),
        "latent words beyond the payload": reseal(
            enc, blob, payload=struct.pack("<I", 2**32 - 1) + payload[4:]
        ),
    }


def cipher_shape_forgeries(enc, blob: bytes) -> dict[str, bytes]:
    """deepedn, aae-scramble, invertible: a cipher or latent shape of 30000 px."""
    from encryption.container import read_header

    header = read_header(blob)
    n, c, _, _ = header.shape
    key = {"deepedn": "cipher_shape", "aae-scramble": "latent_shape", "invertible": "padded"}
    big = {
        "deepedn": [n, c, BIG_SIDE, BIG_SIDE],
        "aae-scramble": [8 * c, BIG_SIDE, BIG_SIDE],
        "invertible": [BIG_SIDE, BIG_SIDE],
    }
    out = {f"{key[enc.name]} 30000 px": _with_extra(enc, blob, key[enc.name], big[enc.name])}
    if enc.name == "deepedn":
        for dtype in ("float64", "object", "uint32"):
            out[f"cipher_dtype {dtype}"] = _with_extra(enc, blob, "cipher_dtype", dtype)
    return out


SPECIFIC = {
    "lossless-aes": lossless_forgeries,
    "learned-codec-aes": codec_forgeries,
    "deepedn": cipher_shape_forgeries,
    "aae-scramble": cipher_shape_forgeries,
    "invertible": cipher_shape_forgeries,
}


def forgeries(enc, blob: bytes) -> dict[str, bytes]:
    """Every forgery of `blob` for `enc`'s method (generic, then its own)."""
    out = generic_forgeries(enc, blob)
    out.update(SPECIFIC.get(enc.name, lambda e, b: {})(enc, blob))
    return out


def build(name: str):
    """(fitted encryptor, a real container) on three 8-bit 32 px images; learned
    methods train one epoch (and one step where they take `min_steps`)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import smooth_images

    from encryption import get_encryptor
    from encryption.registry import encryptor_class

    images = smooth_images(3, 1, 32, 8, seed=7)
    cls = encryptor_class(name)
    config = {"epochs": 1} if cls.learned else {}
    if "min_steps" in getattr(cls, "defaults", {}):
        config["min_steps"] = 1
    enc = get_encryptor(name, key=bytes(range(32)), **config)
    if enc.learned:
        enc.fit(images)
    return enc, enc.encrypt(images, 8)


def _outcome(exc: BaseException | None) -> str:
    """What a decryption ended in; "memory" if a MemoryError is anywhere in the chain."""
    from encryption import ContainerError

    seen = exc
    while seen is not None:
        if isinstance(seen, MemoryError):
            return "memory"
        seen = seen.__cause__ or seen.__context__
    if exc is None:
        return "decoded"
    if isinstance(exc, ContainerError):
        return type(exc).__name__
    return f"{type(exc).__module__}.{type(exc).__name__}: {exc}"


def run(names: list[str]) -> None:
    """Decrypt every forgery of each method under the memory limit. Prints one
    JSON line per method, {"method", "forgeries": [labels]}, then one per
    forgery decrypted: {"method", "forgery", "outcome", "shape_ok"}."""
    import torch

    torch.set_num_threads(1)
    prepared = []
    for name in names:
        enc, blob = build(name)
        enc.decrypt(blob)  # warm: thread pools and caches exist before the limit
        forged = forgeries(enc, blob)
        print(json.dumps({"method": name, "forgeries": list(forged)}), flush=True)
        prepared.append((enc, forged))
    with open("/proc/self/status") as status:
        vm_kb = int(next(line for line in status if line.startswith("VmSize:")).split()[1])
    limit = vm_kb * 1024 + BUDGET_BYTES
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from encryption.container import read_header

    for enc, forged in prepared:
        for label, data in forged.items():
            exc, shape_ok = None, None
            try:
                out = enc.decrypt(data)
                shape_ok = list(out.shape) == list(read_header(data).shape)
            except BaseException as caught:  # noqa: BLE001 - the outcome is the result
                exc = caught
            line = {"method": enc.name, "forgery": label, "outcome": _outcome(exc)}
            print(json.dumps({**line, "shape_ok": shape_ok}), flush=True)


if __name__ == "__main__":
    run(sys.argv[1:])
