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
  8x8 blocks into 64 C channels (wide enough for efficient convolutions),
  split the channels into halves a | b. After each coupling the halves swap
  and each half gets its own key-derived permutation of all its positions
  (the "key-derived pixel shuffle"), so every value is updated every second
  layer and a changed pixel spreads across the image as layers go by.
- Key conditioning: each T_l sees a key image K_l (8-bit, from HKDF of the
  site key: the random-phase-mask analogue) as an extra input channel;
  initial weights and all permutations are key-derived too.
- T_l is conv3x3 -> clamp(0, 255) -> conv3x3. At inference its weights are
  fixed point and its inputs 8-bit integers (top 8 bits of a), bounded so
  every partial sum is an integer below 2^24: float32 convolution is then
  exact whatever the summation order, kernel or thread count, so sender and
  receiver agree bit for bit. T's integer output wraps mod 2^bits. The
  network and its bounds are in encryption/coupling.py.
- Training (`fit`): the same network in float (no rounding), loss pushing
  the cipher toward noise on the circle Z/2^bits: the first harmonics of
  the cipher histogram and of horizontal/vertical neighbour differences
  toward zero (|E exp(2 pi i k y / M)|^2), i.e. a uniform marginal and no
  adjacent correlation. FitReport gives the loss before and after, and
  the held-out loss per epoch (`curve`); a plateau of it ends the fit.
- A keyed 16-byte tag (HMAC-SHA256 of each plaintext) travels in the payload;
  decryption recomputes it and raises IntegrityError on a mismatch, so a
  wrong state can never yield a silently wrong image. It reveals only
  equality of images (the method is deterministic anyway). Payload: N * 16
  tag bytes, then the padded cipher pixels (encryption/tagged_payload.py).

Untrained use: `encrypt` before `fit` or `load_state_dict` is a clear
RuntimeError (the key-seeded network would work, but untrained is not the
method).

Why the avalanche is complete although each layer is local: T's integer
output spans tens of thousands of levels and wraps mod 2^bits, so a
one-level change of an input changes T's outputs in a 3x3 neighbourhood of
the squeezed grid by pseudo-random amounts; the swaps and key-derived
permutations then carry those changes everywhere within four layers. The
learned part barely matters for the statistics: the key-seeded untrained
network is already at the noise floor of the loss, and training keeps it
there (FitReport: noise_loss_before / noise_loss_after).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from encryption import tagged_payload
from encryption.base import FitReport, LearnedLosslessEncryptor, check_images
from encryption.container import Header, IntegrityError, read_body, require_extra
from encryption.coupling import circular_noise_loss, seeded_couplings, top_byte
from encryption.keys import derive_key, derive_seed
from encryption.nn import Convergence, TrainClock
from encryption.options import reject_fit_options, require_fitted
from encryption.registry import register_encryptor

SQUEEZE = 8
CHUNK = 128  # images per call: larger convolutions run more efficiently


@register_encryptor
class Invertible(LearnedLosslessEncryptor):
    name = "invertible"

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
        time_clock: str = "wall",
        device: str = "cpu",
        **unknown: Any,
    ) -> None:
        self.epochs, self.layers, self.hidden, self.batch_size = self._init_options(
            key, unknown, device, epochs=epochs, layers=layers, hidden=hidden, batch_size=batch_size
        )
        self.lr, self.time_limit_s = float(lr), float(time_limit_s)
        if time_clock not in ("wall", "cpu"):  # as in encryption.nn: wall or this process's CPU s
            raise ValueError(f"{self.name}: time_clock must be 'wall' or 'cpu', got {time_clock!r}")
        self.time_clock = time_clock
        self._nets: nn.ModuleList | None = None
        self._channels: int | None = None
        self._geometry: dict[tuple[int, int, int], tuple] = {}

    # -- key material -------------------------------------------------------
    def _build(self, channels: int) -> nn.ModuleList:
        half = SQUEEZE * SQUEEZE * channels // 2
        seed = derive_seed(self.key, "invertible/init") % 2**63
        return seeded_couplings(half, self.hidden, self.layers, seed)

    def _geometry_for(self, c: int, hp: int, wp: int) -> tuple:
        """Key images (layers, 1, 1, h, w) and per-layer permutations of each
        half (layers, 2, n_half) for a padded (C, Hp, Wp) image; cached (a few
        shapes at a time: containers of ever new shapes must not grow it without end)."""
        if (c, hp, wp) not in self._geometry:
            if len(self._geometry) >= 4:
                self._geometry.clear()
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
        z = F.pixel_unshuffle(x, SQUEEZE)
        d, h, w = z.shape[1:]
        a, b = z[:, : d // 2].reshape(n, -1), z[:, d // 2 :].reshape(n, -1)
        order = reversed(range(self.layers)) if inverse else range(self.layers)
        for layer in order:
            net = self._nets[layer]
            if inverse:  # undo: (a, b) = (P0(b_old), P1(a_old))
                a, b = b.index_select(1, inv[layer, 1]), a.index_select(1, inv[layer, 0])
            a8 = top_byte(a, bits).reshape(n, d // 2, h, w)
            # exact: integer T, decryptable; else the float relaxation for training
            t = (net.exact(a8, keys[layer]) if exact else net(a8, keys[layer])).reshape(n, -1)
            b = torch.remainder(b - t if inverse else b + t, modulus)
            if not inverse:
                a, b = b.index_select(1, perms[layer, 0]), a.index_select(1, perms[layer, 1])
        z = torch.cat([a.reshape(n, d // 2, h, w), b.reshape(n, d // 2, h, w)], dim=1)
        return F.pixel_shuffle(z, SQUEEZE)

    def flops_per_image(self, h: int, w: int, channels: int = 1) -> int:
        """Conv FLOPs (2 x MACs) of one encryption, padded geometry."""
        hs, ws = -(-h // SQUEEZE), -(-w // SQUEEZE)
        half = SQUEEZE * SQUEEZE * channels // 2
        macs = hs * ws * 9 * ((half + 1) * self.hidden + self.hidden * half)
        return 2 * macs * self.layers

    # -- training -----------------------------------------------------------
    def fit(self, images: np.ndarray, bits: int | None = None, **options: Any) -> FitReport:
        reject_fit_options(self.name, options)
        images, bits = check_images(images, bits)
        clock_name = self.time_clock
        start, clock = time.perf_counter(), TrainClock(self.time_limit_s, clock_name == "cpu")
        self._channels = images.shape[1]
        self._nets = self._build(self._channels).to(self.device)
        x = torch.from_numpy(self._pad(images).astype(np.float32)).to(self.device)
        gen = torch.Generator().manual_seed(derive_seed(self.key, "invertible/batches") % 2**63)
        # convergence as in encryption.nn: the noise loss of held-out images (else the first 32)
        n_val = min(32, len(x) // 8) if len(x) >= 16 else 0
        x_val, x = (x[:n_val], x[n_val:]) if n_val >= 2 else (x[:32], x)
        opt = torch.optim.Adam(self._nets.parameters(), lr=self.lr)
        noise = lambda v: float(circular_noise_loss(self._flow(v, bits, False, False), 2**bits))  # noqa: E731
        with torch.no_grad():
            before = noise(x_val)
        monitor, curve, stopped = Convergence(2, 1), [], "epochs"
        for epoch in range(1, self.epochs + 1):
            for idx in torch.randperm(len(x), generator=gen).split(self.batch_size):
                loss = circular_noise_loss(self._flow(x[idx], bits, False, False), 2**bits)
                opt.zero_grad()
                loss.backward()
                opt.step()
                for net in self._nets:
                    net.clip_()
            with torch.no_grad():
                curve.append({"epoch": epoch, "seconds": clock.elapsed,
                              "val_loss": noise(x_val)})  # fmt: skip
            curve[-1]["action"] = action = monitor.update(curve[-1]["val_loss"], self._nets)
            if clock.expired():
                stopped = "time limit"
                break
            if action == "stop":
                stopped = "converged"
                break
            for group in opt.param_groups if action == "drop" else ():
                group["lr"] *= 0.2
        monitor.restore(self._nets)
        self._nets = self._nets.cpu().eval()
        for net in self._nets:
            net.quantize()
        with torch.no_grad():
            cipher = self._flow(x[:32].cpu(), bits, False, False)
            after = float(circular_noise_loss(cipher, 2**bits))
        probe = images[: min(len(images), 8)]
        back = self.decrypt(self.encrypt(probe, bits))
        self.fit_report = FitReport(
            seconds=time.perf_counter() - start,
            epochs=len(curve),
            images=len(images),
            metrics={
                "noise_loss_before": before,
                "noise_loss_after": after,
                "max_abs_error": float(np.max(np.abs(back.astype(np.int64) - probe))),
            },
            curve=tuple(curve),
            stopped=stopped,
            budget=dict(epochs=self.epochs, time_limit_s=self.time_limit_s, time_clock=clock_name),
        )
        return self.fit_report

    # -- contract -----------------------------------------------------------
    @staticmethod
    def _pad(images: np.ndarray) -> np.ndarray:
        h, w = images.shape[2:]
        ph, pw = (-h) % SQUEEZE, (-w) % SQUEEZE
        return np.pad(images, ((0, 0), (0, 0), (0, ph), (0, pw))) if ph or pw else images

    def _require_fitted(self, channels: int) -> None:
        require_fitted(self.name, self._nets is not None)
        if channels != self._channels:
            raise ValueError(f"invertible: fitted for {self._channels} channel(s), got {channels}")

    def _tags(self, images: np.ndarray, bits: int) -> list[bytes]:
        return tagged_payload.image_macs(self.key, "invertible/tag", images, bits)

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
        return tagged_payload.pack(self._tags(images, bits), out), extra

    def _unpack(
        self, header: Header, payload: bytes, check_model: bool = True
    ) -> tuple[list[bytes], np.ndarray]:
        """(tags, padded cipher pixels (N, C, Hp, Wp)) of a payload."""
        n, c, h, w = header.shape
        if check_model:
            require_extra(header, self.name, "layers", self.layers)
        require_extra(header, self.name, "v", 1)
        # What `_pad` makes of (h, w), never what the container says.
        padded = require_extra(
            header, self.name, "padded", [h + (-h) % SQUEEZE, w + (-w) % SQUEEZE]
        )
        return tagged_payload.unpack(self.name, header, payload, (n, c, *padded))

    @torch.inference_mode()
    def _decrypt_payload(self, header: Header, payload: bytes) -> np.ndarray:
        n, c, h, w = header.shape
        self._require_fitted(c)
        tags, cipher = self._unpack(header, payload)
        images = np.empty(header.shape, dtype=header.dtype)
        for lo in range(0, n, CHUNK):
            y = torch.from_numpy(cipher[lo : lo + CHUNK].astype(np.float32))
            x = self._flow(y, header.bits, True, True).numpy()
            images[lo : lo + CHUNK] = x[:, :, :h, :w].astype(header.dtype)
        if self._tags(images, header.bits) != tags:
            raise IntegrityError("invertible: decrypted image does not match its keyed tag")
        return images

    def cipher_image(self, blob: bytes) -> np.ndarray:
        """Cipher pixels (tags skipped, cropped to the plaintext size) as
        uint8; deeper bit depths keep their top 8 bits."""
        header, payload = read_body(blob)
        n, c, h, w = header.shape
        _, cipher = self._unpack(header, payload, check_model=False)
        return tagged_payload.top_byte_view(cipher[:, :, :h, :w], header.bits)

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
        if self.fit_report is not None:
            state["fit_report"] = self.fit_report.as_dict()
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
        report = state.get("fit_report")  # absent in states of older versions
        self.fit_report = FitReport.from_dict(report) if isinstance(report, dict) else None
