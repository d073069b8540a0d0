"""Small torch building blocks shared by the learned encryptors.

Kept deliberately small and stable: pixel scaling, padding to a multiple
of a network's downsampling factor, key-seeded weight initialisation,
residual blocks, PSNR/SSIM on [0, 1] tensors, minibatch sampling under a
time budget, and an analytic FLOP count. No module-level mutable state.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
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
    """Stops training at `epochs` or when `time_limit_s` has passed."""

    def __init__(self, time_limit_s: float) -> None:
        self.start = time.perf_counter()
        self.limit = float(time_limit_s)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def expired(self) -> bool:
        return self.limit > 0 and self.elapsed > self.limit


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
        opts = {**self.defaults, **self.presets[preset]}
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

    def _total_steps(self, n_images: int) -> int:
        """Optimiser steps a full fit takes (for learning-rate schedules)."""
        return max(1, self._epochs(n_images) * -(-n_images // int(self.config["batch_size"])))

    def _train(
        self,
        x_all: torch.Tensor,
        step: Callable[[torch.Tensor], None],
        gen: torch.Generator,
        multiple: int,
    ) -> tuple[TrainClock, int]:
        """The shared training loop: `step(batch)` on key-shuffled minibatches of
        random `crop`-px crops (padded to a multiple of `multiple`), for `epochs`
        passes or until `time_limit_s`. Returns the clock and the passes done;
        leaves the networks in eval mode."""
        c = self.config
        nets = self._require_fitted()
        clock = TrainClock(c["time_limit_s"])
        nets.train()
        done = 0
        for _epoch in range(self._epochs(len(x_all))):
            for idx in minibatches(len(x_all), c["batch_size"], gen):
                x, _ = pad_to_multiple(random_crops(x_all[idx], c["crop"], gen), multiple)
                step(x)
                if clock.expired():
                    break
            done += 1
            if clock.expired():
                break
        nets.eval()
        return clock, done

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

    def _report(
        self, clock: TrainClock, epochs: int, x: torch.Tensor, y: torch.Tensor
    ) -> FitReport:
        return FitReport(
            seconds=clock.elapsed,
            epochs=epochs,
            images=int(x.shape[0]),
            metrics={"psnr_db": psnr(x, y), "ssim": ssim(x, y)},
        )
