"""Chaotic maps for the chaos-based ciphers, vectorised over many lanes.

A chaotic map is a sequential recurrence, so one long orbit needs one Python
step per value. Instead we run `lanes` independent orbits side by side (one
numpy operation per step for all lanes and all images of a batch) and
interleave them: `length` values cost about `length / lanes` vectorised
steps. Each lane's initial condition comes from SHAKE-256 of a secret seed,
so lanes are independent and every value depends on the whole seed.

Float64 arithmetic here is IEEE-754 elementwise multiply/add (no fused or
reordered reductions), so the orbits are bit-identical on every platform
numpy supports: sender and receiver compute the same key streams.
"""

from __future__ import annotations

import hashlib

import numpy as np

LANES = 512
BURN_IN = 32  # steps discarded so the orbits forget their initial conditions
HENON_A, HENON_B = 1.4, 0.3


def seed_uniforms(seeds: list[bytes], label: str, count: int) -> np.ndarray:
    """(len(seeds), count) floats in [0, 1) from SHAKE-256(seed || label).

    Why SHAKE and not a numpy generator: the seeds are key material and the
    expansion should be a cryptographic function of all their bits.
    """
    out = np.empty((len(seeds), count), dtype=np.float64)
    tag = label.encode()
    for i, seed in enumerate(seeds):  # one hash call per image, not per pixel
        raw = hashlib.shake_256(seed + b"|" + tag).digest(8 * count)
        words = np.frombuffer(raw, dtype="<u8")
        out[i] = (words >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return out


def _steps(length: int, lanes: int) -> int:
    return -(-length // lanes)


def logistic_orbits(x0: np.ndarray, r: np.ndarray, length: int) -> np.ndarray:
    """Logistic map x <- r x (1 - x) on lanes.

    x0: (B, lanes) in (0, 1); r: (B, 1) in [3.99, 4). Returns (B, length).
    """
    x = x0.copy()
    steps = _steps(length, x.shape[1])
    out = np.empty((steps, *x.shape), dtype=np.float64)
    for t in range(BURN_IN + steps):
        x = r * x * (1.0 - x)
        # An orbit that hits the fixed point 0 (or leaves [0, 1]) is kicked
        # back deterministically; both sides do the same.
        bad = ~((x > 1e-12) & (x < 1.0))
        if bad.any():
            x = np.where(bad, 0.3141592653589793, x)
        if t >= BURN_IN:
            out[t - BURN_IN] = x
    return out.transpose(1, 0, 2).reshape(x.shape[0], -1)[:, :length]


def henon_orbits(x0: np.ndarray, y0: np.ndarray, length: int) -> np.ndarray:
    """Henon map x <- 1 - a x^2 + y, y <- b x (a = 1.4, b = 0.3) on lanes.

    x0, y0: (B, lanes) near the origin (inside the basin of the attractor).
    Returns the x orbit, (B, length), values in about [-1.3, 1.3].
    """
    x, y = x0.copy(), y0.copy()
    steps = _steps(length, x.shape[1])
    out = np.empty((steps, *x.shape), dtype=np.float64)
    for t in range(BURN_IN + steps):
        x, y = 1.0 - HENON_A * x * x + y, HENON_B * x
        bad = ~(np.abs(x) < 2.0)  # escaped the basin (rare): restart the lane
        if bad.any():
            x = np.where(bad, 0.1, x)
            y = np.where(bad, 0.0, y)
        if t >= BURN_IN:
            out[t - BURN_IN] = x
    return out.transpose(1, 0, 2).reshape(x.shape[0], -1)[:, :length]


def to_symbols(orbit: np.ndarray, modulus: int) -> np.ndarray:
    """Chaotic values -> integers in [0, modulus) from low-order mantissa bits
    (the fast-mixing part of a chaotic orbit), as int64."""
    scaled = np.floor(np.abs(orbit) * 2.0**40).astype(np.int64)
    return scaled % modulus


def logistic_stream(seeds: list[bytes], label: str, length: int, lanes: int = LANES) -> np.ndarray:
    """(len(seeds), length) logistic orbit values, one orbit family per seed."""
    lanes = max(1, min(lanes, length))
    u = seed_uniforms(seeds, "logistic/" + label, lanes + 1)
    x0 = 0.05 + 0.9 * u[:, :lanes]
    r = 3.99 + 0.0099 * u[:, lanes:]
    return logistic_orbits(x0, r, length)


def henon_stream(seeds: list[bytes], label: str, length: int, lanes: int = LANES) -> np.ndarray:
    """(len(seeds), length) Henon x-orbit values, one orbit family per seed."""
    lanes = max(1, min(lanes, length))
    u = seed_uniforms(seeds, "henon/" + label, 2 * lanes)
    x0 = 0.2 * u[:, :lanes] - 0.1
    y0 = 0.1 * u[:, lanes:] - 0.05
    return henon_orbits(x0, y0, length)


def chaotic_permutations(seeds: list[bytes], label: str, length: int) -> np.ndarray:
    """(len(seeds), length) permutations: argsort of a logistic orbit, the
    classic chaotic scrambling."""
    return np.argsort(logistic_stream(seeds, label, length), axis=1, kind="stable")


def chaotic_sbox(seed: bytes, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """A key-derived S-box of [0, 2^bits) (a logistic permutation) and its
    inverse, both int64."""
    box = chaotic_permutations([seed], "sbox", 2**bits)[0].astype(np.int64)
    inv = np.empty_like(box)
    inv[box] = np.arange(len(box))
    return box, inv


def diffuse(
    vec: np.ndarray, perm: np.ndarray, fwd: np.ndarray, bwd: np.ndarray, box: np.ndarray, bits: int
) -> np.ndarray:
    """One substitution-permutation round on (B, n) int64 values in [0, 2^bits).

    Permute by `perm` (n,), forward chained diffusion
    c_i = (c_{i-1} + v_i + k_i) mod 2^bits as a prefix sum (vectorised, no
    per-pixel loop), S-box `box`, backward chained diffusion (reverse prefix
    sum), S-box again. `fwd`, `bwd`: (B, n + 1) key streams in [0, 2^bits),
    column 0 the chain's start value. One changed input changes every later
    forward value by a constant, the S-box turns that into varied changes and
    the backward pass carries them to every position: full avalanche.
    """
    mask = 2**bits - 1
    c0, kf = fwd[:, :1], fwd[:, 1:]
    c1, kb = bwd[:, :1], bwd[:, 1:]
    vec = vec[:, perm]
    vec = (c0 + np.cumsum(vec + kf, axis=1)) & mask
    vec = box[vec]
    vec = (c1 + np.cumsum((vec + kb)[:, ::-1], axis=1)[:, ::-1]) & mask
    return box[vec]


def undiffuse(
    vec: np.ndarray, perm: np.ndarray, fwd: np.ndarray, bwd: np.ndarray, inv: np.ndarray, bits: int
) -> np.ndarray:
    """The inverse of `diffuse` (`inv`: the inverse S-box)."""
    mask = 2**bits - 1
    c0, kf = fwd[:, :1], fwd[:, 1:]
    c1, kb = bwd[:, :1], bwd[:, 1:]
    vec = inv[vec]
    nxt = np.concatenate([vec[:, 1:], np.broadcast_to(c1, (len(vec), 1))], axis=1)
    vec = inv[(vec - nxt - kb) & mask]
    prev = np.concatenate([c0, vec[:, :-1]], axis=1)
    vec = (vec - prev - kf) & mask
    out = np.empty_like(vec)
    out[:, perm] = vec
    return out
