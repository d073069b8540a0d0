"""One hospital, in plain Python (the ClientApp is a thin adapter over it).

A site owns a private state folder (`<out-dir>/sites/site-<id>/`): its keys
(client/keys.py: identity, key versions with the learned encryptor weights,
grants received; private files mode 0600) and its decoded image cache.
Nothing in that folder is put into a message except sealed grants, and no
site ever reads another site's folder: peers' keys arrive only as grants,
through the server.

Per round a site: stores the grants delivered to it, trains the task model
on its shard (plaintext, or what a recipient would see: decrypt(encrypt(x)))
and on the peers' images it holds a grant for, encrypts the images it shares
this round with its current key version, decrypts its own containers to
measure reconstruction, seals the grants the server asked for, and returns
the ciphertext and grants with the model update.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from client.keys import IDENTITY_DIR, SiteKeys
from encryption import Encryptor, get_encryptor
from study.config import Study
from study.data.home import study_data_root
from study.protocol import KeyMessages, cert_key

__all__ = ["KeyMessages", "LocalUpdate", "Shared", "Site", "TrainingSet", "round_trip", "site_dir"]


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


class TrainingSet(NamedTuple):
    """What a site trains on in a round (Site.training_set)."""

    images: np.ndarray
    targets: np.ndarray
    decrypt_s: float  # decrypting its own (train-on = decrypted) and peers' images
    peer_images: dict[int, int]  # peer -> images decrypted under its grant


@dataclass
class LocalUpdate:
    """What one round of local work produced: the trained model, how it
    trained, what the site shares, the grants it sealed, and the time spent
    decrypting."""

    model: object  # the trained torch module
    train: object  # study.task.TrainResult
    shared: Shared | None
    decrypt_s: float
    grants: dict[str, bytes] = field(default_factory=dict)  # grantee -> sealed grant
    peer_images: dict[int, int] = field(default_factory=dict)  # peer -> images decrypted


@dataclass
class Site:
    study: Study
    site_id: int
    num_sites: int
    identity_dir: Path | None = None  # default: identity/ in the site's folder
    _shard: object = field(default=None, repr=False)
    _encryptors: dict[int, Encryptor] = field(default_factory=dict, repr=False)
    _keys: SiteKeys | None = field(default=None, repr=False)

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
    @property
    def name(self) -> str:
        return f"site-{self.site_id}"

    @property
    def keys(self) -> SiteKeys:
        if self._keys is None:
            identity = Path(self.identity_dir) if self.identity_dir else self.folder / IDENTITY_DIR
            self._keys = SiteKeys(self.study, self.name, self.folder, identity)
        return self._keys

    def encryptor(self, version: int = 0) -> Encryptor:
        """This site's encryptor of key `version` (made and fitted once per study)."""
        if version not in self._encryptors:

            def fit(enc: Encryptor) -> None:
                train = self.shard.train
                enc.fit(train.images, bits=train.bits)

            self._encryptors[version] = self.keys.encryptor(
                version, options=self._method_options(), fit=fit
            )
        return self._encryptors[version]

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

    def share(self, server_round: int) -> Shared | None:
        """Encrypt this round's shared images; decrypt them back to measure loss."""
        n = self.study.share_per_round
        if self.study.exchange == "none" or n == 0:
            return None
        from encryption.metrics.fidelity import fidelity

        train = self.shard.train
        idx = self._share_indices(len(train), n, server_round)
        images, enc = train.images[idx], self.encryptor(self.study.key_version(server_round))
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
        self, received: dict[int, tuple[bytes, bytes]], peer_version: int = 0
    ) -> TrainingSet:
        """Images and targets to train on this round, the decrypt time spent and
        how many images each peer's grant gave.

        `received`: peer site -> (images container, labels container) that the
        peer shared under key `peer_version`; this site decrypts them with the
        grant it holds from that peer.
        """
        train = self.shard.train
        images, targets, seconds = train.images, train.targets, 0.0
        counts: dict[int, int] = {}
        if self.study.train_on == "decrypted":
            enc = self.encryptor()
            t0 = time.perf_counter()
            images = round_trip(enc, images, train.bits)
            seconds += time.perf_counter() - t0
        extra_x, extra_y = [images], [targets]
        for peer, (images_ct, labels_ct) in sorted(received.items()):
            enc = self.keys.peer_encryptor(f"site-{peer}", peer_version)
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
            counts[peer] = len(peer_images)
        return TrainingSet(np.concatenate(extra_x), np.concatenate(extra_y), seconds, counts)

    def train_round(
        self,
        global_state: dict,
        server_round: int,
        received: dict[int, tuple[bytes, bytes]] | None = None,
        *,
        keys: KeyMessages | None = None,
        device: str = "cpu",
    ) -> LocalUpdate:
        """One round at this site, as the study runs it: keep the grants
        delivered to it, load the global model, train on the site's images (and
        peers' under a grant), encrypt what the site shares, seal the grants
        asked for. The ClientApp and the update-leakage attack both call this."""
        from study.task import DpSgd, build_model, train

        s = self.study
        keys = keys or KeyMessages()
        for (grantor, version), blob in sorted(keys.delivered.items()):
            self.keys.receive_grant(grantor, version, blob, self._certificate(keys, grantor))
        model = build_model(s.modality)
        model.load_state_dict(global_state)
        data = self.training_set(
            received or {}, peer_version=s.key_version(max(server_round - 1, 1))
        )
        shared = self.share(server_round)
        result = train(
            model,
            s.modality,
            data.images,
            data.targets,
            self.shard.train.bits,
            epochs=s.local_epochs,
            batch_size=s.batch_size,
            learning_rate=s.learning_rate,
            seed=self.train_seed(server_round),
            device=device,
            proximal_mu=s.proximal_mu if s.strategy == "FedProx" else 0.0,
            dp_sgd=DpSgd.from_study(s),
        )
        grants = {}
        if keys.request_version is not None:
            grantees = {g: self._certificate(keys, g) for g in keys.request_grantees}
            version = keys.request_version
            grants = self.keys.seal_grants(version, self.encryptor(version), grantees)
        return LocalUpdate(model, result, shared, data.decrypt_s, grants, data.peer_images)

    def _certificate(self, keys: KeyMessages, identity: str) -> bytes:
        if identity not in keys.certificates:
            raise ValueError(
                f"site {self.site_id}: the train message names {identity!r} in its keys "
                f"but carries no certificate of it ({cert_key(identity)})"
            )
        return keys.certificates[identity]

    def evaluate(self, global_state: dict, *, device: str = "cpu") -> tuple[int, dict]:
        """The global model on this site's test patients: (test images, scores);
        (0, {}) when the site has none."""
        from study.task import build_model, evaluate

        model = build_model(self.study.modality)
        model.load_state_dict(global_state)
        test = self.shard.test
        if len(test) == 0:
            return 0, {}
        scores = evaluate(
            model, self.study.modality, test.images, test.targets, test.bits, device=device
        )
        return len(test), scores

    def train_seed(self, server_round: int) -> int:
        return self.study.seed * 100_003 + server_round * 1009 + self.site_id


def round_trip(enc: Encryptor, images: np.ndarray, bits: int) -> np.ndarray:
    """decrypt(encrypt(images)), in containers within the library's size limit
    (a large shard does not fit one container)."""
    from encryption.container import MAX_CONTAINER_VALUES

    per_image = max(1, int(np.prod(images.shape[1:])))
    step = max(1, MAX_CONTAINER_VALUES // per_image)
    parts = [
        enc.decrypt(enc.encrypt(images[i : i + step], bits=bits))
        for i in range(0, len(images), step)
    ]
    return np.concatenate(parts) if parts else images


def _labels_as_pixels(targets: np.ndarray) -> np.ndarray:
    """Labels as an (N, C, H, W) uint8 array so they travel in a container too."""
    t = np.asarray(targets)
    if t.ndim == 2:  # multi-hot findings
        return np.ascontiguousarray(t.reshape(len(t), 1, 1, -1).round().astype(np.uint8))
    return np.ascontiguousarray(t.astype(np.uint8))


def _pixels_as_labels(pixels: np.ndarray, like: np.ndarray) -> np.ndarray:
    return pixels.reshape((len(pixels), *like.shape[1:])).astype(like.dtype)
