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
  channels-last.
- Conv2d(1 -> 8, 7x7), a full-resolution input layer: 21 ms as is, 5-11
  ms in channels-last; but Conv2d(1 -> 32, 5x5, stride 2) is 2x slower
  there, and the inner 16- and 32-channel layers are fastest as they are.

So `inference_view(module)` runs each convolution in one of its equivalent
forms (`FastConv`), picked by fixed rules on the layer's configuration that
follow these measurements (`choose_form`). Not by timing each form on the
first input, as cuDNN's benchmark mode does: the forms round differently in
the last float bit, and a choice that varied with machine load would let two
instances of one key disagree (a reloaded deepedn decrypting differently,
learned-codec-aes's decoder recomputing another prediction than its
encoder). With fixed rules every instance on a machine computes the same
bits. Between layers tensors stay in the ordinary layout, so norms and
activations run as before. Every form computes the same function (tests
compare each with the layer to float rounding).

The view is a copy (weights copied): rebuild it when the weights change.
On other devices the module is returned as is: these are CPU facts.
Training keeps the plain module.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

_CL = torch.channels_last
_FEW = 4  # up to this many channels a layer counts as a few-channel end layer
Form = Callable[[torch.Tensor], torch.Tensor]


def choose_form(conv: nn.Conv2d | nn.ConvTranspose2d) -> str:
    """The form `FastConv` runs `conv` in (see the module docstring)."""
    transposed = isinstance(conv, nn.ConvTranspose2d)
    if conv.groups != 1:
        return "plain"
    if transposed:
        return "gemm" if conv.out_channels <= _FEW else "channels-last"
    if conv.out_channels == 1:
        return "channel-sum"
    if conv.in_channels <= _FEW and tuple(conv.stride) == (1, 1):
        return "channels-last"  # a full-resolution input layer (7x7, 1 -> 8: 2x faster)
    return "plain"


class FastConv(nn.Module):
    """One Conv2d or ConvTranspose2d, run in the equivalent form `choose_form` picks."""

    def __init__(self, conv: nn.Conv2d | nn.ConvTranspose2d) -> None:
        super().__init__()
        self.conv = conv
        self.register_buffer("weight_cl", conv.weight.detach().contiguous(memory_format=_CL))
        self.form = choose_form(conv)
        self._run = self.forms()[self.form]

    def forms(self) -> dict[str, Form]:
        """Every equivalent form offered for this layer, by name."""
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
        return self._run(x)


def _swap(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d) and module.padding_mode == "zeros":
        return FastConv(module)
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
    """How many convolutions of `view` run in each form, for reports."""
    counts: dict[str, int] = {}
    for m in view.modules():
        if isinstance(m, FastConv):
            counts[m.form] = counts.get(m.form, 0) + 1
    return counts
