"""`invertible`: key-conditioned invertible coupling network (Wang et al.
2022, Optics and Lasers in Engineering 149:106784, "Invertible encryption
network for optical image cryptosystem"). Exact (lossless).

What the paper describes: one invertible network does both directions of an
optical-style cryptosystem; its forward pass maps plaintext (with the key,
the analogue of a random phase mask) to a noise-like cipher and its exact
inverse decrypts; it is trained so that the cipher looks like noise.

What we built, and where we chose:
- Integer additive coupling (integer discrete flows, Hoogeboom et al. 2019)
  instead of float affine coupling, so decryption is EXACT on integers and
  needs no quantised float cipher: b <- (b + T(a, K)) mod 2^bits, inverse
  b <- (b - T(a, K)) mod 2^bits. The cipher has the plaintext's dtype and
  (padded) size.
- Layout: pad H, W to a multiple of 8 (zeros, sent as cipher too), squeeze
  8x8 blocks into 64 C channels (wide enough for efficient convolutions), split the channels into halves a | b.
  After each coupling the halves swap and each half gets its own
  key-derived permutation of all its positions (the "key-derived pixel
  shuffle"), so every value is updated every second layer and a changed
  pixel spreads across the image as layers go by.
- Key conditioning: each T_l sees a key image K_l (8-bit, from HKDF of the
  site key: the random-phase-mask analogue) as an extra input channel;
  initial weights and all permutations are key-derived too.
- T_l is conv3x3 -> clamp(0, 255) -> conv3x3. At inference its weights are
  fixed point and its inputs 8-bit integers (top 8 bits of a), bounded so
  every partial sum is an integer below 2^24: float32 convolution is then
  exact whatever the summation order, kernel or thread count, so sender and
  receiver agree bit for bit. T's integer output wraps mod 2^bits.
- Training (`fit`): the same network in float (no rounding), loss pushing
  the cipher toward noise on the circle Z/2^bits: the first harmonics of
  the cipher histogram and of horizontal/vertical neighbour differences
  toward zero (|E exp(2 pi i k y / M)|^2), i.e. a uniform marginal and no
  adjacent correlation. FitReport gives the loss before and after.
- A keyed 16-byte tag (HMAC-SHA256 of each plaintext) travels in the payload;
  decryption recomputes it and raises IntegrityError on a mismatch, so a
  wrong state can never yield a silently wrong image. It reveals only
  equality of images (the method is deterministic anyway).

Untrained use: `encrypt` before `fit` or `load_state_dict` is a clear
RuntimeError (the key-seeded network would work, but untrained is not the
method).

Why the avalanche is complete although each layer is local: T's integer
output spans tens of thousands of levels and wraps mod 2^bits, so a one-level change of an input changes T's outputs in a 3x3
neighbourhood of the squeezed grid by pseudo-random amounts; the swaps and
key-derived permutations then carry those changes everywhere within four
layers. The learned part barely matters for the statistics: the key-seeded
untrained network is already at the noise floor of the loss, and training
keeps it there (FitReport: noise_loss_before / noise_loss_after).
"""

from __future__ import annotations

import hmac
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from encryption.base import Encryptor, FitReport, check_images
from encryption.container import ContainerError, Header, IntegrityError, read_body
from encryption.keys import derive_key, derive_seed
from encryption.registry import register_encryptor

TAG_BYTES = 16
SQUEEZE = 8
W1_SCALE, W2_SCALE = 64.0, 64.0  # fixed-point steps of the two conv layers
B1_CLIP, B2_CLIP = 2.0**14, 2.0**12
HIDDEN_SHIFT = 8.0  # hidden = clamp(pre / 8, 0, 255): 8-bit activations
EXACT_LIMIT = 2.0**24  # float32 represents every integer below this exactly
CHUNK = 128  # images per call: larger convolutions run more efficiently
MIX_ODD = 40503  # odd multiplier (golden ratio * 2^16) for _top_byte


class _Coupling(nn.Module):
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


def _top_byte(a: torch.Tensor, bits: int) -> torch.Tensor:
    """8-bit network input from `bits`-bit values. Deeper data is first
    multiplied by an odd constant mod 2^bits so that a change in any bit,
    low ones included, changes the top byte (else a low-bit change would not
    reach T and would not spread)."""
    if bits <= 8:
        return a
    mixed = (a.to(torch.int64) * MIX_ODD) & (2**bits - 1)
    return (mixed >> (bits - 8)).to(a.dtype)


def _squeeze(x: torch.Tensor) -> torch.Tensor:
    return F.pixel_unshuffle(x, SQUEEZE)


def _unsqueeze(x: torch.Tensor) -> torch.Tensor:
    return F.pixel_shuffle(x, SQUEEZE)


def _circular_loss(y: torch.Tensor, modulus: int, harmonics: int = 3) -> torch.Tensor:
    """Noise-likeness of y on Z/modulus: harmonics of the histogram and of
    horizontal/vertical neighbour differences pushed to zero."""
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


@register_encryptor
class Invertible(Encryptor):
    name = "invertible"
    lossless = True
    deterministic = True
    learned = True
    aes_payload = False

    def __init__(
        self,
        key: bytes | None = None,
        *,
        epochs: int = 3,
        layers: int = 4,
        hidden: int = 64,
        batch_size: int = 16,
        lr: float = 1e-3,
        time_limit_s: float = 240.0,
        device: str = "cpu",
        **unknown: Any,
    ) -> None:
        super().__init__(key=key, **unknown)  # the base class rejects unknown options
        if min(epochs, layers, hidden, batch_size) < 1:
            raise ValueError("invertible: epochs, layers, hidden, batch_size must be >= 1")
        self.epochs, self.layers, self.hidden = int(epochs), int(layers), int(hidden)
        self.batch_size, self.lr = int(batch_size), float(lr)
        self.time_limit_s, self.device = float(time_limit_s), device
        self._nets: nn.ModuleList | None = None
        self._channels: int | None = None
        self._geometry: dict[tuple[int, int, int], tuple] = {}

    # -- key material -------------------------------------------------------
    def _build(self, channels: int) -> nn.ModuleList:
        half = SQUEEZE * SQUEEZE * channels // 2
        gen = torch.Generator().manual_seed(derive_seed(self.key, "invertible/init") % 2**63)
        nets = nn.ModuleList(_Coupling(half, self.hidden) for _ in range(self.layers))
        with torch.no_grad():  # key-seeded init scaled so T wraps many times
            for net in nets:
                w1 = torch.randn(net.conv1.weight.shape, generator=gen) * 0.4 * net.w1_clip
                net.conv1.weight.copy_(w1)
                net.conv1.bias.zero_()
                w2 = torch.randn(net.conv2.weight.shape, generator=gen) * 0.2 * net.w2_clip
                net.conv2.weight.copy_(w2)
                net.conv2.bias.zero_()
                net.clip_()
        return nets

    def _geometry_for(self, c: int, hp: int, wp: int) -> tuple:
        """Key images (layers, 1, 1, h, w) and per-layer permutations of each
        half (layers, 2, n_half) for a padded (C, Hp, Wp) image; cached."""
        if (c, hp, wp) not in self._geometry:
            h, w = hp // SQUEEZE, wp // SQUEEZE
            n_half = SQUEEZE * SQUEEZE * c // 2 * h * w
            seq = np.random.SeedSequence(
                list(derive_key(self.key, f"invertible/geometry/{c}x{hp}x{wp}"))
            )
            rng = np.random.Generator(np.random.PCG64(seq))
            keys = rng.integers(0, 256, (self.layers, 1, 1, h, w)).astype(np.float32)
            perms = np.stack(
                [[rng.permutation(n_half) for _ in range(2)] for _ in range(self.layers)]
            )
            inv = np.argsort(perms, axis=-1)
            self._geometry[(c, hp, wp)] = (
                torch.from_numpy(keys),
                torch.from_numpy(perms),
                torch.from_numpy(inv),
            )
        return self._geometry[(c, hp, wp)]

    # -- the flow -----------------------------------------------------------
    def _flow(self, x: torch.Tensor, bits: int, inverse: bool, exact: bool) -> torch.Tensor:
        """x: (N, C, Hp, Wp) float (integers when exact). Returns the same shape."""
        n, c, hp, wp = x.shape
        keys, perms, inv = self._geometry_for(c, hp, wp)
        keys, perms, inv = keys.to(x.device), perms.to(x.device), inv.to(x.device)
        modulus = float(2**bits)
        z = _squeeze(x)
        d, h, w = z.shape[1:]
        a, b = z[:, : d // 2].reshape(n, -1), z[:, d // 2 :].reshape(n, -1)
        order = reversed(range(self.layers)) if inverse else range(self.layers)
        for layer in order:
            net = self._nets[layer]
            if inverse:  # undo: (a, b) = (P0(b_old), P1(a_old))
                a, b = b.index_select(1, inv[layer, 1]), a.index_select(1, inv[layer, 0])
            a8 = _top_byte(a, bits).reshape(n, d // 2, h, w)
            # exact: integer T, decryptable; else the float relaxation for training
            t = (net.exact(a8, keys[layer]) if exact else net(a8, keys[layer])).reshape(n, -1)
            b = torch.remainder(b - t if inverse else b + t, modulus)
            if not inverse:
                a, b = b.index_select(1, perms[layer, 0]), a.index_select(1, perms[layer, 1])
        z = torch.cat([a.reshape(n, d // 2, h, w), b.reshape(n, d // 2, h, w)], dim=1)
        return _unsqueeze(z)

    def flops_per_image(self, h: int, w: int, channels: int = 1) -> int:
        """Conv FLOPs (2 x MACs) of one encryption, padded geometry."""
        hs, ws = -(-h // SQUEEZE), -(-w // SQUEEZE)
        half = SQUEEZE * SQUEEZE * channels // 2
        macs = hs * ws * 9 * ((half + 1) * self.hidden + self.hidden * half)
        return 2 * macs * self.layers

    # -- training -----------------------------------------------------------
    def fit(self, images: np.ndarray, bits: int | None = None, **options: Any) -> FitReport:
        if options:
            raise TypeError(f"invertible.fit: unknown option(s) {', '.join(sorted(options))}")
        images, bits = check_images(images, bits)
        start = time.perf_counter()
        self._channels = images.shape[1]
        self._nets = self._build(self._channels).to(self.device)
        x = torch.from_numpy(self._pad(images).astype(np.float32)).to(self.device)
        gen = torch.Generator().manual_seed(derive_seed(self.key, "invertible/batches") % 2**63)
        opt = torch.optim.Adam(self._nets.parameters(), lr=self.lr)
        with torch.no_grad():
            before = float(_circular_loss(self._flow(x[:32], bits, False, False), 2**bits))
        epochs_done = 0
        for _ in range(self.epochs):
            for idx in torch.randperm(len(x), generator=gen).split(self.batch_size):
                loss = _circular_loss(self._flow(x[idx], bits, False, False), 2**bits)
                opt.zero_grad()
                loss.backward()
                opt.step()
                for net in self._nets:
                    net.clip_()
            epochs_done += 1
            if time.perf_counter() - start > self.time_limit_s:
                break
        self._nets = self._nets.cpu().eval()
        for net in self._nets:
            net.quantize()
        with torch.no_grad():
            after = float(_circular_loss(self._flow(x[:32].cpu(), bits, False, False), 2**bits))
        probe = images[: min(len(images), 8)]
        back = self.decrypt(self.encrypt(probe, bits))
        return FitReport(
            seconds=time.perf_counter() - start,
            epochs=epochs_done,
            images=len(images),
            metrics={
                "noise_loss_before": before,
                "noise_loss_after": after,
                "max_abs_error": float(np.max(np.abs(back.astype(np.int64) - probe))),
            },
        )

    # -- contract -----------------------------------------------------------
    @staticmethod
    def _pad(images: np.ndarray) -> np.ndarray:
        h, w = images.shape[2:]
        ph, pw = (-h) % SQUEEZE, (-w) % SQUEEZE
        return np.pad(images, ((0, 0), (0, 0), (0, ph), (0, pw))) if ph or pw else images

    def _require_fitted(self, channels: int) -> None:
        if self._nets is None:
            raise RuntimeError(
                "invertible: call fit(images) or load_state_dict(state) before encrypt/decrypt"
            )
        if channels != self._channels:
            raise ValueError(f"invertible: fitted for {self._channels} channel(s), got {channels}")

    def _tags(self, images: np.ndarray, bits: int) -> list[bytes]:
        mac_key = derive_key(self.key, "invertible/tag")
        prefix = b"%d|%s|" % (bits, ",".join(map(str, images.shape[1:])).encode())
        le = images.astype(images.dtype.newbyteorder("<"), copy=False)
        return [
            hmac.new(mac_key, prefix + im.tobytes(), "sha256").digest()[:TAG_BYTES] for im in le
        ]

    @torch.inference_mode()
    def _encrypt_payload(self, images: np.ndarray, bits: int) -> tuple[bytes, dict[str, Any]]:
        self._require_fitted(images.shape[1])
        padded = self._pad(images)
        dtype = images.dtype.newbyteorder("<")
        out = np.empty(padded.shape, dtype=dtype)
        for lo in range(0, len(padded), CHUNK):
            x = torch.from_numpy(padded[lo : lo + CHUNK].astype(np.float32))
            out[lo : lo + CHUNK] = self._flow(x, bits, False, True).numpy().astype(dtype)
        extra = {"v": 1, "layers": self.layers, "padded": list(padded.shape[2:])}
        return b"".join(self._tags(images, bits)) + out.tobytes(), extra

    def _cipher_array(self, header: Header, payload: bytes, check_model: bool = True) -> np.ndarray:
        n, c, h, w = header.shape
        extra = header.extra
        padded = extra.get("padded")
        if check_model and extra.get("layers") != self.layers:
            raise ContainerError(
                f"invertible: container has {extra.get('layers')} layers, model {self.layers}"
            )
        if extra.get("v") != 1 or not isinstance(padded, list) or len(padded) != 2:
            raise ContainerError(
                f"invertible: payload description {extra!r} does not match this model"
            )
        hp, wp = padded
        dtype = np.dtype(header.dtype).newbyteorder("<")
        if len(payload) != n * TAG_BYTES + n * c * hp * wp * dtype.itemsize:
            raise ContainerError(
                f"invertible: payload of {len(payload)} bytes does not fit {header.shape}"
            )
        return np.frombuffer(payload, dtype=dtype, offset=n * TAG_BYTES).reshape(n, c, hp, wp)

    @torch.inference_mode()
    def _decrypt_payload(self, header: Header, payload: bytes) -> np.ndarray:
        n, c, h, w = header.shape
        self._require_fitted(c)
        cipher = self._cipher_array(header, payload)
        images = np.empty(header.shape, dtype=header.dtype)
        for lo in range(0, n, CHUNK):
            y = torch.from_numpy(cipher[lo : lo + CHUNK].astype(np.float32))
            x = self._flow(y, header.bits, True, True).numpy()
            images[lo : lo + CHUNK] = x[:, :, :h, :w].astype(header.dtype)
        tags = [payload[i * TAG_BYTES : (i + 1) * TAG_BYTES] for i in range(n)]
        if self._tags(images, header.bits) != tags:
            raise IntegrityError("invertible: decrypted image does not match its keyed tag")
        return images

    def cipher_image(self, blob: bytes) -> np.ndarray:
        """Cipher pixels (tags skipped, cropped to the plaintext size) as
        uint8; deeper bit depths keep their top 8 bits."""
        header, payload = read_body(blob)
        n, c, h, w = header.shape
        cipher = self._cipher_array(header, payload, False)[:, :, :h, :w].astype(np.int64)
        return (cipher >> max(header.bits - 8, 0)).astype(np.uint8)

    def state_dict(self) -> dict[str, Any]:
        self._require_fitted(self._channels)
        state: dict[str, Any] = {
            "version": 1,
            "channels": self._channels,
            "layers": self.layers,
            "hidden": self.hidden,
        }
        for k, v in self._nets.state_dict().items():
            state[f"nets.{k}"] = v.detach().clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != 1:
            raise ValueError(f"invertible: unsupported state version {state.get('version')!r}")
        self._channels = int(state["channels"])
        self.layers, self.hidden = int(state["layers"]), int(state["hidden"])
        self._geometry.clear()
        nets = self._build(self._channels)
        nets.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("nets.")})
        for net in nets:
            net.quantize()
        self._nets = nets.eval()
