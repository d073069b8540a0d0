"""Pictures of what each encryption method does: per method one row of the
original image, its cipher view (what an eavesdropper sees, as the security
metrics see it), the decrypted image, the difference, and the known-plaintext
attacker's reconstruction, from `encryption.evaluate(..., pictures=...)`.

Image papers show their ciphers; a reader sees at a glance what a table of
NPCR and PSNR only says: which ciphers still show the anatomy, which
decryptions are blurred, and what an attacker with leaked pairs recovers."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

COLUMNS = ("original", "cipher view", "decrypted", "|difference|", "attacker (KPA)")


def _plane(a: np.ndarray) -> np.ndarray:
    """Channel 0 of the first image of an (N, C, H, W) array, as float."""
    return np.asarray(a)[0, 0].astype(np.float64)


def method_pictures(
    pictures: Mapping[str, Mapping[str, np.ndarray]], bits: int, path: Path, title: str = ""
) -> Path:
    """Draw the grid (one row per method) to `path` (PNG); returns `path`.

    Original, decrypted and reconstruction share the original's grey scale;
    the cipher view is shown on its 0..255 scale; the difference of each row
    is scaled to its own maximum (written in the panel). Multi-channel images
    show channel 0."""
    from encryption.metrics.fidelity import psnr
    from server.report import pyplot

    if not pictures:
        raise ValueError("no method pictures to draw")
    plt = pyplot()
    rows = len(pictures)
    fig, axes = plt.subplots(rows, len(COLUMNS), figsize=(2.0 * len(COLUMNS), 2.1 * rows),
                             squeeze=False)  # fmt: skip
    for r, (name, pic) in enumerate(pictures.items()):
        original, decrypted, kpa = (_plane(pic[k]) for k in ("original", "decrypted", "kpa"))
        top = max(float(original.max()), 1.0)
        diff = np.abs(decrypted - original)
        p_dec = psnr(pic["original"], pic["decrypted"], bits)
        p_kpa = psnr(pic["original"], pic["kpa"], bits)
        panels = [
            (original, dict(cmap="gray", vmin=0, vmax=top), ""),
            (_plane(pic["cipher"]), dict(cmap="gray", vmin=0, vmax=255), ""),
            (decrypted, dict(cmap="gray", vmin=0, vmax=top), f"{p_dec:.1f} dB"),
            (diff, dict(cmap="magma", vmin=0, vmax=max(float(diff.max()), 1.0)),
             f"max {diff.max():.0f}" if diff.max() else "exact"),
            (kpa, dict(cmap="gray", vmin=0, vmax=top), f"{p_kpa:.1f} dB"),
        ]  # fmt: skip
        for c, (img, style, note) in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(img, interpolation="nearest", **style)
            ax.set_xticks([])
            ax.set_yticks([])
            if note:
                ax.text(0.02, 0.02, note, color="yellow", fontsize=7, transform=ax.transAxes,
                        bbox=dict(facecolor="black", alpha=0.5, pad=1, lw=0))  # fmt: skip
            if r == 0:
                ax.set_title(COLUMNS[c], fontsize=8)
        axes[r][0].set_ylabel(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
