"""`bp-chaos`: back-propagation network + logistic/Henon chaos (Gao et al.
2022, Complexity, "An improved image processing based on deep learning
backpropagation technique"). Exact.

What the paper describes: a back-propagation (BP) neural network learns
weights "derived from the image itself" and predicts new pixel values
("pixels used to manipulate position and value according to the predicted
new value"); the logistic and Henon maps add randomness and key space and
drive the scrambling (position) and diffusion (value).

What we built, and where we chose:
1. BP stage (learned, the paper's network). A small MLP (4 neighbours ->
   `hidden` ReLU units -> 1), trained by back-propagation in `fit` on the
   site's images, predicts a pixel from its four neighbours. It is used as
   an integer lifting scheme (two steps: quincunx pixels from their 4-
   neighbours, then the odd/odd pixels from their diagonal neighbours),
   `x <- (x - round(mlp(neighbours))) mod 2^bits`. Predictors only read
   pixels the step does not change, so the step is exactly invertible. The
   output is a decorrelated residual image. Inference uses the weights
   quantised to fixed point and computes in float64 with integer-valued
   operands below 2^53, i.e. exact integer arithmetic: bit-identical on
   every machine and thread count (a float rounding flip would otherwise
   break exactness between sender and receiver).
2. Chaos stage (keyed). Per round: a logistic-map permutation of all
   C*H*W pixels (channels mixed; it depends on the key and round only, not
   on the IV: an argsort per image would cost more than the rest of the
   cipher), then per image, with IV-dependent Henon key streams: forward chained
   diffusion c_i = (c_{i-1} + v_i + k_i) mod 2^bits computed as a prefix
   sum (vectorised, no per-pixel loop), a key-derived S-box (logistic
   permutation of [0, 2^bits)) for nonlinearity, backward chained diffusion
   (reverse prefix sum) with a second Henon key stream, and the S-box
   again. Two rounds by default. One changed pixel changes every later
   forward value by a constant, the S-box turns that into varied changes,
   and the backward pass carries them to every pixel: full avalanche.
3. Keys. Chaotic initial conditions (one family of `LANES` orbits per
   stream, see encryption/chaos.py) come from SHAKE-256 of an HKDF sub-key
   of the site key and a 16-byte per-image IV. With `plaintext_iv` (default)
   the IV is HMAC-SHA256(site sub-key, shape, bits, pixels)[:16] (the
   modern "plaintext-related key stream" of chaos ciphers, SIV style). The
   IV travels in the payload. It does not leak the image: it is a keyed MAC
   and useless without the key; what it reveals is equality (identical
   images give identical ciphertext: the method is deterministic, like
   AES-SIV). Decryption recomputes the MAC and refuses a mismatch. With
   `plaintext_iv=False` the IV is zero, so the avalanche of the diffusion
   alone can be measured.

Untrained use: `encrypt` before `fit` (or `load_state_dict`) raises
RuntimeError; the chaos part would work untrained, but the method as
described includes the learned stage.

Payload: N * 16 IV bytes, then the cipher pixels in the input dtype
(little-endian), so it is 16 bytes per image larger than raw.
"""

from __future__ import annotations

import hmac
import time
from typing import Any

import numpy as np
import torch

from encryption import chaos
from encryption.base import Encryptor, FitReport, check_images
from encryption.container import ContainerError, Header, IntegrityError, read_body
from encryption.keys import derive_key, derive_seed
from encryption.registry import register_encryptor

IV_BYTES = 16
FIXED_BITS = 12  # fixed-point fraction bits of the quantised MLP weights
WEIGHT_CLIP = 4.0  # keeps every integer intermediate far below 2^53
CHUNK = 32  # images per vectorised chaos batch (bounds memory)

# (target mask, source mask, neighbour offsets) of the two lifting steps
_QUINCUNX = ((-1, 0), (1, 0), (0, -1), (0, 1))
_DIAGONAL = ((-1, -1), (-1, 1), (1, -1), (1, 1))


def _masks(h: int, w: int) -> list[tuple[np.ndarray, np.ndarray, tuple]]:
    ii, jj = np.mgrid[0:h, 0:w]
    odd = (ii + jj) % 2 == 1
    odd_odd = (ii % 2 == 1) & (jj % 2 == 1)
    even_even = (ii % 2 == 0) & (jj % 2 == 0)
    return [(odd, ~odd, _QUINCUNX), (odd_odd, even_even, _DIAGONAL)]


def _neighbours(
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


class _Predictor(torch.nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(4, hidden)
        self.fc2 = torch.nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # residual on the mean of the neighbours: untrained it is already the
        # classic mean predictor, training learns the correction
        return x.mean(dim=-1) + self.fc2(torch.relu(self.fc1(x))).squeeze(-1)


@register_encryptor
class BpChaos(Encryptor):
    name = "bp-chaos"
    lossless = True
    deterministic = True
    learned = True
    aes_payload = False

    def __init__(
        self,
        key: bytes | None = None,
        *,
        epochs: int = 10,
        hidden: int = 8,
        rounds: int = 2,
        plaintext_iv: bool = True,
        batch_size: int = 8192,
        samples: int = 65536,
        device: str = "cpu",
        **unknown: Any,
    ) -> None:
        super().__init__(key=key, **unknown)  # the base class rejects unknown options
        if epochs < 1 or hidden < 1 or rounds < 1 or batch_size < 1 or samples < 1:
            raise ValueError("bp-chaos: epochs, hidden, rounds, batch_size, samples must be >= 1")
        self.epochs, self.hidden, self.rounds = int(epochs), int(hidden), int(rounds)
        self.plaintext_iv, self.batch_size = bool(plaintext_iv), int(batch_size)
        self.samples, self.device = int(samples), device
        self._nets: list[_Predictor] | None = None
        self._qweights: list[tuple[np.ndarray, ...]] = []
        self._sbox_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._perm_cache: dict[tuple[int, int], np.ndarray] = {}

    # -- BP stage -----------------------------------------------------------
    def flops_per_image(self, h: int, w: int, channels: int = 1) -> int:
        """Multiply-adds x 2 of the BP predictors (3/4 of the pixels are predicted)."""
        per_pixel = 2 * (4 * self.hidden + self.hidden + self.hidden + 1)
        targets = sum(int(t.sum()) for t, _, _ in _masks(h, w))
        return per_pixel * targets * channels

    def fit(self, images: np.ndarray, bits: int | None = None, **options: Any) -> FitReport:
        if options:
            raise TypeError(f"bp-chaos.fit: unknown option(s) {', '.join(sorted(options))}")
        images, bits = check_images(images, bits)
        start = time.perf_counter()
        modulus = float(2**bits)
        planes = images.reshape(-1, *images.shape[2:]).astype(np.int64)
        gen = torch.Generator().manual_seed(derive_seed(self.key, "bp-chaos/init"))
        rng = np.random.default_rng(derive_seed(self.key, "bp-chaos/samples"))
        nets, metrics = [], {}
        for step, (target, source, offsets) in enumerate(_masks(*planes.shape[1:])):
            net = _Predictor(self.hidden)
            with torch.no_grad():  # key-seeded init, no global RNG state touched
                for p in net.parameters():
                    bound = 1.0 / np.sqrt(p.shape[-1] if p.ndim > 1 else self.hidden)
                    p.uniform_(-bound, bound, generator=gen)
                net.fc2.weight.zero_()  # start as the mean-of-neighbours predictor
                net.fc2.bias.zero_()
            feats = _neighbours(planes, source, target, offsets)
            goal = planes[:, target].reshape(-1)
            if len(goal) == 0:  # image too small for this lifting step
                nets.append(net.eval())
                continue
            pick = rng.choice(len(goal), size=min(self.samples, len(goal)), replace=False)
            x = torch.from_numpy(feats[pick] / modulus).float().to(self.device)
            y = torch.from_numpy(goal[pick] / modulus).float().to(self.device)
            net.to(self.device)
            opt = torch.optim.Adam(net.parameters(), lr=3e-3)
            for _ in range(self.epochs):
                for idx in torch.randperm(len(x), generator=gen).split(self.batch_size):
                    loss = torch.mean((net(x[idx]) - y[idx]) ** 2)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    with torch.no_grad():
                        for p in net.parameters():
                            p.clamp_(-WEIGHT_CLIP, WEIGHT_CLIP)
            nets.append(net.cpu().eval())
            with torch.no_grad():
                mae = float(torch.mean(torch.abs(net.cpu()(x.cpu()) - y.cpu()))) * modulus
            metrics[f"step{step + 1}_mae"] = mae
            metrics[f"step{step + 1}_mean_of_neighbours_mae"] = float(
                np.mean(np.abs(feats[pick].mean(axis=1) - goal[pick]))
            )
        self._set_nets(nets)
        probe = images[: min(len(images), 8)]
        back = self.decrypt(self.encrypt(probe, bits))
        metrics["max_abs_error"] = float(np.max(np.abs(back.astype(np.int64) - probe)))
        return FitReport(
            seconds=time.perf_counter() - start,
            epochs=self.epochs,
            images=len(images),
            metrics=metrics,
        )

    def _set_nets(self, nets: list[_Predictor]) -> None:
        self._nets = nets
        scale = float(2**FIXED_BITS)
        self._qweights = []
        for net in nets:
            w1 = np.round(net.fc1.weight.detach().double().numpy() * scale)
            b1 = net.fc1.bias.detach().double().numpy()
            w2 = np.round(net.fc2.weight.detach().double().numpy() * scale)
            b2 = net.fc2.bias.detach().double().numpy()
            self._qweights.append((w1, b1, w2, b2))

    def _predict(self, step: int, feats: np.ndarray, modulus: int) -> np.ndarray:
        """Exact fixed-point MLP: integer-valued float64 operands < 2^53, so
        every sum is exact whatever the order or thread count."""
        w1, b1, w2, b2 = self._qweights[step]
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

    def _lift(self, planes: np.ndarray, modulus: int, inverse: bool) -> np.ndarray:
        planes = planes.copy()
        steps = list(enumerate(_masks(*planes.shape[1:])))
        for step, (target, source, offsets) in reversed(steps) if inverse else steps:
            if not target.any():
                continue
            pred = self._predict(step, _neighbours(planes, source, target, offsets), modulus)
            pred = pred.reshape(planes.shape[0], -1)
            sign = 1 if inverse else -1
            planes[:, target] = (planes[:, target] + sign * pred) % modulus
        return planes

    # -- chaos stage ----------------------------------------------------------
    def _sbox(self, bits: int) -> tuple[np.ndarray, np.ndarray]:
        if bits not in self._sbox_cache:
            seed = derive_key(self.key, f"bp-chaos/sbox/{bits}")
            box = chaos.chaotic_permutations([seed], "sbox", 2**bits)[0].astype(np.int64)
            inv = np.empty_like(box)
            inv[box] = np.arange(len(box))
            self._sbox_cache[bits] = (box, inv)
        return self._sbox_cache[bits]

    def _permutation(self, rnd: int, n: int) -> np.ndarray:
        # Key-only (not per image): an argsort per image would cost more than
        # the rest of the cipher; the per-image IV already makes every key
        # stream unique.
        if (rnd, n) not in self._perm_cache:
            seed = derive_key(self.key, f"bp-chaos/perm/{rnd}")
            self._perm_cache[(rnd, n)] = chaos.chaotic_permutations([seed], "perm", n)
        return self._perm_cache[(rnd, n)]

    def _streams(self, ivs: list[bytes], rnd: int, n: int, modulus: int):
        sub = derive_key(self.key, "bp-chaos/chaos")
        seeds = [sub + iv for iv in ivs]
        fwd = chaos.to_symbols(chaos.henon_stream(seeds, f"fwd/{rnd}", n + 1), modulus)
        bwd = chaos.to_symbols(chaos.henon_stream(seeds, f"bwd/{rnd}", n + 1), modulus)
        return self._permutation(rnd, n)[0], fwd, bwd

    def _ivs(self, images: np.ndarray, bits: int) -> list[bytes]:
        if not self.plaintext_iv:
            return [bytes(IV_BYTES)] * len(images)
        mac_key = derive_key(self.key, "bp-chaos/iv")
        shape = ",".join(str(s) for s in images.shape[1:]).encode()
        prefix = b"%d|%s|" % (bits, shape)
        le = images.astype(images.dtype.newbyteorder("<"), copy=False)
        return [
            hmac.new(mac_key, prefix + img.tobytes(), "sha256").digest()[:IV_BYTES] for img in le
        ]

    def _chaos(
        self, vec: np.ndarray, ivs: list[bytes], bits: int, rounds: int, inverse: bool
    ) -> np.ndarray:
        modulus, mask = 2**bits, 2**bits - 1
        box, inv = self._sbox(bits)
        n = vec.shape[1]
        order = reversed(range(rounds)) if inverse else range(rounds)
        for rnd in order:
            perm, fwd, bwd = self._streams(ivs, rnd, n, modulus)
            c0, kf = fwd[:, :1], fwd[:, 1:]
            c1, kb = bwd[:, :1], bwd[:, 1:]
            if not inverse:
                vec = vec[:, perm]
                vec = (c0 + np.cumsum(vec + kf, axis=1)) & mask
                vec = box[vec]
                vec = (c1 + np.cumsum((vec + kb)[:, ::-1], axis=1)[:, ::-1]) & mask
                vec = box[vec]
            else:
                vec = inv[vec]
                nxt = np.concatenate([vec[:, 1:], np.broadcast_to(c1, (len(vec), 1))], axis=1)
                vec = inv[(vec - nxt - kb) & mask]
                prev = np.concatenate([c0, vec[:, :-1]], axis=1)
                vec = (vec - prev - kf) & mask
                out = np.empty_like(vec)
                out[:, perm] = vec
                vec = out
        return vec

    # -- contract -------------------------------------------------------------
    def cipher_image(self, blob: bytes) -> np.ndarray:
        """The cipher pixels (IVs skipped) as uint8 (N, C, H, W); deeper bit
        depths keep their top 8 bits (uniform if the cipher is uniform)."""
        header, payload = read_body(blob)
        n = header.shape[0]
        dtype = np.dtype(header.dtype).newbyteorder("<")
        if len(payload) != n * IV_BYTES + int(np.prod(header.shape)) * dtype.itemsize:
            raise ContainerError(
                f"bp-chaos: payload of {len(payload)} bytes does not fit {header.shape}"
            )
        pixels = np.frombuffer(payload, dtype=dtype, offset=n * IV_BYTES)
        pixels = pixels.reshape(header.shape).astype(np.int64) >> max(header.bits - 8, 0)
        return pixels.astype(np.uint8)

    def _require_fitted(self) -> None:
        if self._nets is None:
            raise RuntimeError(
                "bp-chaos: call fit(images) or load_state_dict(state) before encrypt/decrypt"
            )

    def _encrypt_payload(self, images: np.ndarray, bits: int) -> tuple[bytes, dict[str, Any]]:
        self._require_fitted()
        n, c, h, w = images.shape
        ivs = self._ivs(images, bits)
        out = np.empty((n, c * h * w), dtype=images.dtype.newbyteorder("<"))
        for lo in range(0, n, CHUNK):
            part = images[lo : lo + CHUNK].astype(np.int64)
            planes = self._lift(part.reshape(-1, h, w), 2**bits, inverse=False)
            vec = self._chaos(
                planes.reshape(len(part), -1),
                ivs[lo : lo + CHUNK],
                bits,
                self.rounds,
                inverse=False,
            )
            out[lo : lo + CHUNK] = vec
        extra = {"v": 1, "rounds": self.rounds, "plaintext_iv": self.plaintext_iv}
        return b"".join(ivs) + out.tobytes(), extra

    def _decrypt_payload(self, header: Header, payload: bytes) -> np.ndarray:
        self._require_fitted()
        n, c, h, w = header.shape
        bits, extra = header.bits, header.extra
        dtype = np.dtype(header.dtype).newbyteorder("<")
        if extra.get("v") != 1 or not isinstance(extra.get("rounds"), int) or extra["rounds"] < 1:
            raise ValueError(f"bp-chaos: unsupported payload description {extra!r}")
        expected = n * IV_BYTES + n * c * h * w * dtype.itemsize
        if len(payload) != expected:
            raise ValueError(
                f"bp-chaos: payload is {len(payload)} bytes, shape {header.shape} needs {expected}"
            )
        ivs = [payload[i * IV_BYTES : (i + 1) * IV_BYTES] for i in range(n)]
        cipher = np.frombuffer(payload, dtype=dtype, offset=n * IV_BYTES).reshape(n, -1)
        images = np.empty((n, c, h, w), dtype=header.dtype)
        for lo in range(0, n, CHUNK):
            vec = self._chaos(
                cipher[lo : lo + CHUNK].astype(np.int64),
                ivs[lo : lo + CHUNK],
                bits,
                extra["rounds"],
                inverse=True,
            )
            planes = self._lift(vec.reshape(-1, h, w), 2**bits, inverse=True)
            images[lo : lo + CHUNK] = planes.reshape(-1, c, h, w)
        if extra.get("plaintext_iv") and self._ivs(images, bits) != ivs:
            raise IntegrityError(
                "bp-chaos: decrypted image does not match its keyed IV (wrong model state?)"
            )
        return images

    def state_dict(self) -> dict[str, Any]:
        self._require_fitted()
        state: dict[str, Any] = {
            "version": 1,
            "hidden": self.hidden,
            "rounds": self.rounds,
            "plaintext_iv": self.plaintext_iv,
        }
        for i, net in enumerate(self._nets):
            for k, v in net.state_dict().items():
                state[f"net{i}.{k}"] = v.detach().clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != 1:
            raise ValueError(f"bp-chaos: unsupported state version {state.get('version')!r}")
        self.hidden, self.rounds = int(state["hidden"]), int(state["rounds"])
        self.plaintext_iv = bool(state["plaintext_iv"])
        nets = []
        for i in range(2):
            net = _Predictor(self.hidden)
            net.load_state_dict(
                {
                    k: state[f"net{i}.{k}"]
                    for k in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")
                }
            )
            nets.append(net.eval())
        self._set_nets(nets)
