"""Measured quality of bp-chaos and invertible at 128 x 128 (slow).

Run with `pytest -m slow -s tests/test_learned_b_measure.py`: prints one JSON
line per method (fidelity, NPCR/UACI for a one-pixel plaintext change and a
one-bit key change, entropy, adjacent correlation, chi-square, fit seconds,
encrypt images/s, and the network's GFLOP/s next to a plain 64-channel 3x3
convolution measured in the same run) and asserts the stated quality.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import smooth_images
from learned_b_helpers import KEY, best_rate, flip_bit, key_avalanche, plaintext_avalanche

from encryption import get_encryptor
from encryption.metrics import adjacent_correlation, chi_square, entropy, psnr

SIZE, N_FIT, N_SPEED = 128, 128, 100


def _reference_conv_gflops() -> float:
    x, w = torch.randn(8, 64, SIZE, SIZE), torch.randn(64, 64, 3, 3)
    with torch.inference_mode():
        F.conv2d(x[:2], w, padding=1)
        start = time.perf_counter()
        F.conv2d(x, w, padding=1)
        seconds = time.perf_counter() - start
    return 8 * SIZE * SIZE * 9 * 2 * 64 * 64 / seconds / 1e9


# data kind -> (images to fit, channels, bit depth): 8-bit X-ray, 16-bit MRI
KINDS = {"xray8": (N_FIT, 1, 8), "mri16": (64, 4, 16)}


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("name", ["bp-chaos", "invertible"])
def test_measured_quality_128px(name, kind):
    n_fit, channels, bits = KINDS[kind]
    images = smooth_images(n_fit, channels, SIZE, bits, seed=11)
    enc = get_encryptor(name, KEY)
    report = enc.fit(images)
    probe = images[:8]
    blob = enc.encrypt(probe)
    back = enc.decrypt(blob)
    view = enc.cipher_image(blob)
    npcr_pt, uaci_pt = plaintext_avalanche(enc, probe, (0, SIZE // 2, SIZE // 3))
    npcr_key, uaci_key = key_avalanche(enc, probe, flip_bit(KEY, 0, 0x80))
    rate, _ = best_rate(enc, images[:N_SPEED])
    flops = enc.flops_per_image(SIZE, SIZE, channels)
    result = {
        "method": name,
        "data": kind,
        "fit_s": round(report.seconds, 1),
        "fit_metrics": report.metrics,
        "psnr_db": psnr(probe, back, bits=bits),
        "npcr_plaintext": npcr_pt,
        "uaci_plaintext": uaci_pt,
        "npcr_key": npcr_key,
        "uaci_key": uaci_key,
        "entropy": entropy(view),
        "chi_square": chi_square(view),
        **adjacent_correlation(view),
        "encrypt_images_per_s": round(rate, 1),
        "network_mflop_per_image": flops / 1e6,
        "network_gflop_per_s": round(flops * rate / 1e9, 2),
        "reference_conv_gflop_per_s": round(_reference_conv_gflops(), 1),
    }
    print(json.dumps(result))
    np.testing.assert_array_equal(back, probe)
    assert report.seconds < 300
    assert npcr_pt > 99.4 and 32.5 < uaci_pt < 34.5
    assert npcr_key > 99.4 and 32.5 < uaci_key < 34.5
    assert result["entropy"] > 7.99
    assert max(abs(result[k]) for k in ("corr_h", "corr_v", "corr_d")) < 0.02
