"""The CPU upsampling fast path (2x2 conv + pixel shuffle) equals ``nn.ConvTranspose2d``.

``FCN.forward`` runs its final transposed conv through ``upsample_by_pixel_shuffle`` on CPU;
these tests show the values and all three gradients equal the plain layer's in fp32, stay within
bf16 rounding under bf16 autocast, and that the model really takes that path.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fcn_dist import ModelConfig, build_model
from fcn_dist.model import upsample_by_pixel_shuffle


def _layer(channels_in: int, channels_out: int, s: int, bias: bool = True) -> nn.ConvTranspose2d:
    torch.manual_seed(s)
    layer = nn.ConvTranspose2d(channels_in, channels_out, 2 * s, stride=s, padding=s // 2, bias=bias)
    with torch.no_grad():  # a dense kernel, not the diagonal bilinear one, so every tap is exercised
        layer.weight.normal_(0, 0.1)
        if bias:
            layer.bias.normal_(0, 1)
    return layer


def _forward_backward(fn, layer: nn.ConvTranspose2d, x: torch.Tensor, grad: torch.Tensor):
    layer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    out = fn(x)
    out.float().backward(grad)
    grads = [x.grad, layer.weight.grad] + ([layer.bias.grad] if layer.bias is not None else [])
    return out.detach(), grads


@pytest.mark.parametrize("s, bias", [(2, True), (8, False), (32, True)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fp32_values_and_gradients_equal_conv_transpose(s, bias, channels_last):
    torch.set_num_threads(1)
    layer = _layer(5, 3, s, bias)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, 5, 3, 4).contiguous(memory_format=fmt)
    grad = torch.randn(2, 3, 3 * s, 4 * s)
    ref, ref_grads = _forward_backward(layer, layer, x, grad)
    out, grads = _forward_backward(lambda t: upsample_by_pixel_shuffle(t, layer), layer, x, grad)
    assert out.shape == ref.shape == (2, 3, 3 * s, 4 * s)
    # both sum the same 20 products (5 ch x 2x2 taps) in another order: <= eps*K = 2.4e-6 of the largest value,
    # <= 3.1e-7 of it measured on every ISA tried; 1e-5 of it (+ rtol 1e-5) leaves >= 20x; a wrong tap is O(1)
    assert torch.allclose(out, ref, atol=1e-5 * float(ref.abs().max()), rtol=1e-5)
    assert len(grads) == len(ref_grads) == (3 if bias else 2)
    for got, want in zip(grads, ref_grads):
        assert got.shape == want.shape
        # gradients sum up to 24,576 terms (the bias: 2 x 96 x 128 pixels) in an order that differs by kernel:
        # ~eps*sqrt(K) = 1.9e-5 of the largest; <= 2e-6 of it measured on every ISA tried, 3e-5 of it leaves 15x
        assert torch.allclose(got, want, atol=3e-5 * float(want.abs().max()), rtol=1e-5), (got - want).abs().max()


def test_bf16_autocast_within_bf16_rounding_of_fp32():
    torch.set_num_threads(1)
    layer = _layer(21, 21, 32)
    x = torch.randn(2, 21, 3, 4)
    with torch.no_grad():
        ref = layer(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = upsample_by_pixel_shuffle(x, layer)
            plain = layer(x)
    assert out.dtype == plain.dtype == torch.bfloat16
    scale = ref.abs().max()
    # bf16 keeps 8 significant bits (eps 2**-7): rounding x, w (2 x 2**-9 of sum|x*w|) and the output bounds the
    # error by 0.016 of max|ref| here, in any fp32 summation order; 3.5e-3 measured on every ISA tried: 0.04 leaves 11x
    assert (out.float() - ref).abs().max() <= 0.04 * scale
    # both round the same bf16 inputs and differ in the output's last bit: 0 here, <= 1 ulp (5.2e-3) with
    # other kernels (AVX2); 0.04 allows 5 ulps at the top
    assert (out.float() - plain.float()).abs().max() <= 0.04 * scale


def test_other_transposed_convs_are_refused():
    x = torch.randn(1, 4, 3, 3)
    for layer in (nn.ConvTranspose2d(4, 4, 3, stride=2, padding=1),     # kernel not 2s
                  nn.ConvTranspose2d(4, 4, 6, stride=3, padding=1),     # s odd
                  nn.ConvTranspose2d(4, 4, 4, stride=2, padding=1, groups=2)):
        with pytest.raises(ValueError, match="not a 2s x 2s"):
            upsample_by_pixel_shuffle(x, layer)


@pytest.mark.parametrize("arch", ["fcn32s", "fcn8s"])
def test_model_on_cpu_takes_the_fast_path_and_matches_the_plain_layer(arch, monkeypatch):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, pretrained="none")).eval()
    with torch.no_grad():
        model.upsample.weight.add_(0.01 * torch.randn_like(model.upsample.weight))
    images = torch.randn(1, 3, 70, 100)  # not multiples of 32: padded, then cropped

    with torch.no_grad():
        model.head = "conv_transpose"  # the reference: the plain ConvTranspose2d head
        ref = model(images)
        model.head = "auto"
        inference = model(images)  # without autograd, auto takes the plain layer: the faster one
    calls = []
    monkeypatch.setattr(model.upsample, "forward", lambda *a: calls.append(1) or pytest.fail("slow path"))
    out = model(images).detach()  # with autograd (training) the fast path
    assert calls == []
    assert torch.equal(inference, ref)
    assert out.shape == ref.shape == (1, 21, 70, 100)
    # the heads sum the same 84 products (21 ch x 2x2 taps) in another order (autograd may pick other backbone
    # kernels too): ~eps*K = 1e-5 of the largest logit at worst, <= 8.1e-7 measured on every ISA tried: >= 20x
    assert torch.allclose(out, ref, atol=1e-5 * float(ref.abs().max()), rtol=1e-5)


def test_bf16_inference_on_cpu_takes_the_fast_path_fp32_inference_the_plain_layer():
    # On an AMX Xeon the bf16 forward of ConvTranspose2d(21, 21, 64, stride=32) took 0.9 s per
    # 384x512 image against 11 ms for the pixel-shuffle form (benchmarks/README.md), so auto must
    # not run the plain layer under bf16 autocast, with or without autograd.
    torch.set_num_threads(1)
    model = build_model(ModelConfig(arch="fcn32s", pretrained="none")).eval()
    calls = []
    model.upsample.register_forward_hook(lambda *a: calls.append(1))
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        model(images)
        assert calls == [1]  # fp32, no autograd: the plain layer
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(images)
    assert calls == [1] and out.shape == (1, 21, 64, 96)
