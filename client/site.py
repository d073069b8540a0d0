"""One hospital, in plain Python (the ClientApp is a thin adapter over it).

A site owns a private state folder (`<out-dir>/sites/site-<id>/`): its key
bundle (site key + learned encryptor weights, mode 0600) and its decoded
image cache. Nothing in that folder is ever put into a message.

Per round a site: trains the task model on its shard (plaintext, or what a
recipient would see: decrypt(encrypt(x))), also on peers' images it can
decrypt under a consortium grant, encrypts the images it shares this round,
decrypts its own containers to measure reconstruction, and returns the
ciphertext with the model update.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from encryption import Encryptor, get_encryptor
from encryption.keys import generate_key, load_key_bundle, save_key_bundle
from study.config import Study
from study.data.home import study_data_root

BUNDLE_NAME = "key.bundle"


class InjectedFault(RuntimeError):
    """Raised on purpose by `fault-sites` (fault-injection studies)."""


def site_dir(study: Study, site: int) -> Path:
    return Path(study.out_dir).absolute() / "sites" / f"site-{site}"


@dataclass
class Shared:
    """What a site sends about its shared images this round."""

    images_ct: bytes  # container of the shared images
    labels_ct: bytes  # AES-GCM container of their labels (needed by grantees)
    count: int
    mse: float
    psnr: float
    ssim: float
    encrypt_s: float
    decrypt_s: float


@dataclass
class LocalUpdate:
    """What one round of local work produced: the trained model, how it
    trained, what the site shares, and the time spent decrypting."""

    model: object  # the trained torch module
    train: object  # study.task.TrainResult
    shared: Shared | None
    decrypt_s: float


@dataclass
class Site:
    study: Study
    site_id: int
    num_sites: int
    _shard: object = field(default=None, repr=False)
    _encryptor: Encryptor | None = field(default=None, repr=False)

    # -- data ---------------------------------------------------------------
    @property
    def folder(self) -> Path:
        return site_dir(self.study, self.site_id)

    @property
    def shard(self):
        if self._shard is None:
            from study.data import load_site

            s = self.study
            root = study_data_root(s)
            self._shard = load_site(
                root,
                s.modality,
                image_size=s.image_size,
                partition_id=self.site_id,
                num_partitions=self.num_sites,
                scheme=s.partition,
                alpha=s.dirichlet_alpha,
                seed=s.seed,
                cache_dir=self.folder / "cache",
                max_slices_per_subject=s.max_slices_per_subject,
                max_image_pixels=s.max_image_pixels,
            )
            if len(self._shard.train) == 0:
                raise ValueError(f"site {self.site_id}: its partition holds no training images")
        return self._shard

    # -- encryption -----------------------------------------------------------
    def encryptor(self) -> Encryptor:
        """Load this site's encryptor, or make the key and fit it once per study."""
        if self._encryptor is not None:
            return self._encryptor
        path = self.folder / BUNDLE_NAME
        options = self._method_options()
        if path.exists():
            key, method, state = load_key_bundle(path)
            if method != self.study.method:
                raise ValueError(
                    f"{path}: holds a {method!r} key bundle, the study uses "
                    f"{self.study.method!r}; use a new --out folder"
                )
            enc = get_encryptor(method, key, **options)
            enc.load_state_dict(state)
        else:
            enc = get_encryptor(self.study.method, generate_key(), **options)
            train = self.shard.train
            enc.fit(train.images, bits=train.bits)
            save_key_bundle(path, enc.key, enc.name, enc.state_dict())
        self._encryptor = enc
        return enc

    def _method_options(self) -> dict:
        from encryption.registry import encryptor_class

        cls = encryptor_class(self.study.method)
        options: dict = {}
        if cls.learned and self.study.method_epochs:
            options["epochs"] = self.study.method_epochs
        # Learned encryptors train and run on the site's GPU share where there is one.
        if "device" in getattr(cls, "defaults", {}) and self.study.num_gpus > 0:
            import torch

            if torch.cuda.is_available():
                options["device"] = "cuda"
        return options

    def peer_encryptor(self, peer: int) -> Encryptor:
        """A peer's encryptor under a consortium grant. Grants are exchanged out of
        band (here: read from the peer's state folder); never through the server."""
        key, method, state = load_key_bundle(site_dir(self.study, peer) / BUNDLE_NAME)
        enc = get_encryptor(method, key)
        enc.load_state_dict(state)
        return enc

    def share(self, server_round: int) -> Shared | None:
        """Encrypt this round's shared images; decrypt them back to measure loss."""
        n = self.study.share_per_round
        if self.study.exchange == "none" or n == 0:
            return None
        from encryption.metrics.fidelity import fidelity

        train = self.shard.train
        idx = self._share_indices(len(train), n, server_round)
        images, enc = train.images[idx], self.encryptor()
        t0 = time.perf_counter()
        images_ct = enc.encrypt(images, bits=train.bits)
        labels_ct = get_encryptor("aes-gcm", enc.key).encrypt(_labels_as_pixels(train.targets[idx]))
        t1 = time.perf_counter()
        restored = enc.decrypt(images_ct)
        t2 = time.perf_counter()
        fid = fidelity(images, restored, train.bits)
        return Shared(
            images_ct=images_ct,
            labels_ct=labels_ct,
            count=len(idx),
            mse=fid["mse"],
            psnr=fid["psnr"],
            ssim=fid["ssim"],
            encrypt_s=t1 - t0,
            decrypt_s=t2 - t1,
        )

    def _share_indices(self, total: int, n: int, server_round: int) -> np.ndarray:
        digest = hashlib.sha256(
            f"{self.study.seed}/{self.site_id}/{server_round}".encode()
        ).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "big"))
        return np.sort(rng.choice(total, size=min(n, total), replace=False))

    def training_set(
        self, received: dict[int, tuple[bytes, bytes]]
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """Images and targets to train on this round, and the decrypt time spent.

        `received`: peer site -> (images container, labels container) from a
        consortium grant.
        """
        train = self.shard.train
        images, targets, seconds = train.images, train.targets, 0.0
        if self.study.train_on == "decrypted":
            enc = self.encryptor()
            t0 = time.perf_counter()
            images = enc.decrypt(enc.encrypt(images, bits=train.bits))
            seconds += time.perf_counter() - t0
        extra_x, extra_y = [images], [targets]
        for peer, (images_ct, labels_ct) in sorted(received.items()):
            enc = self.peer_encryptor(peer)
            t0 = time.perf_counter()
            peer_images = enc.decrypt(images_ct)
            peer_targets = _pixels_as_labels(
                get_encryptor("aes-gcm", enc.key).decrypt(labels_ct), targets
            )
            seconds += time.perf_counter() - t0
            if peer_images.shape[1:] != images.shape[1:]:
                raise ValueError(
                    f"site {self.site_id}: peer {peer} shared images shaped "
                    f"{peer_images.shape[1:]}, this site's are {images.shape[1:]}"
                )
            extra_x.append(peer_images.astype(images.dtype))
            extra_y.append(peer_targets)
        return np.concatenate(extra_x), np.concatenate(extra_y), seconds

    def train_round(
        self,
        global_state: dict,
        server_round: int,
        received: dict[int, tuple[bytes, bytes]] | None = None,
        *,
        device: str = "cpu",
    ) -> LocalUpdate:
        """One round at this site, as the study runs it: load the global model,
        train on the site's images (and peers' under a grant), encrypt what the
        site shares. The ClientApp and the update-leakage attack both call this."""
        from study.task import build_model, train

        fault = self.check_fault(server_round)
        s = self.study
        model = build_model(s.modality)
        model.load_state_dict(global_state)
        images, targets, decrypt_s = self.training_set(received or {})
        shared = self.share(server_round)
        result = train(
            model,
            s.modality,
            images,
            targets,
            self.shard.train.bits,
            epochs=s.local_epochs,
            batch_size=s.batch_size,
            learning_rate=s.learning_rate,
            seed=self.train_seed(server_round),
            device=device,
            proximal_mu=s.proximal_mu if s.strategy == "FedProx" else 0.0,
        )
        if fault == "nan":
            import torch

            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(float("nan"))
        return LocalUpdate(model=model, train=result, shared=shared, decrypt_s=decrypt_s)

    def train_seed(self, server_round: int) -> int:
        return self.study.seed * 100_003 + server_round * 1009 + self.site_id

    def check_fault(self, server_round: int) -> str | None:
        """Fault injection (`fault-sites`): raise, stall, die, or return "nan"
        for train_round to send a NaN update."""
        fault = self.study.fault_plan.get(self.site_id)
        if fault is None or fault.round not in (None, server_round):
            return None
        if fault.kind == "stall":
            time.sleep(fault.stall_s)  # a slow or vanished site: the server's round-timeout
            return None
        if fault.kind == "crash":
            os._exit(70)  # a worker killed mid-round (Ray restarts it for the next round)
        if fault.kind == "nan":
            return "nan"
        raise InjectedFault(
            f"site {self.site_id}: injected fault in round {server_round} "
            f"(fault-sites = {self.study.fault_sites!r})"
        )


def _labels_as_pixels(targets: np.ndarray) -> np.ndarray:
    """Labels as an (N, C, H, W) uint8 array so they travel in a container too."""
    t = np.asarray(targets)
    if t.ndim == 2:  # multi-hot findings
        return np.ascontiguousarray(t.reshape(len(t), 1, 1, -1).round().astype(np.uint8))
    return np.ascontiguousarray(t.astype(np.uint8))


def _pixels_as_labels(pixels: np.ndarray, like: np.ndarray) -> np.ndarray:
    return pixels.reshape((len(pixels), *like.shape[1:])).astype(like.dtype)
