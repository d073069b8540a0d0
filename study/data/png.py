"""PNG images (NIH ChestX-ray14): a header check against max-image-pixels, then Pillow decodes.

The size comes from Pillow's own PNG header parser (PngImageFile reads the
signature, IHDR and the ancillary chunks before IDAT, never pixel data) and
is checked against `max-image-pixels` before Image.open. Pillow's
decompression-bomb guard (Image.MAX_IMAGE_PIXELS) stays on as a second,
independent limit: an image over its error threshold is skipped with
Pillow's reason; its warning threshold (below our default limit) is silenced
because our limit already decided. Only PNG is accepted (Image.open is told
formats=["PNG"], so a file named .png never reaches another decoder), and
files are opened through safety.open_regular (never a FIFO or a device).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, PngImagePlugin

from study.data.safety import DEFAULT_MAX_IMAGE_PIXELS, file_problem, open_regular, too_large
from study.data.types import PathLike


class PngRefused(ValueError):
    """A PNG that is not read, with the reason (not a PNG, or too large)."""


def png_size(fh: BinaryIO) -> tuple[int, int]:
    """(width, height) from the PNG header alone; PngRefused when it is not a PNG."""
    try:
        header = PngImagePlugin.PngImageFile(fh)
    except (SyntaxError, OSError, ValueError, EOFError) as exc:
        raise PngRefused(f"not a PNG file ({exc})") from exc
    return header.size


def open_png(fh: BinaryIO, max_pixels: int) -> Image.Image:
    """Image.open on a PNG whose header is within max_pixels; PngRefused with the reason if not."""
    width, height = png_size(fh)
    reason = too_large((width, height), max_pixels, detail=" (width x height)")
    if reason:
        raise PngRefused(reason)
    fh.seek(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return Image.open(fh, formats=["PNG"])
        except Image.DecompressionBombError as exc:
            raise PngRefused(
                f"image too large for Pillow's decompression-bomb guard: {exc}"
            ) from exc


def png_problem(
    path: PathLike, root: PathLike, *, deep: bool, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> str | None:
    """None when path is a usable PNG; deep=False checks chunk CRCs, deep=True decodes."""
    problem = file_problem(path, root)
    if problem:
        return problem
    try:
        with open_regular(path) as fh, open_png(fh, max_pixels) as image:
            if deep:
                image.load()
            else:
                image.verify()  # chunk CRCs: catches truncation without decoding
    except PngRefused as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad files
        return f"unreadable PNG: {type(exc).__name__}: {exc}"
    return None


def read_png(
    path: PathLike, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> tuple[np.ndarray, int]:
    """Decode one PNG as a 2D grey plane and its bit depth (8 or 16)."""
    path = Path(path)
    try:
        with open_regular(path) as fh, open_png(fh, max_pixels) as image:
            if image.mode in ("I;16", "I;16B", "I"):
                return np.asarray(image, dtype=np.uint16), 16
            if image.mode != "L":
                image = image.convert("L")  # a few NIH images are RGBA
            return np.asarray(image), 8
    except PngRefused as exc:
        raise ValueError(f"{path}: {exc}") from exc
