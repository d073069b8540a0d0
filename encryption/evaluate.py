"""Evaluate methods on the same images with the same code.

`evaluate_method` gives one method's entry of the benchmark JSON,
`evaluate` the whole document (schema 1):

    {"schema": 1, "data": str, "images": int, "methods": {name: {
        "lossless": bool,
        "fidelity": {"mse", "psnr", "ssim"},
        "size": {"bytes_per_image", "bpp", "ratio_to_raw"},
        "security": {"entropy", "npcr", "uaci", "npcr_key", "uaci_key",
                     "corr_h", "corr_v", "corr_d", "chi2", "deterministic"},
        "attack": {"kpa_psnr", "kpa_ssim", "mean_guess_psnr"},
        "speed": {"encrypt_mb_s", "decrypt_mb_s", "fit_s"},
        "details": {...verdicts and extras...}}}}

PSNR of an exact method is +inf (written `Infinity` by Python's json).
Security statistics use the method's cipher view (`Encryptor.cipher_image`):
- npcr/uaci: one pixel of image 0 (centre, channel 0) has its lowest bit
  flipped; cipher-view image 0 of the two containers is compared;
- npcr_key/uaci_key: the same images under the site key with one bit
  flipped (learned weights carried over by `load_state_dict`), all
  cipher-view images compared; being means over all N images, they are
  judged with the critical values of N x (values per image) values
  (`details["key_critical_values"]`), those of the one-pixel change with the
  values of one image (`details["critical_values"]`);
- views of different shapes (compressed payloads) are compared on their
  common top-left crop.
Speed is MB/s of raw pixel bytes (1 MB = 10^6 bytes), the median of at
least `repeats` runs (more while they add up to under 0.25 s), for one
container holding all the images.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from encryption.attacks import known_plaintext_attack
from encryption.base import check_images
from encryption.keys import generate_key
from encryption.metrics.fidelity import fidelity
from encryption.metrics.security import (
    CHI2_CRITICAL_8BIT,
    adjacent_correlation,
    chi_square,
    critical_values,
    entropy,
    npcr_uaci,
    npcr_uaci_verdicts,
)
from encryption.metrics.size import size_metrics
from encryption.registry import encryptor_class, get_encryptor, list_encryptors

SCHEMA = 1
LOSSLESS_REFERENCE = "lossless-aes"
SPEED_REFERENCE = "aes-gcm"

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def _common_crop(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if a.shape == b.shape:
        return a, b
    if a.ndim != b.ndim:
        raise ValueError(f"cipher views of different rank: {a.shape} vs {b.shape}")
    box = tuple(slice(0, min(x, y)) for x, y in zip(a.shape, b.shape, strict=True))
    return a[box], b[box]


def _flip_key_bit(key: bytes) -> bytes:
    return bytes([key[0] ^ 1]) + key[1:]


def _timed(fn: Callable[[], Any], repeats: int, min_total_s: float = 0.25) -> tuple[float, Any]:
    """Median seconds of `fn` over at least `repeats` runs, and more (up to
    200) until `min_total_s` has passed, so microsecond runs are not noise."""
    times, result = [], None
    while len(times) < max(1, repeats) or (sum(times) < min_total_s and len(times) < 200):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def _split_kpa(images, fit_images, kpa_pairs):
    """(leaked plaintexts, test plaintexts) for the known-plaintext attack."""
    if fit_images is not None:
        pairs = len(fit_images) if kpa_pairs is None else min(kpa_pairs, len(fit_images))
        return fit_images[:pairs], images
    pairs = (3 * len(images)) // 4 if kpa_pairs is None else kpa_pairs
    pairs = min(pairs, len(images) - 1)
    return images[:pairs], images[pairs:]


def evaluate_method(
    name: str,
    images: np.ndarray,
    bits: int,
    *,
    key: bytes | None = None,
    fit_images: np.ndarray | None = None,
    kpa_pairs: int | None = None,
    kpa_seconds: float | None = 30.0,
    kpa_steps: int = 2000,
    repeats: int = 5,
    config: dict[str, Any] | None = None,
    lossless_bytes: int | None = None,
    progress: Progress = _quiet,
    pictures: dict[str, dict[str, np.ndarray]] | None = None,
) -> dict[str, Any]:
    """One method's entry of the benchmark JSON (see the module docstring).

    `fit_images` (same shape family, same site) train a learned method and
    serve as the attacker's leaked plaintexts (the first `kpa_pairs`); without
    them the method is fitted on `images` and the first 3/4 of `images` leak.
    `config` goes to `get_encryptor`; `lossless_bytes` is the size of the
    lossless-aes container of `images` (computed when None). With a
    `pictures` dict, `pictures[name]` gets the first attacked test image as
    arrays (1, C, H, W): "original", "cipher" (its cipher view, uint8),
    "decrypted" and "kpa" (the attacker's reconstruction). The attack trains for
    `kpa_steps` steps or `kpa_seconds`, whichever ends first (None: steps alone).
    """
    images, bits = check_images(images, bits)
    if fit_images is not None:
        fit_images, _ = check_images(fit_images, bits)
    config = dict(config or {})
    key = generate_key() if key is None else key
    enc = get_encryptor(name, key=key, **config)

    fit_s = 0.0
    details: dict[str, Any] = {}
    if enc.learned:
        progress(
            f"{name}: fitting on {len(fit_images if fit_images is not None else images)} images"
        )
        start = time.perf_counter()
        report = enc.fit(fit_images if fit_images is not None else images)
        fit_s = time.perf_counter() - start
        details["fit"] = {
            "epochs": getattr(report, "epochs", 0),
            "metrics": dict(getattr(report, "metrics", {}) or {}),
        }

    progress(f"{name}: encrypt/decrypt x{repeats}")
    raw_mb = images.nbytes / 1e6
    enc_s, blob = _timed(lambda: enc.encrypt(images, bits), repeats)
    dec_s, decoded = _timed(lambda: enc.decrypt(blob), repeats)
    fid = fidelity(images, decoded, bits)

    if lossless_bytes is None:
        lossless_bytes = (
            len(blob)
            if name == LOSSLESS_REFERENCE
            else len(get_encryptor(LOSSLESS_REFERENCE).encrypt(images, bits))
        )
    size = size_metrics(len(blob), images.shape, images.dtype, lossless_bytes)

    progress(f"{name}: security statistics")
    view = enc.cipher_image(blob)
    changed = images.copy()
    _, _, h, w = images.shape
    changed[0, 0, h // 2, w // 2] ^= 1
    v0, v1 = _common_crop(view[:1], enc.cipher_image(enc.encrypt(changed, bits))[:1])
    npcr, uaci = npcr_uaci(v0, v1)
    pixels = int(v0[0].size)

    npcr_key = uaci_key = math.nan
    try:
        other = get_encryptor(name, key=_flip_key_bit(key), **config)
        other.load_state_dict(enc.state_dict())
        k0, k1 = _common_crop(view, other.cipher_image(other.encrypt(images, bits)))
        npcr_key, uaci_key = npcr_uaci(k0, k1)
    except Exception as exc:  # noqa: BLE001 - recorded, not hidden
        details["key_change_error"] = f"{type(exc).__name__}: {exc}"
    corr = adjacent_correlation(view)
    chi2 = chi_square(view)
    deterministic = enc.encrypt(images, bits) == blob

    budget = f"{kpa_steps} steps" if kpa_seconds is None else f"{kpa_seconds:g} s"
    progress(f"{name}: known-plaintext attack ({budget} budget)")
    leaked, test = _split_kpa(images, fit_images, kpa_pairs)
    leaked_views = enc.cipher_image(enc.encrypt(leaked, bits))
    test_views = view if test is images else enc.cipher_image(enc.encrypt(test, bits))
    kpa = known_plaintext_attack(
        leaked, leaked_views, test, test_views, bits, seconds=kpa_seconds, max_steps=kpa_steps
    )
    if pictures is not None:
        first = len(images) - len(test)  # test images are the last ones of `images`
        pictures[name] = {
            "original": test[:1].copy(),
            "cipher": np.asarray(test_views[:1]).copy(),
            "decrypted": decoded[first : first + 1].copy(),
            "kpa": kpa.reconstruction[:1].copy(),
        }

    verdicts = npcr_uaci_verdicts(npcr, uaci, pixels)
    if not math.isnan(npcr_key):
        # npcr_key/uaci_key average every value of all N images: the critical
        # values are those of that many values (variance / N), not of one image
        key_verdicts = npcr_uaci_verdicts(npcr_key, uaci_key, int(k0.size))
        verdicts.update({f"key_{k}": v for k, v in key_verdicts.items()})
        details["key_critical_values"] = critical_values(int(k0.size))
    details.update(verdicts)
    details.update(
        {
            "chi2_pass": bool(chi2 < CHI2_CRITICAL_8BIT),
            "chi2_critical": CHI2_CRITICAL_8BIT,
            "critical_values": critical_values(pixels),
            "view_shape": list(view.shape),
            "entropy_ideal": 8.0,
            "mse01": fid["mse01"],
            "kb_per_image": size["kb_per_image"],
            "ratio_to_lossless": size.get("ratio_to_lossless", math.nan),
            "encrypt_images_s": len(images) / enc_s,
            "decrypt_images_s": len(images) / dec_s,
            "kpa": {
                k: v
                for k, v in kpa.as_dict().items()
                if k not in ("kpa_psnr", "kpa_ssim", "mean_guess_psnr")
            },
        }
    )
    if images.dtype == np.uint16:
        details["entropy16"] = entropy(view, bits=16)

    return {
        "lossless": bool(enc.lossless),
        "fidelity": {"mse": fid["mse"], "psnr": fid["psnr"], "ssim": fid["ssim"]},
        "size": {
            "bytes_per_image": size["bytes_per_image"],
            "bpp": size["bpp"],
            "ratio_to_raw": size["ratio_to_raw"],
        },
        "security": {
            "entropy": entropy(view),
            "npcr": npcr,
            "uaci": uaci,
            "npcr_key": npcr_key,
            "uaci_key": uaci_key,
            "corr_h": corr["corr_h"],
            "corr_v": corr["corr_v"],
            "corr_d": corr["corr_d"],
            "chi2": chi2,
            "deterministic": bool(deterministic),
        },
        "attack": {
            "kpa_psnr": kpa.kpa_psnr,
            "kpa_ssim": kpa.kpa_ssim,
            "mean_guess_psnr": kpa.mean_guess_psnr,
        },
        "speed": {"encrypt_mb_s": raw_mb / enc_s, "decrypt_mb_s": raw_mb / dec_s, "fit_s": fit_s},
        "details": details,
    }


def _speed_reference(images: np.ndarray, bits: int, repeats: int) -> tuple[float, float]:
    enc = get_encryptor(SPEED_REFERENCE)
    raw_mb = images.nbytes / 1e6
    enc_s, blob = _timed(lambda: enc.encrypt(images, bits), repeats)
    dec_s, _ = _timed(lambda: enc.decrypt(blob), repeats)
    return raw_mb / enc_s, raw_mb / dec_s


def resolve_methods(methods: str | Sequence[str]) -> list[str]:
    """ "all" or a comma-separated string / list of names -> registered names."""
    if isinstance(methods, str):
        if methods.strip() == "all":
            return list_encryptors()
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    if not methods:
        raise ValueError(
            "no methods given; use 'all' or names from: " + ", ".join(list_encryptors())
        )
    for name in methods:
        encryptor_class(name)  # raises KeyError listing the valid names
    return list(dict.fromkeys(methods))


def evaluate(
    methods: str | Sequence[str],
    images: np.ndarray,
    bits: int,
    *,
    data: str = "",
    key: bytes | None = None,
    fit_images: np.ndarray | None = None,
    kpa_pairs: int | None = None,
    kpa_seconds: float | None = 30.0,
    kpa_steps: int = 2000,
    repeats: int = 5,
    configs: dict[str, dict[str, Any]] | None = None,
    progress: Progress = _quiet,
    pictures: dict[str, dict[str, np.ndarray]] | None = None,
) -> dict[str, Any]:
    """The whole benchmark document for `methods` on `images` (schema 1);
    `pictures` as in `evaluate_method`, one entry per method."""
    names = resolve_methods(methods)
    images, bits = check_images(images, bits)
    key = generate_key() if key is None else key
    configs = configs or {}
    lossless_bytes = len(get_encryptor(LOSSLESS_REFERENCE).encrypt(images, bits))
    aes_enc, aes_dec = _speed_reference(images, bits, repeats)
    out: dict[str, Any] = {
        "schema": SCHEMA,
        "data": data,
        "images": int(len(images)),
        "methods": {},
    }
    for name in names:
        entry = evaluate_method(
            name,
            images,
            bits,
            key=key,
            fit_images=fit_images,
            kpa_pairs=kpa_pairs,
            kpa_seconds=kpa_seconds,
            kpa_steps=kpa_steps,
            repeats=repeats,
            config=configs.get(name),
            lossless_bytes=lossless_bytes,
            progress=progress,
            pictures=pictures,
        )
        entry["details"]["encrypt_vs_aes_gcm"] = entry["speed"]["encrypt_mb_s"] / aes_enc
        entry["details"]["decrypt_vs_aes_gcm"] = entry["speed"]["decrypt_mb_s"] / aes_dec
        out["methods"][name] = entry
    return out
