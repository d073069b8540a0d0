"""Task models and local training: plain PyTorch, no Flower.

- chest X-ray: a small CNN, multi-label over the 14 NIH findings, scored by
  macro AUROC over the findings present in the evaluation set;
- brain MRI: a small 2D U-Net over the four modalities, three sigmoid
  outputs (ET, TC, WT), scored by Dice per region;
- `mlp`: a reference model for the update-leakage attacks (privacy/updates.py):
  its first layer is fully connected with a bias, the case in which a single
  image can be read back from the update exactly (Phong et al. 2017).

`train` runs sample-level DP-SGD with Opacus when given a `DpSgd` (the study's
`dp = local-dpsgd`); without it the code path is the plain one, unchanged.
Its pieces are public because the update-leakage attack reproduces a site's
training with them: `loss`, `batch_order` (the default batch sampler),
`proximal_term`, `make_optimizer`, and `train_tensors` (the plain loop on
float tensors, which `train` runs after `to_float`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from study.data.types import MRI_REGIONS

NUM_FINDINGS = 14
MODEL_ARCHS = ("study", "mlp")  # "study": XrayNet / MriUNet; "mlp": ReferenceMlp
OPTIMIZERS = ("adam", "sgd")


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.GroupNorm(min(8, cout), cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.GroupNorm(min(8, cout), cout),
        nn.ReLU(inplace=True),
    )


class XrayNet(nn.Module):
    """Four conv stages, global average pooling, one linear head (logits)."""

    def __init__(self, in_channels: int = 1, num_outputs: int = NUM_FINDINGS, width: int = 16):
        super().__init__()
        chans = [width, width * 2, width * 4, width * 4]
        stages, cin = [], in_channels
        for c in chans:
            stages += [_block(cin, c), nn.MaxPool2d(2)]
            cin = c
        self.features = nn.Sequential(*stages)
        self.head = nn.Linear(cin, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


class MriUNet(nn.Module):
    """A three-level U-Net; input H and W must be multiples of 4."""

    def __init__(self, in_channels: int = 4, num_outputs: int = 3, width: int = 16):
        super().__init__()
        w = width
        self.enc1, self.enc2, self.enc3 = (
            _block(in_channels, w),
            _block(w, 2 * w),
            _block(2 * w, 4 * w),
        )
        self.up2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2)
        self.dec2 = _block(4 * w, 2 * w)
        self.up1 = nn.ConvTranspose2d(2 * w, w, 2, stride=2)
        self.dec1 = _block(2 * w, w)
        self.out = nn.Conv2d(w, num_outputs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        e3 = self.enc3(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(e3), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.out(d1)


class ReferenceMlp(nn.Module):
    """Flatten, a fully connected layer with bias, ReLU, a linear head.

    The reference model of the update-leakage attacks: for one image, the
    gradient of the first layer's row i is (dL/db_i) * x, so the image is the
    ratio of a weight row's update to its bias' update (Phong et al. 2017).
    X-ray: 14 logits; MRI: one logit per region and pixel, shaped like the
    U-Net's output.
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        out_shape: tuple[int, ...],
        hidden: int = 256,
    ):
        super().__init__()
        self.out_shape = tuple(out_shape)
        self.first = nn.Linear(in_channels * image_size * image_size, hidden)
        self.head = nn.Linear(hidden, int(np.prod(self.out_shape)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.first(x.flatten(1)))
        return self.head(h).view(len(x), *self.out_shape)


def build_model(
    modality: str,
    in_channels: int | None = None,
    *,
    arch: str = "study",
    image_size: int | None = None,
) -> nn.Module:
    """The task model: arch "study" (XrayNet / MriUNet) or "mlp" (ReferenceMlp,
    which needs `image_size`)."""
    if modality not in ("xray", "mri"):
        raise ValueError(f"unknown modality {modality!r}; valid: xray, mri")
    if arch == "mlp":
        if not image_size:
            raise ValueError("the mlp reference model needs image_size")
        if modality == "xray":
            return ReferenceMlp(in_channels or 1, image_size, (NUM_FINDINGS,))
        return ReferenceMlp(
            in_channels or 4, image_size, (len(MRI_REGIONS), image_size, image_size)
        )
    if arch != "study":
        raise ValueError(f"unknown model {arch!r}; valid: {', '.join(MODEL_ARCHS)}")
    if modality == "xray":
        return XrayNet(in_channels or 1)
    return MriUNet(in_channels or 4)


def to_float(images: np.ndarray, bits: int) -> torch.Tensor:
    """uint8/uint16 (N, C, H, W) -> float32 in [0, 1]."""
    return torch.from_numpy(images.astype(np.float32) / float(2**bits - 1))


def loss(
    modality: str, logits: torch.Tensor, target: torch.Tensor, *, per_sample_dice: bool = False
) -> torch.Tensor:
    """BCE; for MRI plus soft Dice over the batch, or per image and then averaged
    (`per_sample_dice`: DP-SGD needs a loss that is a mean of per-image losses)."""
    value = F.binary_cross_entropy_with_logits(logits, target)
    if modality == "mri":  # BCE + soft Dice: tumour regions are small
        prob = torch.sigmoid(logits)
        dims = (2, 3) if per_sample_dice else (0, 2, 3)
        inter = (prob * target).sum(dim=dims)
        denom = prob.sum(dim=dims) + target.sum(dim=dims)
        value = value + (1 - (2 * inter + 1) / (denom + 1)).mean()
    return value


def batch_order(num_images: int, batch_size: int, epochs: int, seed: int) -> list[torch.Tensor]:
    """The index batches of plain local training, in order: per epoch a
    permutation drawn from one generator seeded with `seed`, cut into batches
    of `batch_size` (the last one shorter). `train`'s default batch sampler."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(epochs):
        order = torch.randperm(num_images, generator=gen)
        out += [order[i : i + batch_size] for i in range(0, num_images, batch_size)]
    return out


def proximal_term(
    params: Iterable[torch.Tensor], anchor: Iterable[torch.Tensor], proximal_mu: float
) -> torch.Tensor:
    """FedProx's term mu / 2 * ||w - w_global||^2 over the trainable parameters."""
    return proximal_mu / 2 * sum(((p - a) ** 2).sum() for p, a in zip(params, anchor, strict=True))


@dataclass(frozen=True)
class DpSgd:
    """Sample-level DP-SGD (Abadi et al. 2016) with Opacus: each image's
    gradient clipped to `clipping_norm`, Gaussian noise of standard deviation
    noise_multiplier * clipping_norm added to the batch sum, batches drawn by
    Poisson sampling at rate 1 / ceil(n / batch_size).

    `noise_seed` seeds the batch sampling and the noise. None (the default, what
    a study uses) draws it from the operating system: the noise must be unknown
    to the server, and a seed derived from the study's public `seed` would let
    it regenerate and subtract the noise. Tests and benchmarks pass a number to
    be reproducible.
    """

    noise_multiplier: float
    clipping_norm: float
    noise_seed: int | None = None

    @classmethod
    def from_study(cls, study) -> DpSgd | None:
        """The study's DP-SGD setting, or None when its dp is not local-dpsgd."""
        if study.dp != "local-dpsgd":
            return None
        return cls(study.dp_noise_multiplier, study.dp_clipping_norm)


@dataclass(frozen=True)
class TrainResult:
    loss: float
    examples: int
    seconds: float


def train(
    model: nn.Module,
    modality: str,
    images: np.ndarray,
    targets: np.ndarray,
    bits: int,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int = 0,
    device: str = "cpu",
    proximal_mu: float = 0.0,
    optimizer: str = "adam",
    dp_sgd: DpSgd | None = None,
    batch_sampler: BatchSampler | None = None,
    step_hook: StepHook | None = None,
) -> TrainResult:
    """Local training with Adam (or plain SGD); FedProx's proximal term when
    proximal_mu > 0; sample-level DP-SGD with Opacus when `dp_sgd` is given.

    `batch_sampler(num_images, batch_size, epochs, seed)`: the index batches
    of plain training (default `batch_order`); `step_hook(step, batch, loss)`
    is called after every optimiser step (step counts from 1). DP-SGD draws its
    own Poisson batches and takes neither."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
    if dp_sgd is not None:
        if batch_sampler is not None or step_hook is not None:
            raise ValueError(
                "dp = local-dpsgd draws its own Poisson batches: no batch_sampler or step_hook"
            )
        return _train_dp_sgd(
            model,
            modality,
            images,
            targets,
            bits,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            seed=seed,
            device=device,
            proximal_mu=proximal_mu,
            optimizer=optimizer,
            dp_sgd=dp_sgd,
        )
    return train_tensors(
        model,
        modality,
        to_float(images, bits),
        torch.from_numpy(targets.astype(np.float32)),
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        device=device,
        proximal_mu=proximal_mu,
        optimizer=optimizer,
        batch_sampler=batch_sampler,
        step_hook=step_hook,
    )


BatchSampler = Callable[[int, int, int, int], Sequence[torch.Tensor]]
StepHook = Callable[[int, torch.Tensor, torch.Tensor], None]


def train_tensors(
    model: nn.Module,
    modality: str,
    x_all: torch.Tensor,
    y_all: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int = 0,
    device: str = "cpu",
    proximal_mu: float = 0.0,
    optimizer: str = "adam",
    batch_sampler: BatchSampler | None = None,
    step_hook: StepHook | None = None,
) -> TrainResult:
    """`train`'s plain loop on float images (N, C, H, W) and float targets:
    the batches of `batch_sampler` (default `batch_order`), `loss` plus
    FedProx's `proximal_term`, one optimiser step each (`make_optimizer`)."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
    start = time.perf_counter()
    model.to(device).train()
    anchor = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else None
    opt = make_optimizer(optimizer, model.parameters(), learning_rate)
    sampler = batch_sampler or batch_order
    total, count = 0.0, 0
    for step, idx in enumerate(sampler(len(x_all), batch_size, epochs, seed), 1):
        x, y = x_all[idx].to(device), y_all[idx].to(device)
        value = loss(modality, model(x), y)
        if anchor is not None:
            value = value + proximal_term(model.parameters(), anchor, proximal_mu)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        if step_hook is not None:
            step_hook(step, idx, value.detach())
        total += float(value.detach()) * len(idx)
        count += len(idx)
    return TrainResult(
        loss=total / max(count, 1), examples=len(x_all), seconds=time.perf_counter() - start
    )


def make_optimizer(
    name: str, params: Iterable[torch.Tensor], learning_rate: float
) -> torch.optim.Optimizer:
    """The sites' optimizer: torch's Adam (its default betas and eps) or plain SGD."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=learning_rate)
    return torch.optim.Adam(params, lr=learning_rate)


def _train_dp_sgd(
    model: nn.Module,
    modality: str,
    images: np.ndarray,
    targets: np.ndarray,
    bits: int,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    device: str,
    proximal_mu: float,
    optimizer: str,
    dp_sgd: DpSgd,
) -> TrainResult:
    """DP-SGD through Opacus' PrivacyEngine: per-sample gradients (GradSampleModule
    hooks), flat clipping, Gaussian noise, Poisson-sampled batches, both drawn
    from torch generators seeded with `dp_sgd.noise_seed` or a secret seed
    (`seed` is public and not used here). Opacus' secure_mode (a CSPRNG) needs
    torchcsprng, which has no build for this torch. The trained weights end up
    in `model` itself (ReLUs are switched to out-of-place for Opacus' hooks)."""
    import secrets
    import warnings

    from opacus import PrivacyEngine
    from opacus.validators import ModuleValidator
    from torch.utils.data import DataLoader, TensorDataset

    if proximal_mu > 0:
        raise ValueError(
            "dp = local-dpsgd cannot be combined with FedProx's proximal term "
            "(Opacus clips per-sample gradients of the data loss only)"
        )
    for module in model.modules():  # Opacus' backward hooks forbid in-place ReLU on their views
        if isinstance(module, nn.ReLU):
            module.inplace = False
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise ValueError(f"dp = local-dpsgd: Opacus cannot train this model: {errors[0]}")
    start = time.perf_counter()
    model.to(device).train()
    x_all = to_float(images, bits)
    y_all = torch.from_numpy(targets.astype(np.float32))
    secret = dp_sgd.noise_seed if dp_sgd.noise_seed is not None else secrets.randbits(63)
    gen = torch.Generator().manual_seed(secret)
    loader = DataLoader(TensorDataset(x_all, y_all), batch_size=batch_size, generator=gen)
    noise = torch.Generator(device=device).manual_seed(secret + 1)
    with warnings.catch_warnings():  # the non-secure RNG is chosen on purpose (docstring)
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant="rdp")
    private_model, opt, private_loader = engine.make_private(
        module=model,
        optimizer=make_optimizer(optimizer, model.parameters(), learning_rate),
        data_loader=loader,
        noise_multiplier=dp_sgd.noise_multiplier,
        max_grad_norm=dp_sgd.clipping_norm,
        poisson_sampling=True,
        noise_generator=noise,
    )
    total, count = 0.0, 0
    try:
        with warnings.catch_warnings():
            # Opacus' hooks fire on the first layer, whose input needs no gradient: expected
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            for _ in range(epochs):
                for x, y in private_loader:
                    x, y = x.to(device), y.to(device)
                    opt.zero_grad(set_to_none=True)
                    if len(x) == 0:
                        # An empty Poisson batch still takes a step (noise only): the
                        # accountant counts it. A zero loss gives empty per-sample grads.
                        private_model(x).sum().backward()
                        opt.step()
                        continue
                    value = loss(modality, private_model(x), y, per_sample_dice=True)
                    value.backward()
                    opt.step()
                    total += float(value.detach()) * len(x)
                    count += len(x)
    finally:
        private_model._close()  # removes Opacus' hooks and grad_sample attributes
    return TrainResult(
        loss=total / max(count, 1), examples=len(x_all), seconds=time.perf_counter() - start
    )


@torch.inference_mode()
def predict(
    model: nn.Module, images: np.ndarray, bits: int, *, batch_size: int = 64, device: str = "cpu"
) -> np.ndarray:
    model.to(device).eval()
    x_all = to_float(images, bits)
    outs = [
        torch.sigmoid(model(x_all[i : i + batch_size].to(device))).cpu()
        for i in range(0, len(x_all), batch_size)
    ]
    return torch.cat(outs).numpy()


def evaluate(
    model: nn.Module,
    modality: str,
    images: np.ndarray,
    targets: np.ndarray,
    bits: int,
    *,
    device: str = "cpu",
) -> dict[str, float]:
    """Task metrics: X-ray {loss, auroc}; MRI {loss, dice_et, dice_tc, dice_wt, dice_mean}."""
    if len(images) == 0:
        raise ValueError("evaluate: no images")
    prob = predict(model, images, bits, device=device)
    eps = 1e-6
    y = targets.astype(np.float32)
    bce = float(-np.mean(y * np.log(prob + eps) + (1 - y) * np.log(1 - prob + eps)))
    if modality == "xray":
        return {"loss": bce, "auroc": macro_auroc(y, prob)}
    dice = dice_scores(prob > 0.5, y > 0.5)
    return {
        "loss": bce,
        **{f"dice_{k.lower()}": v for k, v in dice.items()},
        "dice_mean": float(np.mean(list(dice.values()))),
    }


def macro_auroc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Mean AUROC over the findings with both classes present (NaN if none)."""
    from sklearn.metrics import roc_auc_score

    cols = [j for j in range(y_true.shape[1]) if 0 < y_true[:, j].sum() < len(y_true)]
    if not cols:
        return float("nan")
    return float(np.mean([roc_auc_score(y_true[:, j], y_score[:, j]) for j in cols]))


def dice_scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dice per region over the whole set (1.0 when both are empty)."""
    out = {}
    for j, region in enumerate(MRI_REGIONS):
        p, t = pred[:, j], truth[:, j]
        denom = p.sum() + t.sum()
        out[region] = 1.0 if denom == 0 else float(2 * np.logical_and(p, t).sum() / denom)
    return out
