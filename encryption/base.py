"""The contract every encryption method honours.

Images are numpy arrays shaped (N, C, H, W) with dtype uint8 or uint16
(C = 1 for X-ray, 4 for BraTS slices). `bits` (8..16) is the meaningful bit
depth; it defaults to 8 for uint8 and 16 for uint16 and travels in the
container header so that metrics use the right MAX.

`encrypt(images) -> bytes` always returns one container (see
encryption/container.py): a header, the payload and an AEAD tag over both,
keyed by the site key. `decrypt(bytes) -> images` checks the tag before
anything else, so a wrong key or a flipped bit raises IntegrityError and
never yields a wrong image. A container sealed by another key holder with
forged fields fails as ContainerError too (never KeyError, TypeError or a
native panic), after bounded work: the header's size is limited and each
method checks its fields before using them.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from encryption.container import (
    MAX_CONTAINER_VALUES,
    NONCE_BYTES,
    ContainerError,
    Header,
    is_native_panic,
    open_container,
    read_body,
    read_header,
    seal_container,
)
from encryption.keys import KEY_BYTES, derive_key, generate_key
from encryption.options import positive_ints, reject_fit_options


@dataclass(frozen=True)
class FitReport:
    """What `fit` did: wall time, epochs and the quality it reached.

    Learned methods also record their fit curve (`curve`: one point per
    convergence check, e.g. epoch, steps, seconds, train_loss, val_loss,
    val_psnr_db, lr), why training ended (`stopped`: "converged", "epochs" or
    "time limit") and the budget it ran under (`budget`). The encryptor keeps
    its last report as `fit_report`, and learned ones carry it in their state,
    so a site can write it to its results after a reload too.
    """

    seconds: float = 0.0
    epochs: int = 0
    images: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    curve: tuple[dict[str, Any], ...] = ()
    stopped: str = ""
    budget: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able types (also what a key bundle stores)."""
        return {
            "seconds": float(self.seconds),
            "epochs": int(self.epochs),
            "images": int(self.images),
            "metrics": {k: float(v) for k, v in self.metrics.items()},
            "curve": [dict(p) for p in self.curve],
            "stopped": self.stopped,
            "budget": dict(self.budget),
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> FitReport:
        return cls(
            seconds=float(doc.get("seconds", 0.0)),
            epochs=int(doc.get("epochs", 0)),
            images=int(doc.get("images", 0)),
            metrics=dict(doc.get("metrics", {})),
            curve=tuple(dict(p) for p in doc.get("curve", ())),
            stopped=str(doc.get("stopped", "")),
            budget=dict(doc.get("budget", {})),
        )


def check_images(images: np.ndarray, bits: int | None = None) -> tuple[np.ndarray, int]:
    """Validate an (N, C, H, W) uint8/uint16 batch; return it and its bit depth."""
    if not isinstance(images, np.ndarray):
        raise TypeError(f"images must be a numpy array, got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"images must be shaped (N, C, H, W), got shape {images.shape}")
    if images.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"images must be uint8 or uint16, got {images.dtype}")
    if 0 in images.shape:
        raise ValueError(f"images must not be empty, got shape {images.shape}")
    native = 8 if images.dtype == np.uint8 else 16
    bits = native if bits is None else int(bits)
    lo = 1 if native == 8 else 9
    if not lo <= bits <= native:
        raise ValueError(f"bits={bits} does not fit dtype {images.dtype} (allowed {lo}..{native})")
    return np.ascontiguousarray(images), bits


class Encryptor(ABC):
    """Base class: subclasses set `name`, `lossless`, `deterministic`, `learned`
    and implement `_encrypt_payload` / `_decrypt_payload`.

    Subclasses that need no training keep the default `fit`; learned ones
    override `fit`, `state_dict` and `load_state_dict` (their weights are key
    material: they never leave the site). `cipher_image` (what the security
    metrics and the known-plaintext attack look at) defaults to the payload
    bytes laid out as images; a method may give its own uint8 cipher-image.
    """

    name: ClassVar[str] = ""
    lossless: ClassVar[bool] = True
    deterministic: ClassVar[bool] = False
    learned: ClassVar[bool] = False
    # True: the container's payload is AES-GCM ciphertext. False: the payload
    # is the method's own cipher-image, stored as is and authenticated only.
    aes_payload: ClassVar[bool] = True
    # The last fit's report (learned methods: also restored by load_state_dict).
    fit_report: FitReport | None = None

    def __init__(self, key: bytes | None = None, **config: Any) -> None:
        if key is None:
            key = generate_key()
        if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
            got = f"{len(key)} bytes" if isinstance(key, bytes | bytearray) else type(key).__name__
            raise ValueError(f"site key must be {KEY_BYTES} bytes, got {got}")
        if config:
            unknown = ", ".join(sorted(config))
            raise TypeError(f"{self.name}: unknown option(s) {unknown}")
        self.key = bytes(key)

    # -- contract ---------------------------------------------------------
    def fit(self, images: np.ndarray, bits: int | None = None, **options: Any) -> FitReport:
        """Train on a site's own images (`bits`: their meaningful bit depth, as in
        `encrypt`). Non-learned methods have nothing to fit."""
        reject_fit_options(self.name, options)
        check_images(images, bits)
        return FitReport(images=len(images))

    def encrypt(self, images: np.ndarray, bits: int | None = None) -> bytes:
        images, bits = check_images(images, bits)
        if images.size > MAX_CONTAINER_VALUES:
            raise ValueError(
                f"{self.name}: {images.size} pixel values exceed one container's limit "
                f"{MAX_CONTAINER_VALUES}; encrypt the batch in parts"
            )
        payload, extra = self._encrypt_payload(images, bits)
        header = Header(
            method=self.name,
            shape=tuple(int(s) for s in images.shape),
            dtype=str(images.dtype),
            bits=bits,
            extra=extra,
        )
        return seal_container(
            self.container_key,
            header,
            payload,
            encrypt=self.aes_payload,
            nonce=self._nonce(payload, header),
        )

    def decrypt(self, blob: bytes) -> np.ndarray:
        sealed = self._payload_sealed(read_header(blob))
        header, payload = open_container(self.container_key, blob, encrypted=sealed)
        if header.method != self.name:
            raise ContainerError(
                f"container holds method {header.method!r}, this encryptor is {self.name!r}"
            )
        try:
            images = self._decrypt_payload(header, payload)
        except ContainerError:
            raise
        except (ValueError, TypeError, LookupError, ArithmeticError, struct.error) as exc:
            # What malformed fields and payloads raise; methods check their own
            # fields first (clearer messages), this catches what they missed.
            raise ContainerError(f"{self.name}: cannot decode the payload: {exc}") from exc
        except BaseException as exc:
            if not is_native_panic(exc):
                raise  # KeyboardInterrupt, "fit first" RuntimeError, ...
            raise ContainerError(f"{self.name}: the payload's decoder panicked: {exc}") from None
        expected = (header.shape, header.dtype)
        if (tuple(images.shape), str(images.dtype)) != expected:
            raise ContainerError(
                f"{self.name}: decoded {images.shape}/{images.dtype}, header says {expected}"
            )
        return images

    def state_dict(self) -> dict[str, Any]:
        return {}

    def cipher_image(self, blob: bytes) -> np.ndarray:
        """What an eavesdropper sees, as uint8 images (N, C, H, W), for the
        security metrics and the known-plaintext attack. Needs no key.

        The default is `payload_image(blob)`: the container's payload bytes
        laid out as images. A method whose payload has a natural image form
        (e.g. a cipher-image of the plaintext's size) may return that instead,
        as uint8, one image per plaintext image.
        """
        return payload_image(blob)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{self.name} has no state, got keys {sorted(state)}")

    # -- for subclasses ---------------------------------------------------
    def _payload_sealed(self, header: Header) -> bool:
        """Whether a container's payload is AES-GCM ciphertext (else GMAC only);
        `header` is not authenticated yet, but the tag covers it either way. A
        method that changed its sealing reads its older containers here."""
        return self.aes_payload

    @property
    def container_key(self) -> bytes:
        """AEAD key of this method's containers (HKDF of the site key)."""
        return derive_key(self.key, f"container/{self.name}")

    def _nonce(self, payload: bytes, header: Header) -> bytes:
        """The container's 96-bit nonce.

        Randomised methods get a fresh random nonce. Deterministic methods
        (same images -> same container) get a synthetic nonce, HMAC-SHA256 of
        header and payload under a sub-key (as in AES-SIV): equal messages
        share a nonce, different ones almost surely do not, so GCM's
        authentication key is never exposed by nonce reuse.
        """
        if not self.deterministic:
            return os.urandom(NONCE_BYTES)
        mac = hmac.new(derive_key(self.key, f"nonce/{self.name}"), digestmod=hashlib.sha256)
        mac.update(header.to_bytes())
        mac.update(payload)
        return mac.digest()[:NONCE_BYTES]

    @abstractmethod
    def _encrypt_payload(self, images: np.ndarray, bits: int) -> tuple[bytes, dict[str, Any]]:
        """Images -> (payload bytes, extra header fields)."""

    @abstractmethod
    def _decrypt_payload(self, header: Header, payload: bytes) -> np.ndarray:
        """Payload bytes -> images with header.shape and header.dtype."""


class LearnedLosslessEncryptor(Encryptor):
    """Base of the learned lossless methods (bp-chaos, invertible): exact round
    trips, one ciphertext per key and image, learned state that is key material,
    and their own cipher-image as the payload (no AES). `_init_options` checks
    the options every one of them takes."""

    lossless = True
    deterministic = True
    learned = True
    aes_payload = False

    def _init_options(
        self, key: bytes | None, unknown: dict[str, Any], device: str, **counts: Any
    ) -> tuple[int, ...]:
        """Set the key (the base class rejects `unknown` options) and the torch
        `device`; `counts` (epochs, widths, sizes) as ints in the order given,
        ValueError naming the method and every one below 1."""
        Encryptor.__init__(self, key=key, **unknown)
        self.device = device
        return positive_ints(self.name, **counts)


def payload_image(blob: bytes) -> np.ndarray:
    """The method-independent cipher view of a container: uint8 (N, C', H', W').

    The payload (ciphertext for AES methods, the method's own output for the
    others; never the header, nonce or tag) is split into N equal slices of
    k = len(payload) // N bytes, one per plaintext image (N from the header).
    If k >= C * H * W, image i is the first C * H * W bytes of its slice in
    the plaintext's (C, H, W) shape; otherwise (compressed payloads) it is
    the first h * w bytes of its slice as one channel, h = floor(sqrt(k)),
    w = k // h. A payload under 4 bytes per image raises ContainerError.
    """
    header, body = read_body(blob)
    n, c, h, w = header.shape
    k = len(body) // n
    data = np.frombuffer(body, dtype=np.uint8)[: n * k].reshape(n, k)
    if k >= c * h * w:
        return data[:, : c * h * w].reshape(n, c, h, w).copy()
    if k < 4:
        raise ContainerError(
            f"{header.method}: payload of {len(body)} bytes is too short for a cipher view of {n} images"
        )
    side = int(np.sqrt(k))
    width = k // side
    return data[:, : side * width].reshape(n, 1, side, width).copy()
