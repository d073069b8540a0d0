"""Known-plaintext attack (KPA) on any method.

The attacker has K leaked (plaintext, cipher view) pairs of one site and
learns to map cipher views back to plaintexts; it is scored by PSNR/SSIM of
its reconstructions of that site's *unseen* ciphertexts, next to the
trivial attack of guessing the mean of the leaked plaintexts. A secure
method leaves the attacker at the mean-guess level.

The attacker, on cipher views (uint8, resized to the plaintext's H x W when
their shape differs) and plaintexts scaled to [0, 1]:

1. a global linear map from every view value to every output pixel, fitted
   in closed form by ridge regression in its dual (kernel) form, which
   costs O(K^2 D) however large the images: it can learn any fixed global
   rearrangement or linear mixing (a pixel permutation, say), which no
   local convolution can, and is the optimal linear attack. Its ridge
   strength is chosen by 5-fold cross-validation, and "no linear map" (the
   mean guess) keeps the job unless a ridge map beats it by 2 %;
2. a small two-level U-Net on [view, linear output] trained with Adam for
   the budget (`max_steps`, and `seconds` unless None), adding a residual on top; the
   weights with the best loss on a held-out 20 % of the pairs are kept
   (early stopping from the zero residual, which a trained residual must
   beat by 2 %), so noise-like views end at the mean guess rather than
   overfitting below it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields

import numpy as np

from encryption.metrics.fidelity import max_value, psnr, ssim

RIDGE_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)  # relative to the mean kernel diagonal


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
    ridge: float  # chosen relative ridge strength; 0.0 = no linear map
    # the attacker's reconstructions of the test images (for pictures; not in as_dict)
    reconstruction: np.ndarray | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "reconstruction"}


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
            nn.init.zeros_(self.out.weight)  # starts as "no residual"
            nn.init.zeros_(self.out.bias)

        def forward(self, x):
            e1 = self.enc1(x)
            e2 = self.enc2(nn.functional.max_pool2d(e1, 2))
            up = self.up(e2)
            if up.shape[-2:] != e1.shape[-2:]:  # odd sizes
                up = nn.functional.interpolate(up, size=e1.shape[-2:])
            return self.out(self.dec(torch.cat([e1, up], dim=1)))

    return UNet()


class _DualRidge:
    """y - mean_y = (x - mean_x) W with W = Xc^T (Xc Xc^T + lam I)^-1 Yc,
    kept in dual form (never materialising the D_in x D_out matrix)."""

    def __init__(self, x, y, rel_lam: float):
        import torch

        self.mx = x.mean(dim=0, keepdim=True)
        self.my = y.mean(dim=0, keepdim=True)
        self.xc = (x - self.mx).double()
        gram = self.xc @ self.xc.T
        lam = rel_lam * float(gram.diagonal().mean().clamp_min(1e-12))
        eye = torch.eye(len(gram), dtype=gram.dtype)
        self.alpha = torch.linalg.solve(gram + lam * eye, (y - self.my).double())

    def __call__(self, x):
        return (((x - self.mx).double() @ self.xc.T) @ self.alpha).float() + self.my


def _fit_linear(x, y, folds: int = 5, margin: float = 0.98):
    """Choose the ridge strength by k-fold cross-validation on all pairs;
    the mean guess competes and keeps the job unless a ridge map beats it
    by `margin` (so chance wins on noise-like views do not count).
    Returns (relative ridge strength or 0.0, predictor fitted on all pairs)."""
    import torch

    k = len(x)
    folds = min(folds, k)
    order = torch.arange(k)
    parts = [order[i::folds] for i in range(folds)]

    def cv_loss(predict) -> float:
        total = 0.0
        for held in parts:
            keep = torch.ones(k, dtype=torch.bool)
            keep[held] = False
            total += float(torch.sum((predict(x[keep], y[keep], x[held]) - y[held]) ** 2))
        return total / y.numel()

    best_lam = 0.0
    best_loss = margin * cv_loss(lambda xt, yt, xv: yt.mean(0, keepdim=True).expand(len(xv), -1))
    for lam in RIDGE_GRID:
        loss = cv_loss(lambda xt, yt, xv, lam=lam: _DualRidge(xt, yt, lam)(xv))
        if loss < best_loss:
            best_lam, best_loss = lam, loss
    if best_lam == 0.0:
        mean = y.mean(0, keepdim=True)
        return 0.0, lambda v: mean.expand(len(v), -1)
    return best_lam, _DualRidge(x, y, best_lam)


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
    seconds: float | None = 60.0,
    max_steps: int = 2000,
    batch_size: int = 16,
    lr: float = 2e-3,
    width: int = 16,
    threads: int | None = 1,
    seed: int = 0,
    margin: float = 0.98,
) -> KpaResult:
    """Fit on (train_plain, train_views), score on (test_plain, test_views).

    Plaintexts are (N, C, H, W) uint8/uint16 with `bits`; views are uint8
    (N, C', H', W') cipher views (`Encryptor.cipher_image`), one per image.
    The U-Net trains for `max_steps` steps or `seconds` of wall-clock time,
    whichever ends first; `seconds=None`: steps alone (the same attack on any
    machine, however loaded).
    """
    import torch

    if len(train_plain) != len(train_views) or len(test_plain) != len(test_views):
        raise ValueError("each plaintext needs exactly one cipher view")
    if max_steps < 0 or (seconds is not None and not seconds >= 0):
        raise ValueError(
            f"the attack's budget must not be negative: max_steps={max_steps}, seconds={seconds}"
        )
    deadline = math.inf if seconds is None else seconds
    if len(train_plain) < 3 or len(test_plain) < 1:
        raise ValueError(
            f"the attack needs at least 3 leaked pairs and 1 test image, got {len(train_plain)} and {len(test_plain)}"
        )
    maxv = max_value(bits)
    n_train = len(train_plain)
    c_out, h, w = train_plain.shape[1:]
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    try:
        torch.manual_seed(seed)
        y_all = torch.from_numpy(train_plain.astype(np.float32)) / maxv
        x_all = _prepare_views(train_views, (h, w))
        x_test = _prepare_views(test_views, (h, w))
        if x_test.shape[1] != x_all.shape[1]:
            raise ValueError(
                f"test views have {x_test.shape[1]} channels, train views {x_all.shape[1]}"
            )
        perm = torch.randperm(n_train)
        n_val = max(1, n_train // 5)
        val_idx, tr_idx = perm[:n_val], perm[n_val:]

        # 1. Closed-form linear stage: select on validation, refit on all.
        flat = x_all.reshape(n_train, -1)
        yflat = y_all.reshape(n_train, -1)
        lam, linear = _fit_linear(flat, yflat, margin=margin)
        # The U-Net's validation must not see a linear map fitted on it:
        # it trains on the linear map of the training split.
        if lam:
            linear_tr = _DualRidge(flat[tr_idx], yflat[tr_idx], lam)
        else:
            mean_tr = yflat[tr_idx].mean(0, keepdim=True)
            linear_tr = lambda x: mean_tr.expand(len(x), -1)  # noqa: E731
        z_fit = linear_tr(flat).reshape(y_all.shape)

        # 2. Convolutional residual with early stopping.
        unet = _unet(x_all.shape[1] + c_out, c_out, width)
        opt = torch.optim.Adam(unet.parameters(), lr=lr)
        inputs = torch.cat([x_all, z_fit], dim=1)

        def val_loss() -> float:
            with torch.no_grad():
                pred = z_fit[val_idx] + unet(inputs[val_idx])
                return float(torch.mean((pred - y_all[val_idx]) ** 2))

        # The residual must beat "no residual" by 2 % on validation to count:
        # a tiny validation set otherwise rewards chance fits to noise.
        best_loss = margin * val_loss()
        best_state = {k: v.clone() for k, v in unet.state_dict().items()}
        steps = 0
        while steps < max_steps and time.perf_counter() - start < deadline:
            batch = tr_idx[torch.randint(len(tr_idx), (min(batch_size, len(tr_idx)),))]
            loss = torch.mean((z_fit[batch] + unet(inputs[batch]) - y_all[batch]) ** 2)
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
            if steps % 10 == 0 or steps == max_steps:
                current = val_loss()
                if current < best_loss:
                    best_loss = current
                    best_state = {k: v.clone() for k, v in unet.state_dict().items()}
        unet.load_state_dict(best_state)

        with torch.no_grad():
            z_test = linear(x_test.reshape(len(x_test), -1)).reshape(len(x_test), c_out, h, w)
            guess = z_test + unet(torch.cat([x_test, z_test], dim=1))
            mean_image = y_all.mean(dim=0)
    finally:
        torch.set_num_threads(old_threads)
    seconds_used = time.perf_counter() - start
    recon = np.clip(np.round(guess.numpy() * maxv), 0, maxv).astype(test_plain.dtype)
    mean_guess = np.ascontiguousarray(
        np.broadcast_to(
            np.clip(np.round(mean_image.numpy() * maxv), 0, maxv).astype(test_plain.dtype),
            test_plain.shape,
        )
    )
    return KpaResult(
        kpa_psnr=psnr(test_plain, recon, bits),
        kpa_ssim=_ssim_or_nan(test_plain, recon, bits),
        mean_guess_psnr=psnr(test_plain, mean_guess, bits),
        mean_guess_ssim=_ssim_or_nan(test_plain, mean_guess, bits),
        pairs=n_train,
        test_images=len(test_plain),
        steps=steps,
        seconds=seconds_used,
        ridge=lam,
        reconstruction=recon,
    )


def _ssim_or_nan(x: np.ndarray, y: np.ndarray, bits: int) -> float:
    if min(x.shape[-2:]) < 11:
        return math.nan
    return ssim(x, y, bits)
