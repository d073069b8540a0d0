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
   break exactness between sender and receiver). See encryption/lifting.py.
2. Chaos stage (keyed). Per round: a logistic-map permutation of all
   C*H*W pixels (channels mixed; it depends on the key and round only, not
   on the IV: an argsort per image would cost more than the rest of the
   cipher), then per image, with IV-dependent Henon key streams: forward
   chained diffusion c_i = (c_{i-1} + v_i + k_i) mod 2^bits computed as a
   prefix sum (vectorised, no per-pixel loop), a key-derived S-box
   (logistic permutation of [0, 2^bits)) for nonlinearity, backward chained
   diffusion (reverse prefix sum) with a second Henon key stream, and the
   S-box again (`chaos.diffuse`). Two rounds by default. One changed pixel
   changes every later forward value by a constant, the S-box turns that
   into varied changes, and the backward pass carries them to every pixel:
   full avalanche.
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
(little-endian), so it is 16 bytes per image larger than raw (the layout
of encryption/tagged_payload.py).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from encryption import chaos, tagged_payload
from encryption.base import FitReport, LearnedLosslessEncryptor, check_images
from encryption.container import ContainerError, Header, IntegrityError, read_body
from encryption.keys import derive_key, derive_seed
from encryption.lifting import WEIGHT_CLIP, ExactLifting, Predictor, masks, neighbours
from encryption.options import reject_fit_options, require_fitted
from encryption.registry import register_encryptor

IV_BYTES = tagged_payload.MAC_BYTES
CHUNK = 32  # images per vectorised chaos batch (bounds memory)
MAX_ROUNDS = 16  # chaos rounds a model or a container may ask for (bounds decryption work)


@register_encryptor
class BpChaos(LearnedLosslessEncryptor):
    name = "bp-chaos"

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
        self.epochs, self.hidden, self.rounds, self.batch_size, self.samples = self._init_options(
            key,
            unknown,
            device,
            epochs=epochs,
            hidden=hidden,
            rounds=rounds,
            batch_size=batch_size,
            samples=samples,
        )
        if self.rounds > MAX_ROUNDS:
            raise ValueError(f"{self.name}: rounds must be <= {MAX_ROUNDS}, got {rounds}")
        self.plaintext_iv = bool(plaintext_iv)
        self._nets: list[Predictor] | None = None
        self._lifting: ExactLifting | None = None
        self._sbox_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._perm_cache: dict[tuple[int, int], np.ndarray] = {}

    # -- BP stage -----------------------------------------------------------
    def flops_per_image(self, h: int, w: int, channels: int = 1) -> int:
        """Multiply-adds x 2 of the BP predictors (3/4 of the pixels are predicted)."""
        per_pixel = 2 * (4 * self.hidden + self.hidden + self.hidden + 1)
        targets = sum(int(t.sum()) for t, _, _ in masks(h, w))
        return per_pixel * targets * channels

    def fit(self, images: np.ndarray, bits: int | None = None, **options: Any) -> FitReport:
        reject_fit_options(self.name, options)
        images, bits = check_images(images, bits)
        start = time.perf_counter()
        modulus = float(2**bits)
        planes = images.reshape(-1, *images.shape[2:]).astype(np.int64)
        gen = torch.Generator().manual_seed(derive_seed(self.key, "bp-chaos/init"))
        rng = np.random.default_rng(derive_seed(self.key, "bp-chaos/samples"))
        nets, metrics = [], {}
        for step, (target, source, offsets) in enumerate(masks(*planes.shape[1:])):
            net = Predictor(self.hidden)
            with torch.no_grad():  # key-seeded init, no global RNG state touched
                for p in net.parameters():
                    bound = 1.0 / np.sqrt(p.shape[-1] if p.ndim > 1 else self.hidden)
                    p.uniform_(-bound, bound, generator=gen)
                net.fc2.weight.zero_()  # start as the mean-of-neighbours predictor
                net.fc2.bias.zero_()
            feats = neighbours(planes, source, target, offsets)
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

    def _set_nets(self, nets: list[Predictor]) -> None:
        self._nets, self._lifting = nets, ExactLifting(nets)

    # -- chaos stage ----------------------------------------------------------
    def _sbox(self, bits: int) -> tuple[np.ndarray, np.ndarray]:
        if bits not in self._sbox_cache:
            seed = derive_key(self.key, f"bp-chaos/sbox/{bits}")
            self._sbox_cache[bits] = chaos.chaotic_sbox(seed, bits)
        return self._sbox_cache[bits]

    def _permutation(self, rnd: int, n: int) -> np.ndarray:
        # Key-only (not per image): an argsort per image would cost more than
        # the rest of the cipher; the per-image IV already makes every key
        # stream unique.
        if (rnd, n) in self._perm_cache:
            return self._perm_cache[(rnd, n)]
        seed = derive_key(self.key, f"bp-chaos/perm/{rnd}")
        perm = chaos.chaotic_permutations([seed], "perm", n)
        # Bounded: one image shape's rounds at a time (containers of any shape
        # may arrive; a cache keyed by all of them would grow without end).
        if len(self._perm_cache) >= MAX_ROUNDS:
            self._perm_cache.clear()
        self._perm_cache[(rnd, n)] = perm
        return perm

    def _streams(self, ivs: list[bytes], rnd: int, n: int, modulus: int):
        sub = derive_key(self.key, "bp-chaos/chaos")
        seeds = [sub + iv for iv in ivs]
        fwd = chaos.to_symbols(chaos.henon_stream(seeds, f"fwd/{rnd}", n + 1), modulus)
        bwd = chaos.to_symbols(chaos.henon_stream(seeds, f"bwd/{rnd}", n + 1), modulus)
        return self._permutation(rnd, n)[0], fwd, bwd

    def _ivs(self, images: np.ndarray, bits: int) -> list[bytes]:
        if not self.plaintext_iv:
            return [bytes(IV_BYTES)] * len(images)
        return tagged_payload.image_macs(self.key, "bp-chaos/iv", images, bits)

    def _chaos(
        self, vec: np.ndarray, ivs: list[bytes], bits: int, rounds: int, inverse: bool
    ) -> np.ndarray:
        box, inv = self._sbox(bits)
        for rnd in reversed(range(rounds)) if inverse else range(rounds):
            perm, fwd, bwd = self._streams(ivs, rnd, vec.shape[1], 2**bits)
            if inverse:
                vec = chaos.undiffuse(vec, perm, fwd, bwd, inv, bits)
            else:
                vec = chaos.diffuse(vec, perm, fwd, bwd, box, bits)
        return vec

    # -- contract -------------------------------------------------------------
    def cipher_image(self, blob: bytes) -> np.ndarray:
        """The cipher pixels (IVs skipped) as uint8 (N, C, H, W); deeper bit
        depths keep their top 8 bits (uniform if the cipher is uniform)."""
        header, payload = read_body(blob)
        _, pixels = tagged_payload.unpack(self.name, header, payload, header.shape)
        return tagged_payload.top_byte_view(pixels, header.bits)

    def _encrypt_payload(self, images: np.ndarray, bits: int) -> tuple[bytes, dict[str, Any]]:
        require_fitted(self.name, self._nets is not None)
        n, c, h, w = images.shape
        ivs = self._ivs(images, bits)
        out = np.empty((n, c * h * w), dtype=images.dtype.newbyteorder("<"))
        for lo in range(0, n, CHUNK):
            part = images[lo : lo + CHUNK].astype(np.int64)
            planes = self._lifting(part.reshape(-1, h, w), 2**bits, inverse=False)
            vec = planes.reshape(len(part), -1)
            out[lo : lo + CHUNK] = self._chaos(
                vec, ivs[lo : lo + CHUNK], bits, self.rounds, inverse=False
            )
        extra = {"v": 1, "rounds": self.rounds, "plaintext_iv": self.plaintext_iv}
        return tagged_payload.pack(ivs, out), extra

    def _decrypt_payload(self, header: Header, payload: bytes) -> np.ndarray:
        require_fitted(self.name, self._nets is not None)
        n, c, h, w = header.shape
        bits, extra = header.bits, header.extra
        rounds = extra.get("rounds")
        if (
            extra.get("v") != 1
            or type(rounds) is not int
            or not 1 <= rounds <= MAX_ROUNDS
            or type(extra.get("plaintext_iv")) is not bool
        ):
            raise ContainerError(
                f"bp-chaos: unsupported payload description {extra!r} "
                f"(v 1, rounds 1..{MAX_ROUNDS}, plaintext_iv true/false)"
            )
        ivs, cipher = tagged_payload.unpack(self.name, header, payload, (n, c * h * w))
        if int(cipher.max()) >= 2**bits:
            raise ContainerError(f"bp-chaos: cipher values exceed the header's {bits} bits")
        images = np.empty((n, c, h, w), dtype=header.dtype)
        for lo in range(0, n, CHUNK):
            vec = cipher[lo : lo + CHUNK].astype(np.int64)
            vec = self._chaos(vec, ivs[lo : lo + CHUNK], bits, rounds, inverse=True)
            planes = self._lifting(vec.reshape(-1, h, w), 2**bits, inverse=True)
            images[lo : lo + CHUNK] = planes.reshape(-1, c, h, w)
        if extra.get("plaintext_iv") and self._ivs(images, bits) != ivs:
            raise IntegrityError(
                "bp-chaos: decrypted image does not match its keyed IV (wrong model state?)"
            )
        return images

    def state_dict(self) -> dict[str, Any]:
        require_fitted(self.name, self._nets is not None)
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
        if not 1 <= self.rounds <= MAX_ROUNDS:
            raise ValueError(f"bp-chaos: state rounds must be 1..{MAX_ROUNDS}, got {self.rounds}")
        self.plaintext_iv = bool(state["plaintext_iv"])
        nets = []
        for i in range(2):
            net = Predictor(self.hidden)
            net.load_state_dict(
                {
                    k: state[f"net{i}.{k}"]
                    for k in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")
                }
            )
            nets.append(net.eval())
        self._set_nets(nets)
