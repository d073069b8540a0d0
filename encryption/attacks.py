"""Known-plaintext attack (KPA) on any method.

The attacker has K leaked (plaintext, cipher view) pairs of one site and
trains a network to map cipher views back to plaintexts; it is scored by
PSNR/SSIM of its reconstructions of that site's *unseen* ciphertexts, next
to the trivial attack of guessing the mean of the leaked plaintexts. A
secure method leaves the network at the mean-guess level.

The network: the cipher view (uint8, resized to the plaintext's H x W if
its shape differs) goes through
  - a dense layer from every view value to every output pixel, initialised
    at zero (it can learn any fixed global rearrangement, e.g. a pixel
    permutation, which no local convolution can), when in * out values are
    at most `dense_limit`; then
  - a small two-level U-Net on [view, dense output] that adds a residual,
on top of the leaked mean image. K is split 80/20 into train/validation and
the weights with the best validation loss are kept (early stopping), so
noise-like views end at the mean guess instead of overfitting below it.
The budget (`seconds`, `max_steps`, threads) is configurable.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np

from encryption.metrics.fidelity import max_value, psnr, ssim


@dataclass(frozen=True)
class KpaResult:
    kpa_psnr: float
    kpa_ssim: float
    mean_guess_psnr: float
    mean_guess_ssim: float
    pairs: int
    test_images: int
    steps: int
    seconds: float
    dense: bool

    def as_dict(self) -> dict:
        return asdict(self)


def _unet(in_ch: int, out_ch: int, width: int):
    import torch
    from torch import nn

    def block(a, b):
        return nn.Sequential(
            nn.Conv2d(a, b, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(b, b, 3, padding=1),
            nn.ReLU(inplace=True),
        )

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc1 = block(in_ch, width)
            self.enc2 = block(width, 2 * width)
            self.up = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
            self.dec = block(2 * width, width)
            self.out = nn.Conv2d(width, out_ch, 1)
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

        def forward(self, x):
            e1 = self.enc1(x)
            e2 = self.enc2(nn.functional.max_pool2d(e1, 2))
            up = self.up(e2)
            if up.shape[-2:] != e1.shape[-2:]:  # odd sizes
                up = nn.functional.interpolate(up, size=e1.shape[-2:])
            return self.out(self.dec(torch.cat([e1, up], dim=1)))

    return UNet()


class _Attacker:
    def __init__(self, view_shape, plain_shape, mean_image, width, dense_limit):
        import torch
        from torch import nn

        self.c_in = view_shape[0]
        self.c_out, self.h, self.w = plain_shape
        n_in = self.c_in * self.h * self.w
        n_out = self.c_out * self.h * self.w
        self.dense = nn.Linear(n_in, n_out) if n_in * n_out <= dense_limit else None
        if self.dense is not None:
            nn.init.zeros_(self.dense.weight)
            nn.init.zeros_(self.dense.bias)
        self.unet = _unet(self.c_in + self.c_out, self.c_out, width)
        self.mean = torch.as_tensor(mean_image, dtype=torch.float32)

    def parameters(self):
        params = list(self.unet.parameters())
        if self.dense is not None:
            params += list(self.dense.parameters())
        return params

    def modules(self):
        return [m for m in (self.dense, self.unet) if m is not None]

    def __call__(self, x):
        import torch

        n = x.shape[0]
        if self.dense is not None:
            z = self.dense(x.reshape(n, -1)).reshape(n, self.c_out, self.h, self.w)
        else:
            z = torch.zeros(n, self.c_out, self.h, self.w)
        return self.mean + z + self.unet(torch.cat([x, z], dim=1))


def _prepare_views(views: np.ndarray, hw: tuple[int, int]):
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(views)).float() / 255.0
    if tuple(t.shape[-2:]) != hw:
        t = F.interpolate(t, size=hw, mode="bilinear", align_corners=False)
    return t


def known_plaintext_attack(
    train_plain: np.ndarray,
    train_views: np.ndarray,
    test_plain: np.ndarray,
    test_views: np.ndarray,
    bits: int,
    *,
    seconds: float = 60.0,
    max_steps: int = 2000,
    batch_size: int = 16,
    lr: float = 2e-3,
    width: int = 16,
    dense_limit: int = 2**25,
    threads: int | None = 1,
    seed: int = 0,
) -> KpaResult:
    """Train on (train_plain, train_views), score on (test_plain, test_views).

    Plaintexts are (N, C, H, W) uint8/uint16 with `bits`; views are uint8
    (N, C', H', W') cipher views (`Encryptor.cipher_image`), one per image.
    """
    import torch

    if len(train_plain) != len(train_views) or len(test_plain) != len(test_views):
        raise ValueError("each plaintext needs exactly one cipher view")
    if len(train_plain) < 2 or len(test_plain) < 1:
        raise ValueError(
            f"the attack needs at least 2 leaked pairs and 1 test image, got {len(train_plain)} and {len(test_plain)}"
        )
    maxv = max_value(bits)
    hw = tuple(train_plain.shape[-2:])
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        y_all = torch.from_numpy(train_plain.astype(np.float32)) / maxv
        x_all = _prepare_views(train_views, hw)
        x_test = _prepare_views(test_views, hw)
        if x_test.shape[1] != x_all.shape[1]:
            raise ValueError(
                f"test views have {x_test.shape[1]} channels, train views {x_all.shape[1]}"
            )
        k = len(y_all)
        n_val = max(1, k // 5)
        perm = torch.randperm(k)
        val_idx, tr_idx = perm[:n_val], perm[n_val:] if k - n_val >= 1 else perm
        mean_image = y_all.mean(dim=0)
        model = _Attacker(
            tuple(x_all.shape[1:]), tuple(y_all.shape[1:]), mean_image, width, dense_limit
        )
        opt = torch.optim.Adam(model.parameters(), lr=lr)

        def val_loss() -> float:
            with torch.no_grad():
                return float(torch.mean((model(x_all[val_idx]) - y_all[val_idx]) ** 2))

        best = (
            val_loss(),
            [{k2: v.clone() for k2, v in m.state_dict().items()} for m in model.modules()],
        )
        start = time.perf_counter()
        steps = 0
        while steps < max_steps and time.perf_counter() - start < seconds:
            batch = tr_idx[torch.randint(len(tr_idx), (min(batch_size, len(tr_idx)),))]
            loss = torch.mean((model(x_all[batch]) - y_all[batch]) ** 2)
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
            if steps % 25 == 0:
                v = val_loss()
                if v < best[0]:
                    best = (
                        v,
                        [
                            {k2: t.clone() for k2, t in m.state_dict().items()}
                            for m in model.modules()
                        ],
                    )
        v = val_loss()
        if v < best[0]:
            best = (
                v,
                [{k2: t.clone() for k2, t in m.state_dict().items()} for m in model.modules()],
            )
        for module, state in zip(model.modules(), best[1], strict=True):
            module.load_state_dict(state)
        with torch.no_grad():
            guess = torch.cat([model(x_test[i : i + 64]) for i in range(0, len(x_test), 64)])
        seconds_used = time.perf_counter() - start
    finally:
        torch.set_num_threads(old_threads)
    recon = np.clip(np.round(guess.numpy() * maxv), 0, maxv).astype(test_plain.dtype)
    mean_guess = np.broadcast_to(
        np.clip(np.round(mean_image.numpy() * maxv), 0, maxv).astype(test_plain.dtype),
        test_plain.shape,
    )
    return KpaResult(
        kpa_psnr=psnr(test_plain, recon, bits),
        kpa_ssim=_ssim_or_nan(test_plain, recon, bits),
        mean_guess_psnr=psnr(test_plain, mean_guess, bits),
        mean_guess_ssim=_ssim_or_nan(test_plain, np.ascontiguousarray(mean_guess), bits),
        pairs=k,
        test_images=len(test_plain),
        steps=steps,
        seconds=seconds_used,
        dense=model.dense is not None,
    )


def _ssim_or_nan(x: np.ndarray, y: np.ndarray, bits: int) -> float:
    if min(x.shape[-2:]) < 11:
        return math.nan
    return ssim(x, y, bits)
