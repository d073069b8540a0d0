"""Size: what a container costs on the wire.

- bytes per image: container bytes / N (header, nonce and tag included);
- kB = 1000 bytes;
- bits per pixel: 8 * container bytes / (N * C * H * W), i.e. per stored
  pixel value (a C = 4 MRI slice has 4 values per pixel position);
- ratio to raw: container bytes / raw pixel bytes (N * C * H * W * itemsize);
- ratio to lossless: container bytes / the `lossless-aes` container of the
  same images (the best lossless codec then AES), when given.
"""

from __future__ import annotations

import numpy as np


def raw_bytes(shape: tuple[int, ...], dtype: str | np.dtype) -> int:
    """Bytes of the raw pixels of an (N, C, H, W) batch."""
    return int(np.prod(shape)) * np.dtype(dtype).itemsize


def size_metrics(
    container_bytes: int,
    shape: tuple[int, ...],
    dtype: str | np.dtype,
    lossless_bytes: int | None = None,
) -> dict[str, float]:
    """bytes_per_image, kb_per_image, bpp, ratio_to_raw and (if known) ratio_to_lossless."""
    if len(shape) != 4:
        raise ValueError(f"shape must be (N, C, H, W), got {shape}")
    n = int(shape[0])
    values = int(np.prod(shape))
    out = {
        "bytes_per_image": container_bytes / n,
        "kb_per_image": container_bytes / n / 1000.0,
        "bpp": 8.0 * container_bytes / values,
        "ratio_to_raw": container_bytes / raw_bytes(shape, dtype),
    }
    if lossless_bytes:
        out["ratio_to_lossless"] = container_bytes / lossless_bytes
    return out
