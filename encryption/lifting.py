"""Exact integer lifting with a learned predictor (the BP stage of bp-chaos).

Two lifting steps on each (H, W) plane: the quincunx pixels ((i + j) odd)
are predicted from their four neighbours, then the odd/odd pixels from their
four diagonal neighbours; each step is x <- (x - round(mlp(neighbours)))
mod 2^bits. A predictor only reads pixels its step does not change, so the
step is exactly invertible, and the output is a decorrelated residual.

The predictor runs with its weights quantised to `FIXED_BITS` fraction bits
and computes in float64 on integer-valued operands below 2^53, i.e. exact
integer arithmetic: bit-identical on every machine and thread count (a float
rounding flip would otherwise break exactness between sender and receiver).
`WEIGHT_CLIP`, applied during training, keeps every intermediate that small.
"""

from __future__ import annotations

import numpy as np
import torch

FIXED_BITS = 12  # fixed-point fraction bits of the quantised MLP weights
WEIGHT_CLIP = 4.0  # keeps every integer intermediate far below 2^53

# neighbour offsets of the two lifting steps
_QUINCUNX = ((-1, 0), (1, 0), (0, -1), (0, 1))
_DIAGONAL = ((-1, -1), (-1, 1), (1, -1), (1, 1))


def masks(h: int, w: int) -> list[tuple[np.ndarray, np.ndarray, tuple]]:
    """(target mask, source mask, neighbour offsets) of the two lifting steps."""
    ii, jj = np.mgrid[0:h, 0:w]
    odd = (ii + jj) % 2 == 1
    odd_odd = (ii % 2 == 1) & (jj % 2 == 1)
    even_even = (ii % 2 == 0) & (jj % 2 == 0)
    return [(odd, ~odd, _QUINCUNX), (odd_odd, even_even, _DIAGONAL)]


def neighbours(
    planes: np.ndarray, source: np.ndarray, target: np.ndarray, offsets: tuple
) -> np.ndarray:
    """(P, 4) neighbour values (sources only, others read as 0) of every
    target pixel of (B, H, W) planes. Reflect padding keeps the parity of
    coordinates, so a neighbour is a source whenever it exists."""
    src = np.where(source, planes, 0)
    padded = np.pad(src, ((0, 0), (1, 1), (1, 1)), mode="reflect")
    h, w = planes.shape[1:]
    cols = [padded[:, 1 + di : 1 + di + h, 1 + dj : 1 + dj + w][:, target] for di, dj in offsets]
    return np.stack(cols, axis=-1).reshape(-1, len(offsets))


class Predictor(torch.nn.Module):
    """4 neighbours -> `hidden` ReLU units -> 1, on values scaled to [0, 1)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(4, hidden)
        self.fc2 = torch.nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # residual on the mean of the neighbours: untrained it is already the
        # classic mean predictor, training learns the correction
        return x.mean(dim=-1) + self.fc2(torch.relu(self.fc1(x))).squeeze(-1)


class ExactLifting:
    """The two lifting steps with fixed-point copies of two trained predictors."""

    def __init__(self, nets: list[Predictor]) -> None:
        scale = float(2**FIXED_BITS)
        self.qweights: list[tuple[np.ndarray, ...]] = []
        for net in nets:
            w1 = np.round(net.fc1.weight.detach().double().numpy() * scale)
            b1 = net.fc1.bias.detach().double().numpy()
            w2 = np.round(net.fc2.weight.detach().double().numpy() * scale)
            b2 = net.fc2.bias.detach().double().numpy()
            self.qweights.append((w1, b1, w2, b2))

    def predict(self, step: int, feats: np.ndarray, modulus: int) -> np.ndarray:
        """Exact fixed-point MLP: integer-valued float64 operands < 2^53, so
        every sum is exact whatever the order or thread count."""
        w1, b1, w2, b2 = self.qweights[step]
        scale = float(2**FIXED_BITS)
        f = torch.from_numpy(feats).double()
        hid = torch.addmm(
            torch.from_numpy(np.round(b1 * scale * modulus)), f, torch.from_numpy(w1).T
        )
        hid.relu_()
        out = torch.mv(hid, torch.from_numpy(w2[0]))
        out.add_(f.sum(dim=1), alpha=scale * scale / 4).add_(
            float(np.round(b2[0] * scale * scale * modulus))
        )
        out.add_(scale * scale / 2).div_(scale * scale).floor_()
        return out.numpy().astype(np.int64) % modulus

    def __call__(self, planes: np.ndarray, modulus: int, inverse: bool) -> np.ndarray:
        """(B, H, W) int64 planes -> residual planes (or back, `inverse`)."""
        planes = planes.copy()
        steps = list(enumerate(masks(*planes.shape[1:])))
        for step, (target, source, offsets) in reversed(steps) if inverse else steps:
            if not target.any():
                continue
            pred = self.predict(step, neighbours(planes, source, target, offsets), modulus)
            pred = pred.reshape(planes.shape[0], -1)
            sign = 1 if inverse else -1
            planes[:, target] = (planes[:, target] + sign * pred) % modulus
        return planes
