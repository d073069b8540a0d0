"""encryption.inference: every equivalent form of a convolution computes the
same function as the layer, and a view equals its module."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from encryption.inference import FastConv, choose_form, chosen_forms, inference_view
from encryption.methods.deepedn import resnet_generator
from encryption.methods.learned_codec_aes import _synthesis

LAYERS = [
    nn.Conv2d(8, 1, 7),
    nn.Conv2d(8, 3, 5, stride=2, padding=2),
    nn.Conv2d(1, 8, 7, padding=3, bias=False),
    nn.Conv2d(16, 32, 3, stride=2, padding=1),
    nn.ConvTranspose2d(32, 1, 5, 2, 2, output_padding=1),
    nn.ConvTranspose2d(16, 8, 3, 2, 1, output_padding=1),
]


@pytest.mark.parametrize("layer", LAYERS, ids=lambda m: repr(m))
def test_every_form_equals_the_layer(layer: nn.Module) -> None:
    torch.manual_seed(0)
    x = torch.randn(3, layer.in_channels, 20, 18)
    fast = FastConv(layer)
    with torch.inference_mode():
        want = layer(x)
        forms = fast.forms()
        for name, form in forms.items():
            got = form(x)
            assert got.shape == want.shape, name
            assert got.is_contiguous(), name
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=name)
    # the few-output forms are offered where they apply
    if isinstance(layer, nn.ConvTranspose2d):
        assert "gemm" in forms
    elif layer.out_channels <= 4:
        assert "channel-sum" in forms


def test_view_equals_module_and_is_the_same_in_every_instance() -> None:
    torch.manual_seed(1)
    for net, x in [
        (resnet_generator(1, 8, 2).eval(), torch.rand(5, 1, 32, 32)),
        (resnet_generator(4, 8, 1).eval(), torch.rand(2, 4, 16, 24)),
        (_synthesis(1, 16, 8).eval(), torch.randn(4, 8, 8, 8) * 3),
    ]:
        view, again = inference_view(net), inference_view(net)
        with torch.inference_mode():
            out = view(x)
            torch.testing.assert_close(out, net(x), rtol=1e-5, atol=1e-5)
            # forms follow fixed rules, not timings: two instances agree to the bit
            assert torch.equal(out, again(x))
        convs = [m for m in net.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
        assert sum(chosen_forms(view).values()) == len(convs)
        assert [m.form for m in view.modules() if isinstance(m, FastConv)] == [
            choose_form(c) for c in convs
        ]
        assert all(not p.requires_grad for p in view.parameters())


def test_rules_pick_the_measured_fast_forms() -> None:
    assert choose_form(nn.Conv2d(8, 1, 7)) == "channel-sum"
    assert choose_form(nn.ConvTranspose2d(32, 1, 5, 2, 2, 1)) == "gemm"
    assert choose_form(nn.ConvTranspose2d(32, 4, 5, 2, 2, 1)) == "gemm"
    assert choose_form(nn.ConvTranspose2d(16, 8, 3, 2, 1, 1)) == "channels-last"
    assert choose_form(nn.Conv2d(1, 8, 7)) == "channels-last"
    assert choose_form(nn.Conv2d(1, 32, 5, 2, 2)) == "plain"
    assert choose_form(nn.Conv2d(32, 32, 3)) == "plain"
    assert choose_form(nn.Conv2d(8, 8, 3, groups=8)) == "plain"


def test_view_is_a_copy() -> None:
    net = _synthesis(1, 8, 4).eval()
    view = inference_view(net)
    x = torch.randn(1, 4, 4, 4)
    with torch.inference_mode():
        before = view(x).clone()
        net[0].weight.mul_(2.0)  # changing the module does not change the view
        torch.testing.assert_close(view(x), before)
