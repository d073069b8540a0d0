"""Equivalent, faster CPU forms of trained networks, for inference only.

oneDNN, which runs torch's CPU convolutions, reaches ~150 GFLOP/s here on a
64-channel 3x3 conv but only 8-20 GFLOP/s on the layers every image network
has at its ends (one input or one output channel, few-channel transposed
convs), and which memory layout is fast changes from shape to shape.
Measured on 2 cores at 128 px, batch 32:

- Conv2d(8 -> 1, 7x7): 31-47 ms as is, 6.5-8 ms as a depthwise conv (one
  filter per input and output channel) plus a sum over input channels, in
  channels-last (tried up to 4 output channels: the 4 MRI modalities).
- ConvTranspose2d(32 -> 1, 5x5, stride 2): 18-21 ms as is, 4-6 ms through
  torch's GEMM-based `slow_conv_transpose2d`.
- ConvTranspose2d(16 -> 8, 3x3, stride 2): 15-36 ms as is, 4-7 ms in
  channels-last; but Conv2d(1 -> 32, 5x5, stride 2) is 2x SLOWER there.

So, as cuDNN's benchmark mode does on GPUs, `inference_view(module)` times
the equivalent forms of each convolution on the first input of each shape
and keeps the fastest (`TunedConv`); between layers tensors stay in the
ordinary layout, so norms and activations run as before. Every form
computes the same function (tests compare with the module to float
rounding); which one wins may differ between processes, so two processes
may differ in the last float bit, never more.

The view is a copy (weights copied): rebuild it when the weights change.
On other devices the module is returned as is: these are CPU facts.
Training keeps the plain module.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

_CL = torch.channels_last
_FEW = 4  # output channels up to which a depthwise conv + channel sum is tried
Form = Callable[[torch.Tensor], torch.Tensor]


class TunedConv(nn.Module):
    """One Conv2d or ConvTranspose2d, run in its fastest equivalent form per input shape."""

    def __init__(self, conv: nn.Conv2d | nn.ConvTranspose2d) -> None:
        super().__init__()
        self.conv = conv
        self.register_buffer("weight_cl", conv.weight.detach().contiguous(memory_format=_CL))
        self.choice: dict[tuple[int, ...], str] = {}

    def forms(self) -> dict[str, Form]:
        c = self.conv
        transposed = isinstance(c, nn.ConvTranspose2d)
        forms: dict[str, Form] = {"plain": c}

        def channels_last(x: torch.Tensor) -> torch.Tensor:
            x = x.contiguous(memory_format=_CL)
            if transposed:
                out = F.conv_transpose2d(
                    x, self.weight_cl, c.bias, c.stride, c.padding, c.output_padding,
                    c.groups, c.dilation,
                )  # fmt: skip
            else:
                out = F.conv2d(x, self.weight_cl, c.bias, c.stride, c.padding, c.dilation, c.groups)
            return out.contiguous()

        forms["channels-last"] = channels_last
        if c.out_channels <= _FEW and c.groups == 1 and not transposed:
            # (out, in, k, k) -> (in * out, 1, k, k), grouped by input channel
            w_dw = c.weight.detach().transpose(0, 1).reshape(-1, 1, *c.kernel_size).contiguous()

            def channel_sum(x: torch.Tensor) -> torch.Tensor:
                n_in, n_out = c.in_channels, c.out_channels
                x = x.contiguous(memory_format=_CL)
                y = F.conv2d(x, w_dw, None, c.stride, c.padding, c.dilation, groups=n_in)
                y = y.view(y.shape[0], n_in, n_out, *y.shape[2:]).sum(1)
                return y if c.bias is None else y + c.bias.view(1, -1, 1, 1)

            forms["channel-sum"] = channel_sum
        if transposed and c.groups == 1:

            def gemm(x: torch.Tensor) -> torch.Tensor:
                return torch.ops.aten.slow_conv_transpose2d(
                    x.contiguous(), c.weight, list(c.kernel_size), c.bias,
                    list(c.stride), list(c.padding), list(c.output_padding), list(c.dilation),
                )  # fmt: skip

            forms["gemm"] = gemm
        return forms

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        forms = self.forms()
        key = tuple(x.shape[1:])
        if key not in self.choice:
            self.choice[key] = _fastest(forms, x)
        return forms[self.choice[key]](x)


def _fastest(forms: dict[str, Form], x: torch.Tensor, runs: int = 3) -> str:
    """The form with the shortest best-of-`runs` time (the minimum resists load spikes)."""
    best, best_t = "plain", float("inf")
    for name, form in forms.items():
        form(x)  # warm-up: oneDNN builds its kernel on the first call
        for _ in range(runs):
            start = time.perf_counter()
            form(x)
            elapsed = time.perf_counter() - start
            if elapsed < best_t:
                best, best_t = name, elapsed
    return best


def _swap(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d) and module.padding_mode == "zeros":
        return TunedConv(module)
    for name, child in module.named_children():
        setattr(module, name, _swap(child))
    return module


def inference_view(module: nn.Module) -> nn.Module:
    """A copy of `module` whose convolutions run in their fastest equivalent CPU form."""
    param = next(module.parameters(), None)
    if param is not None and param.device.type != "cpu":
        return module.eval()
    view = _swap(copy.deepcopy(module)).eval()
    for p in view.parameters():
        p.requires_grad_(False)
    return view


def chosen_forms(view: nn.Module) -> dict[str, int]:
    """How many (layer, input shape) pairs chose each form, for reports."""
    counts: dict[str, int] = {}
    for m in view.modules():
        if isinstance(m, TunedConv):
            for form in m.choice.values():
                counts[form] = counts.get(form, 0) + 1
    return counts
