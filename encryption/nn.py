"""Small torch building blocks shared by the learned encryptors.

Kept deliberately small and stable: pixel scaling, padding to a multiple
of a network's downsampling factor, key-seeded weight initialisation,
residual blocks, PSNR/SSIM on [0, 1] tensors, minibatch sampling under a
time budget, and an analytic FLOP count. No module-level mutable state.

The shared training loop (`TorchEncryptor._train`) fits up to a budget
(`epochs`, `time_limit_s`) with a convergence criterion (`Convergence`: a
key-chosen validation hold-out, learning-rate drops on a plateau, then a
stop) and records the fit curve in the method's `fit_report`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from encryption.base import Encryptor, FitReport, check_images
from encryption.inference import inference_view
from encryption.keys import derive_seed
from encryption.metrics.fidelity import SSIM_WIN, ssim_torch
from encryption.options import reject_fit_options

__all__ = [
    "Convergence",
    "ResBlock",
    "TorchEncryptor",
    "TrainClock",
    "conv",
    "count_flops",
    "crop_to",
    "from_unit",
    "init_output_bias",
    "init_weights",
    "minibatches",
    "weight_average",
    "pad_to_multiple",
    "psnr",
    "quantize_ste",
    "random_crops",
    "ssim",
    "to_unit",
]


# -- pixels <-> tensors ------------------------------------------------------
def to_unit(images: np.ndarray, bits: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8/uint16 (N, C, H, W) -> float32 tensor in [0, 1] (divided by 2^bits - 1)."""
    maxv = float(2**bits - 1)
    arr = images.astype(np.float32) / maxv
    return torch.from_numpy(arr).to(device)


def from_unit(x: torch.Tensor, bits: int, dtype: str | np.dtype) -> np.ndarray:
    """Float tensor in [0, 1] -> rounded integer array of `dtype` on 0..2^bits - 1."""
    maxv = float(2**bits - 1)
    out = torch.round(x.detach().float().clamp(0.0, 1.0) * maxv).cpu().numpy()
    return out.astype(dtype)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad H and W (replicate) up to a multiple of `multiple`; return the
    padded tensor and the original (H, W) for `crop_to`."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x, (h, w)


def crop_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return x[..., : size[0], : size[1]]


def quantize_ste(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Round x in [0, 1] to `levels` steps with a straight-through gradient."""
    q = torch.round(x.clamp(0, 1) * (levels - 1)) / (levels - 1)
    return x + (q - x).detach()


# -- layers ------------------------------------------------------------------
def conv(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Conv2d:
    """A 'same'-padded conv (reflection padding is left to callers that want it)."""
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)


class ResBlock(nn.Module):
    """conv-norm-relu-conv-norm + skip, the CycleGAN/ResNet generator block."""

    def __init__(self, channels: int, norm: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3)]
        if norm:
            layers.append(nn.InstanceNorm2d(channels, affine=True))
        layers += [nn.ReLU(inplace=True), nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3)]
        if norm:
            layers.append(nn.InstanceNorm2d(channels, affine=True))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def init_output_bias(layer: nn.Module, x: torch.Tensor, *, logit: bool, repeat: int = 1) -> None:
    """Start a decoder's last layer at the per-channel mean of the data
    (through the logit when a sigmoid follows); `repeat` for a following
    PixelShuffle. Short trainings then start from a sensible image."""
    mean = x.float().mean(dim=(0, 2, 3)).clamp(1e-4, 1 - 1e-4)
    value = torch.log(mean / (1 - mean)) if logit else mean
    with torch.no_grad():
        layer.bias.copy_(value.repeat_interleave(repeat).to(layer.bias.device))


def init_weights(module: nn.Module, seed: int) -> None:
    """Key-seeded initialisation: the same seed gives the same weights.

    Conv weights ~ N(0, gain^2 / fan_in) (Kaiming-like), biases 0, norm
    scales 1. The seed comes from `encryption.keys.derive_seed`.
    """
    gen = torch.Generator().manual_seed(seed % (2**63))
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
                fan_in = (
                    m.weight[0].numel()
                    if not isinstance(m, nn.ConvTranspose2d)
                    else (m.weight.shape[0] * m.weight[0, 0].numel())
                )
                std = math.sqrt(2.0 / max(fan_in, 1))
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * std)
                if m.bias is not None:
                    m.bias.zero_()
            elif (
                isinstance(m, nn.InstanceNorm2d | nn.BatchNorm2d | nn.GroupNorm)
                and m.weight is not None
            ):
                m.weight.fill_(1.0)
                m.bias.zero_()


# -- metrics on [0, 1] tensors -------------------------------------------------
def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean-over-batch MSE turned into PSNR (MAX = 1)."""
    mse = torch.mean((x.float() - y.float()) ** 2).item()
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


def ssim(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean SSIM of [0, 1] tensors: `encryption.metrics.fidelity.ssim_torch`, the
    one SSIM of the project (checked against scikit-image), with data range 1
    and in float64; NaN for images under its 11 x 11 window."""
    if min(x.shape[-2:]) < SSIM_WIN:
        return float("nan")
    return float(ssim_torch(x.double(), y.double(), 1.0, reduction="mean"))


# -- training helpers --------------------------------------------------------
class TrainClock:
    """Stops training at `epochs` or when `time_limit_s` has passed: wall-clock
    seconds, or with `cpu` this process's CPU seconds (all threads), a budget
    that other programs' load on a shared machine does not shrink."""

    def __init__(self, time_limit_s: float, cpu: bool = False) -> None:
        self._now = time.process_time if cpu else time.perf_counter
        self.start = self._now()
        self.limit = float(time_limit_s)

    @property
    def elapsed(self) -> float:
        return self._now() - self.start

    def expired(self) -> bool:
        return self.limit > 0 and self.elapsed > self.limit


# Training options every TorchEncryptor has (a method's `defaults` may override them).
TRAINING_DEFAULTS: dict[str, Any] = {
    "patience": 4,  # checks without a 1 % better validation loss before the LR drops / fit ends
    "lr_drops": 2,  # learning-rate drops (each 5x) before a plateau ends the fit
    "val_images": 32,  # most images held out for validation (at most an eighth of the set)
    "time_clock": "wall",  # time_limit_s counts "wall" seconds or this process's "cpu" seconds
    "ema": 0.999,  # decay of the weight average that is validated and kept (0: the last weights)
}
CHECK_STEPS = 50  # a convergence check every epoch, or every so many optimiser steps
WARMUP_STEPS = 100  # the learning rates ramp up linearly from a tenth over these steps


def latent_codec_defaults(infer_batch: int, **losses: Any) -> dict[str, Any]:
    """The `defaults` of the convolutional latent codecs (aae-scramble,
    learned-codec-aes): one fit budget, crop and network width, the method's
    own loss options (`losses`), then its time limit, device and inference batch."""
    return {
        "epochs": 300,  # an upper bound: the convergence criterion or time limit ends the fit
        "min_steps": 30,
        "batch_size": 8,
        "crop": 48,
        "lr": 2e-3,
        "nf": 32,
        "latent_per_channel": 8,
        **losses,
        "time_limit_s": 240.0,
        "device": "cpu",
        "infer_batch": infer_batch,
    }


class Convergence:
    """The convergence criterion: a validation loss (lower is better) must
    improve on the best so far by `rel_tol` (1 %, about 0.04 dB of PSNR) to
    count. After `patience` checks without, the learning rate drops (`update`
    says "drop"; also once, early, when most of the time budget is spent, so a
    fit cut by its time limit still ends at a low rate); after `lr_drops`
    drops, `patience` more checks without improvement end the fit ("stop").
    Keeps a copy of the best weights (`restore`)."""

    def __init__(self, patience: int, lr_drops: int, rel_tol: float = 0.01) -> None:
        self.patience, self.lr_drops, self.rel_tol = max(1, patience), max(0, lr_drops), rel_tol
        self.best = math.inf  # lowest loss seen: its weights are kept
        self.anchor = math.inf  # loss at the last improvement that counted
        self.best_state: dict[str, torch.Tensor] | None = None
        self.waited = 0
        self.drops = 0

    def update(self, loss: float, module: nn.Module | None = None, late: bool = False) -> str:
        """'better', 'wait', 'drop' (lower the learning rate) or 'stop'."""
        if loss < self.best:
            self.best = loss
            if module is not None:
                self.best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        improved = loss < self.anchor * (1 - self.rel_tol) or (
            math.isinf(self.anchor) and loss < self.anchor
        )
        if improved:
            self.anchor, self.waited = loss, 0
        else:
            self.waited += 1
        if late and self.drops == 0 and self._drop():
            return "drop"
        if improved:
            return "better"
        if self.waited < self.patience:
            return "wait"
        return "drop" if self._drop() else "stop"

    def _drop(self) -> bool:
        if self.drops >= self.lr_drops:
            return False
        self.drops += 1
        self.waited = 0
        return True

    def restore(self, module: nn.Module) -> None:
        """Load the best-validated weights back into `module` (if any were kept)."""
        if self.best_state is not None:
            module.load_state_dict(self.best_state)


def weight_average(module: nn.Module, decay: float) -> nn.Module | None:
    """An exponential moving average of `module`'s weights (torch's AveragedModel),
    its decay warmed up as min(decay, (1 + n) / (10 + n)) after n updates so a
    short fit is not dominated by its first weights; None for decay 0.

    Adversarial training moves the weights noisily from step to step; their
    average is a smoother, usually better model (Polyak averaging)."""
    if decay <= 0:
        return None

    def ema(averages: list, currents: list, n: torch.Tensor) -> None:
        d = min(decay, (1.0 + float(n)) / (10.0 + float(n)))  # one read of n per update
        for average, current in zip(averages, currents, strict=True):
            if average.is_floating_point():
                average.lerp_(current, 1.0 - d)
            else:
                average.copy_(current)

    from torch.optim.swa_utils import AveragedModel

    return AveragedModel(module, multi_avg_fn=ema, use_buffers=True)


def minibatches(n: int, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Shuffled index batches covering 0..n-1 once."""
    order = torch.randperm(n, generator=gen)
    for i in range(0, n, batch_size):
        yield order[i : i + batch_size]


def random_crops(x: torch.Tensor, crop: int, gen: torch.Generator) -> torch.Tensor:
    """One random crop of side min(crop, H, W) per image (same offset per batch)."""
    h, w = x.shape[-2:]
    ch, cw = min(crop, h), min(crop, w)
    if (ch, cw) == (h, w):
        return x
    top = int(torch.randint(0, h - ch + 1, (1,), generator=gen))
    left = int(torch.randint(0, w - cw + 1, (1,), generator=gen))
    return x[..., top : top + ch, left : left + cw]


def count_flops(fn, *args) -> int:  # noqa: ANN001 - any callable on tensors
    """FLOPs (2 x MACs for convs/matmuls) of one call, by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        fn(*args)
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class Training:
    """What `TorchEncryptor._train` did: its clock, the epochs run, the fit curve,
    why it stopped and the budget it had."""

    clock: TrainClock
    epochs: int
    curve: tuple[dict[str, Any], ...]
    stopped: str
    budget: dict[str, Any]


# -- a base for torch-backed encryptors ----------------------------------------
class TorchEncryptor(Encryptor):
    """Common plumbing of the learned methods: options with presets, the
    "fit first" guard, state_dict (config + weights + extra tensors) and
    batched inference. Subclasses set `defaults` (option -> default),
    optionally `presets`, and implement `_build(channels)` and `fit` (through
    `_start_fit` and the shared loop `_train`).
    """

    learned = True
    defaults: ClassVar[dict[str, Any]] = {}
    presets: ClassVar[dict[str, dict[str, Any]]] = {"default": {}}

    def __init__(self, key: bytes | None = None, **config: Any) -> None:
        preset = config.pop("preset", "default")
        if preset not in self.presets:
            raise ValueError(
                f"{self.name}: unknown preset {preset!r}; valid presets: {', '.join(self.presets)}"
            )
        opts = {**TRAINING_DEFAULTS, **self.defaults, **self.presets[preset]}
        for name in [k for k in config if k in opts]:
            value = config.pop(name)
            want = type(opts[name])
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, want) or isinstance(value, bool) != isinstance(
                opts[name], bool
            ):
                raise TypeError(
                    f"{self.name}: option {name} must be {want.__name__}, got {value!r}"
                )
            opts[name] = value
        super().__init__(key=key, **config)  # rejects whatever is left
        self.config: dict[str, Any] = {**opts, "preset": preset}
        self.channels: int | None = None
        # The intensity scale the networks were trained on (2^fit_bits - 1):
        # inputs are always scaled by it, whatever `bits` an encrypt call says.
        self.fit_bits = 8
        self.nets: nn.ModuleDict | None = None
        self._views: dict[str, nn.Module] = {}

    # -- subclasses ----------------------------------------------------------
    def _build(self, channels: int) -> nn.ModuleDict:
        raise NotImplementedError

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        return None

    # -- shared ----------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return torch.device(self.config.get("device", "cpu"))

    def _require_fitted(self, channels: int | None = None) -> nn.ModuleDict:
        if self.nets is None:
            raise RuntimeError(
                f"{self.name}: call fit() or load_state_dict() first (no trained weights)"
            )
        if channels is not None and channels != self.channels:
            raise ValueError(
                f"{self.name}: trained for {self.channels} channel(s), got images with {channels}"
            )
        return self.nets

    def _fresh_nets(self, channels: int) -> nn.ModuleDict:
        nets = self._build(channels)
        init_weights(nets, derive_seed(self.key, f"{self.name}/init"))
        self.channels = channels
        self.nets = nets.to(self.device)
        self._views = {}
        return self.nets

    def state_dict(self) -> dict[str, Any]:
        nets = self._require_fitted()
        weights = {k: v.detach().cpu().clone() for k, v in nets.state_dict().items()}
        return {
            "method": self.name,
            "config": dict(self.config),
            "channels": self.channels,
            "fit_bits": self.fit_bits,
            "weights": weights,
            **self._extra_state(),
            **({"fit_report": self.fit_report.as_dict()} if self.fit_report else {}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for field_name in ("method", "config", "channels", "fit_bits", "weights"):
            if field_name not in state:
                raise ValueError(f"{self.name}: state is missing {field_name!r}")
        if state["method"] != self.name:
            raise ValueError(f"{self.name}: state was saved by {state['method']!r}")
        self.config = {**self.config, **{k: v for k, v in state["config"].items() if k != "device"}}
        nets = self._build(int(state["channels"]))
        nets.load_state_dict(state["weights"])
        self.channels = int(state["channels"])
        self.fit_bits = int(state["fit_bits"])
        self.nets = nets.to(self.device).eval()
        self._views = {}
        self._load_extra_state(state)
        # states written before fit reports were kept have none
        report = state.get("fit_report")
        self.fit_report = FitReport.from_dict(report) if isinstance(report, dict) else None

    def _infer(self, name: str) -> nn.Module:
        """Network `name` for inference, in its fastest equivalent CPU form
        (`encryption.inference`); built once per fit or load."""
        if name not in self._views:
            self._views[name] = inference_view(self._require_fitted()[name])
        return self._views[name]

    def _start_fit(
        self, images: np.ndarray, bits: int | None, options: dict[str, Any]
    ) -> tuple[torch.Tensor, int, nn.ModuleDict]:
        """Checks and scales the fit images and builds fresh key-seeded networks."""
        reject_fit_options(self.name, options)
        x_all, bits = self._fit_images(images, bits)
        return x_all, bits, self._fresh_nets(x_all.shape[1])

    def _batch_generator(self) -> torch.Generator:
        """The key-seeded generator of minibatches, crops and training noise."""
        return torch.Generator().manual_seed(derive_seed(self.key, f"{self.name}/batches") % 2**63)

    def _split_validation(self, x_all: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(training images, validation images): `val_images` of the set, at most
        an eighth of it and none under 16 images, held out (chosen by the key)
        for the convergence criterion."""
        n = len(x_all)
        n_val = min(int(self.config["val_images"]), n // 8) if n >= 16 else 0
        if n_val < 2:
            return x_all, None
        seed = derive_seed(self.key, f"{self.name}/validation") % 2**63
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(x_all.device)
        return x_all[order[n_val:]], x_all[order[:n_val]]

    def _train(
        self,
        x_all: torch.Tensor,
        step: Callable[[torch.Tensor], float],
        gen: torch.Generator,
        multiple: int,
        *,
        optimizers: tuple[torch.optim.Optimizer, ...] = (),
        validate: Callable[[torch.Tensor], dict[str, float]] | None = None,
    ) -> Training:
        """The shared training loop: `step(batch) -> loss` on key-shuffled minibatches
        of random `crop`-px crops (padded to a multiple of `multiple`) of the
        training part of `x_all`, up to `epochs` passes and `time_limit_s`.

        Every epoch, or every `CHECK_STEPS` optimiser steps on small sets,
        `validate(held-out images)` gives {"loss": lower is better, "psnr_db",
        ...} under no_grad with the networks in eval mode (without a hold-out,
        under 16 images, the mean training loss of the check stands in), and
        its PSNR on training images is recorded too; `Convergence`
        turns it into learning-rate drops (5x, on every optimiser in
        `optimizers`) and the stop. What is validated and kept is the moving
        average of the weights (`ema`, `weight_average`); the best-validated
        weights are kept; the networks end in eval mode. Each check is a point
        of the fit curve."""
        c = self.config
        nets = self._require_fitted()
        x_train, x_val = self._split_validation(x_all)
        if c["time_clock"] not in ("wall", "cpu"):
            raise ValueError(
                f"{self.name}: time_clock must be 'wall' or 'cpu', got {c['time_clock']!r}"
            )
        clock = TrainClock(c["time_limit_s"], cpu=c["time_clock"] == "cpu")
        max_epochs = self._epochs(len(x_train))
        per_epoch = -(-len(x_train) // max(1, int(c["batch_size"])))
        check_every = max(1, -(-CHECK_STEPS // per_epoch))
        monitor = Convergence(int(c["patience"]), int(c["lr_drops"]))
        average = weight_average(nets, float(c["ema"]))
        curve: list[dict[str, Any]] = []
        losses: list[float] = []
        steps, done, stopped = 0, 0, "epochs"
        base_lrs = [[g["lr"] for g in opt.param_groups] for opt in optimizers]
        for epoch in range(1, max_epochs + 1):
            nets.train()
            for idx in minibatches(len(x_train), c["batch_size"], gen):
                x, _ = pad_to_multiple(random_crops(x_train[idx], c["crop"], gen), multiple)
                if WARMUP_STEPS and steps <= WARMUP_STEPS:
                    ramp = 0.1 + 0.9 * steps / WARMUP_STEPS
                    for opt, lrs in zip(optimizers, base_lrs, strict=True):
                        for group, lr in zip(opt.param_groups, lrs, strict=True):
                            group["lr"] = lr * ramp
                losses.append(float(step(x)))
                if average is not None:
                    average.update_parameters(nets)
                steps += 1
                if clock.expired():
                    break
            done = epoch
            if epoch % check_every and epoch < max_epochs and not clock.expired():
                continue
            nets.eval()
            point: dict[str, Any] = {
                "epoch": epoch,
                "steps": steps,
                "seconds": round(clock.elapsed, 3),
                "train_loss": float(np.mean(losses)) if losses else math.nan,
                "lr": optimizers[0].param_groups[0]["lr"] if optimizers else math.nan,
            }
            losses = []
            # the averaged weights are the ones validated and kept (validate uses self.nets)
            judged = nets if average is None else average.module.eval()
            if validate is not None:
                self.nets = judged
                try:
                    with torch.no_grad():
                        if x_val is not None:
                            val = validate(x_val)
                            point.update({f"val_{k}": float(v) for k, v in val.items()})
                        # the same measure on (up to val_images of) the training images
                        probe = x_train[: max(2, int(c["val_images"]))]
                        point["fit_psnr_db"] = float(validate(probe).get("psnr_db", math.nan))
                finally:
                    self.nets = nets
            score = point.get("val_loss", point["train_loss"])
            late = clock.limit > 0 and clock.elapsed > 0.75 * clock.limit
            action = monitor.update(score, judged, late=late)
            point["action"] = action
            curve.append(point)
            if clock.expired():
                stopped = "time limit"
                break
            if action == "drop":
                base_lrs = [[lr * 0.2 for lr in lrs] for lrs in base_lrs]
                for opt in optimizers:
                    for group in opt.param_groups:
                        group["lr"] *= 0.2
            elif action == "stop" and steps >= int(c.get("min_steps", 0)):
                stopped = "converged"
                break
        if monitor.best_state is None and average is not None:
            nets.load_state_dict(average.module.state_dict())
        monitor.restore(nets)
        nets.eval()
        self._views = {}
        budget = {
            "epochs": max_epochs,
            "time_limit_s": float(c["time_limit_s"]),
            "time_clock": c["time_clock"],
            "patience": int(c["patience"]),
            "lr_drops": int(c["lr_drops"]),
            "ema": float(c["ema"]),
            "train_images": len(x_train),
            "val_images": 0 if x_val is None else len(x_val),
        }
        return Training(clock, done, tuple(curve), stopped, budget)

    def _epochs(self, n_images: int) -> int:
        """Passes to train: `epochs`, raised so that at least `min_steps`
        optimiser steps run (a tiny fit set still trains to something)."""
        per_epoch = -(-n_images // max(1, int(self.config["batch_size"])))
        return max(
            int(self.config["epochs"]), -(-int(self.config.get("min_steps", 0)) // per_epoch)
        )

    def _chunks(self, n: int) -> Iterator[slice]:
        step = max(1, int(self.config.get("infer_batch", 64)))
        for i in range(0, n, step):
            yield slice(i, min(n, i + step))

    def _quantised_roundtrip(
        self, x_all: torch.Tensor, levels: int, multiple: int, live: bool = False
    ) -> torch.Tensor:
        """dec(enc(x) quantised to `levels` values) on [0, 1], in chunks, each padded
        to a `multiple` of its size; `live`: with the training networks "enc" and
        "dec" (during fit), else with their inference views."""
        if live:
            enc, dec = self.nets["enc"], self.nets["dec"]
        else:
            enc, dec = self._infer("enc"), self._infer("dec")
        out = []
        with torch.no_grad():
            for sl in self._chunks(len(x_all)):
                x, size = pad_to_multiple(x_all[sl], multiple)
                code = torch.round(enc(x) * (levels - 1)) / (levels - 1)
                out.append(crop_to(dec(code), size))
        return torch.cat(out)

    def _fit_images(self, images: np.ndarray, bits: int | None) -> tuple[torch.Tensor, int]:
        images, bits = check_images(images, bits)
        self.fit_bits = bits
        return to_unit(images, bits, self.device), bits

    def _to_net(self, images: np.ndarray) -> torch.Tensor:
        """Images -> network input on the fit-time scale, clipped to [0, 1]."""
        return to_unit(images, self.fit_bits, self.device).clamp_(0.0, 1.0)

    def _from_net(self, x: torch.Tensor, bits: int, dtype: str | np.dtype) -> np.ndarray:
        """Network output on the fit-time scale -> integers clipped to 0..2^bits - 1."""
        out = from_unit(x, self.fit_bits, np.int64)
        return np.clip(out, 0, 2**bits - 1).astype(dtype)

    def _report(self, training: Training, x: torch.Tensor, y: torch.Tensor) -> FitReport:
        """The FitReport of a fit (PSNR/SSIM of `y` against the fit images `x`),
        kept as `fit_report`."""
        metrics = {"psnr_db": psnr(x, y), "ssim": ssim(x, y)}
        checked = [p for p in training.curve if "val_psnr_db" in p]
        if checked:  # the point whose weights were kept (lowest validation loss)
            metrics["val_psnr_db"] = min(checked, key=lambda p: p["val_loss"])["val_psnr_db"]
        self.fit_report = FitReport(
            seconds=training.clock.elapsed,
            epochs=training.epochs,
            images=int(x.shape[0]),
            metrics=metrics,
            curve=training.curve,
            stopped=training.stopped,
            budget=training.budget,
        )
        return self.fit_report
