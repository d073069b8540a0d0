"""Integer additive coupling, exact in float32 (the network of `invertible`).

A coupling layer updates one half b of the values from the other half a:
b <- (b + T(a, K)) mod 2^bits, inverted by b <- (b - T(a, K)) mod 2^bits
(integer discrete flows, Hoogeboom et al. 2019), so decryption is exact on
integers whatever T is. T (`IntegerCoupling`) is conv3x3 -> clamp(0, 255)
-> conv3x3 with the key image K as an extra input channel. At inference its
weights are fixed point and its inputs 8-bit integers (`top_byte`), bounded
so every partial sum is an integer below 2^24: float32 convolution is then
exact whatever the summation order, kernel or thread count, so sender and
receiver agree bit for bit. Training uses the same network in float (no
rounding) with `circular_noise_loss`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

W1_SCALE, W2_SCALE = 64.0, 64.0  # fixed-point steps of the two conv layers
B1_CLIP, B2_CLIP = 2.0**14, 2.0**12
HIDDEN_SHIFT = 8.0  # hidden = clamp(pre / 8, 0, 255): 8-bit activations
EXACT_LIMIT = 2.0**24  # float32 represents every integer below this exactly
MIX_ODD = 40503  # odd multiplier (golden ratio * 2^16) for top_byte


class IntegerCoupling(nn.Module):
    """T(a, K): conv3x3 -> clamp(0, 255) -> conv3x3, in 'integer units'."""

    def __init__(self, half: int, hidden: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(half + 1, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, half, 3, padding=1)
        # weight bounds that keep |every partial sum| < 2^24 for 8-bit inputs
        # and activations: sum of 9 * fan_in products of 255 * |w_q| plus bias
        bias1, bias2 = B1_CLIP * W1_SCALE, B2_CLIP * W2_SCALE
        self.w1_clip = (EXACT_LIMIT - bias1) / (255 * 9 * (half + 1) * W1_SCALE) * 0.98
        self.w2_clip = (EXACT_LIMIT - bias2) / (255 * 9 * hidden * W2_SCALE) * 0.98

    def forward(self, a8: torch.Tensor, key8: torch.Tensor) -> torch.Tensor:
        x = torch.cat([a8, key8.expand(len(a8), -1, -1, -1)], dim=1)
        h = torch.clamp(self.conv1(x) / HIDDEN_SHIFT, 0.0, 255.0)
        return self.conv2(h) * W2_SCALE

    def clip_(self) -> None:
        with torch.no_grad():
            self.conv1.weight.clamp_(-self.w1_clip, self.w1_clip)
            self.conv1.bias.clamp_(-B1_CLIP, B1_CLIP)
            self.conv2.weight.clamp_(-self.w2_clip, self.w2_clip)
            self.conv2.bias.clamp_(-B2_CLIP, B2_CLIP)

    def quantize(self) -> None:
        """Freeze the fixed-point weights used by `exact` (after fit/load)."""
        with torch.no_grad():
            self.q = (
                torch.round(self.conv1.weight * W1_SCALE),
                torch.round(self.conv1.bias * W1_SCALE),
                torch.round(self.conv2.weight * W2_SCALE),
                torch.round(self.conv2.bias * W2_SCALE),
            )
            self.w1 = self.q[0][:, :-1].contiguous()  # the image channels' part

    def exact(self, a8: torch.Tensor, key8: torch.Tensor) -> torch.Tensor:
        """Integer version: all operands integers, every sum < 2^24, so the
        float32 result is exact and identical on every machine."""
        w1, b1, w2, b2 = self.q
        # the key channel's contribution is the same for every image: one
        # small conv, added as a bias map (exact integers, so no change)
        key_bias = F.conv2d(key8, w1[:, -1:], b1, padding=1)
        h = F.conv2d(a8, self.w1, padding=1).add_(key_bias)
        # clamp(floor(h / 2^9), 0, 255) in two passes (power-of-2 divide: exact)
        step = W1_SCALE * HIDDEN_SHIFT
        h.clamp_(0.0, 256.0 * step - 1.0).div_(step, rounding_mode="floor")
        return F.conv2d(h, w2, b2, padding=1)


def seeded_couplings(half: int, hidden: int, layers: int, seed: int) -> nn.ModuleList:
    """`layers` couplings with a seeded init (the seed is key material), scaled
    so that T's output wraps mod 2^bits many times."""
    gen = torch.Generator().manual_seed(seed)
    nets = nn.ModuleList(IntegerCoupling(half, hidden) for _ in range(layers))
    with torch.no_grad():
        for net in nets:
            w1 = torch.randn(net.conv1.weight.shape, generator=gen) * 0.4 * net.w1_clip
            net.conv1.weight.copy_(w1)
            net.conv1.bias.zero_()
            w2 = torch.randn(net.conv2.weight.shape, generator=gen) * 0.2 * net.w2_clip
            net.conv2.weight.copy_(w2)
            net.conv2.bias.zero_()
            net.clip_()
    return nets


def top_byte(a: torch.Tensor, bits: int) -> torch.Tensor:
    """8-bit network input from `bits`-bit values. Deeper data is first
    multiplied by an odd constant mod 2^bits so that a change in any bit,
    low ones included, changes the top byte (else a low-bit change would not
    reach T and would not spread)."""
    if bits <= 8:
        return a
    mixed = (a.to(torch.int64) * MIX_ODD) & (2**bits - 1)
    return (mixed >> (bits - 8)).to(a.dtype)


def circular_noise_loss(y: torch.Tensor, modulus: int, harmonics: int = 3) -> torch.Tensor:
    """Noise-likeness of y on Z/modulus: the first harmonics of the histogram
    and of horizontal/vertical neighbour differences, |E exp(2 pi i k y / M)|^2,
    pushed to zero (a uniform marginal and no adjacent correlation)."""
    theta = y * (2 * torch.pi / modulus)
    loss = y.new_zeros(())
    for k in range(1, harmonics + 1):
        for ang in (
            theta,
            theta[..., 1:] - theta[..., :-1],
            theta[..., 1:, :] - theta[..., :-1, :],
        ):
            loss = loss + torch.cos(k * ang).mean() ** 2 + torch.sin(k * ang).mean() ** 2
    return loss
