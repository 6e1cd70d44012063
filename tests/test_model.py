"""The FCN family: the seed's exact network, bilinear init, any input size, weights loading."""

import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file
from torch import nn

from fcn_dist import ModelConfig, build_model
from fcn_dist.model import PretrainedWeightsError, bilinear_kernel, fold_batch_norms


def _seed_net(num_classes: int = 21) -> nn.Sequential:
    """The seed document's network, built exactly as its code does."""
    pretrained_net = torchvision.models.resnet18(weights=None)
    net = nn.Sequential(*list(pretrained_net.children())[:-2])
    net.add_module("final_conv", nn.Conv2d(512, num_classes, kernel_size=1))
    net.add_module("transpose_conv", nn.ConvTranspose2d(num_classes, num_classes, kernel_size=64, padding=16, stride=32))
    return net


def _seed_bilinear_kernel(in_channels, out_channels, kernel_size):
    """Verbatim from the seed."""
    factor = (kernel_size + 1) // 2
    if kernel_size % 2 == 1:
        center = factor - 1
    else:
        center = factor - 0.5
    og = (torch.arange(kernel_size).reshape(-1, 1), torch.arange(kernel_size).reshape(1, -1))
    filt = (1 - torch.abs(og[0] - center) / factor) * (1 - torch.abs(og[1] - center) / factor)
    weight = torch.zeros((in_channels, out_channels, kernel_size, kernel_size))
    weight[range(in_channels), range(out_channels), :, :] = filt
    return weight


def test_fcn32s_resnet18_is_the_seed_network_layer_for_layer():
    model = build_model(ModelConfig(pretrained="none"))
    assert sum(p.numel() for p in model.parameters()) == 12_993_642
    seed = _seed_net()
    ours = list(model.backbone.children()) + [model.score, model.upsample]
    assert len(ours) == len(seed)
    for a, b in zip(ours, seed):
        assert type(a) is type(b)
        assert [p.shape for p in a.parameters()] == [p.shape for p in b.parameters()]
    assert (model.upsample.kernel_size, model.upsample.stride, model.upsample.padding) == ((64, 64), (32, 32), (16, 16))
    # Seed weights load into ours key-for-key (same order of modules and tensors).
    model.load_state_dict(dict(zip(model.state_dict().keys(), seed.state_dict().values())), strict=True)


def test_transposed_conv_starts_as_the_seed_bilinear_kernel():
    model = build_model(ModelConfig(pretrained="none"))
    weight = model.upsample.weight.detach()
    expected = _seed_bilinear_kernel(21, 21, 64)
    assert torch.equal(weight, expected)
    off_diagonal = weight.clone()
    off_diagonal[range(21), range(21)] = 0
    assert torch.count_nonzero(off_diagonal) == 0
    for k in (3, 4, 16, 64):
        assert torch.equal(bilinear_kernel(5, 5, k), _seed_bilinear_kernel(5, 5, k))


def test_bilinear_transposed_conv_matches_interpolate_on_a_photograph():
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image is in the test extra")
    photo = torch.from_numpy(np.ascontiguousarray(skimage_data.astronaut())).permute(2, 0, 1)[None].float() / 255
    conv = nn.ConvTranspose2d(3, 3, kernel_size=4, padding=1, stride=2, bias=False)
    conv.weight.data.copy_(bilinear_kernel(3, 3, 4))
    with torch.no_grad():
        ours = conv(photo)
    ref = F.interpolate(photo, scale_factor=2, mode="bilinear", align_corners=False)
    assert ours.shape == ref.shape == (1, 3, 1024, 1024)
    # pixels lie in [0, 1], so atol is relative to the largest; 4 taps with dyadic weights (1/16, 3/16, 9/16)
    # against a 0.25/0.75 lerp: a few roundings (1 ulp = 1.2e-7 measured, every ISA): 1e-5 (83 eps) leaves 80x
    assert torch.allclose(ours[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1], atol=1e-5, rtol=0)
    assert not torch.allclose(ours, ref, atol=1e-5)  # only the 1-pixel border differs


@pytest.mark.parametrize("arch", ["fcn32s", "fcn16s", "fcn8s"])
def test_output_size_equals_input_size_for_any_size(arch):
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, pretrained="none"))
    for h, w in [(320, 480), (321, 479), (97, 130), (500, 375)]:
        images = torch.randn(2, 3, h, w)
        logits = model(images)
        assert logits.shape == (2, 21, h, w)
        logits.mean().backward()
        assert model.backbone.conv1.weight.grad is not None
        model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("arch, backbone", [("fcn16s", "resnet34"), ("fcn8s", "resnet50")])
def test_skip_scores_start_at_zero_and_upsamplers_bilinear(arch, backbone):
    model = build_model(ModelConfig(arch=arch, backbone=backbone, pretrained="none"))
    assert torch.count_nonzero(model.score_layer3.weight) == 0
    assert torch.equal(model.up2_32.weight.detach(), bilinear_kernel(21, 21, 4))
    stride = 16 if arch == "fcn16s" else 8
    assert model.upsample.stride == (stride, stride)
    assert torch.equal(model.upsample.weight.detach(), bilinear_kernel(21, 21, 2 * stride))
    if arch == "fcn8s":
        assert torch.count_nonzero(model.score_layer2.weight) == 0


def test_fixed_upsampling_is_frozen():
    model = build_model(ModelConfig(arch="fcn8s", upsample="fixed", pretrained="none"))
    for layer in (model.upsample, model.up2_32, model.up2_16):
        assert layer.weight.requires_grad is False and layer.bias is None
    learnable = build_model(ModelConfig(pretrained="none"))
    assert learnable.upsample.weight.requires_grad is True


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_backbone_weights_load_exactly(tmp_path, suffix):
    torch.manual_seed(1)
    resnet = torchvision.models.resnet18(weights=None)
    path = tmp_path / f"backbone{suffix}"
    if suffix == ".pth":
        torch.save(resnet.state_dict(), path)
    else:
        save_file(resnet.state_dict(), str(path))
    model = build_model(ModelConfig(pretrained=str(path)))
    reference = resnet.state_dict()
    for key, tensor in model.backbone.state_dict().items():
        assert torch.equal(tensor, reference[key]), key


def test_bad_local_weights_fail_with_the_path(tmp_path):
    with pytest.raises(PretrainedWeightsError, match="missing.pth: file not found"):
        build_model(ModelConfig(pretrained=str(tmp_path / "missing.pth")))
    wrong = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), wrong)
    with pytest.raises(PretrainedWeightsError, match="not a resnet18 state dict"):
        build_model(ModelConfig(pretrained=str(wrong)))


def test_imagenet_offline_without_cache_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def no_network(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    expected_file = tmp_path / "torch_home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(PretrainedWeightsError) as err:
        build_model(ModelConfig(pretrained="imagenet"))
    msg = str(err.value)
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in msg
    assert f"put that file at {expected_file}" in msg


def test_imagenet_uses_the_torch_home_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("must not download"))
    torch.manual_seed(2)
    resnet = torchvision.models.resnet18(weights=None)
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(resnet.state_dict(), cache / "resnet18-f37072fd.pth")
    model = build_model(ModelConfig(pretrained="imagenet"))
    assert torch.equal(model.backbone.layer4[1].conv2.weight, resnet.layer4[1].conv2.weight)


@pytest.mark.parametrize("arch,backbone", [("fcn32s", "resnet18"), ("fcn8s", "resnet50")])
def test_folded_batch_norms_give_the_same_logits(arch, backbone):
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, backbone=backbone, pretrained="none"))
    with torch.no_grad():  # trained-looking statistics, so that a missed or wrong fold shows
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
        for m in model.modules():  # non-zero skip scores, so fcn8s's skip paths count too
            if isinstance(m, nn.Conv2d) and m.weight.abs().sum() == 0:
                m.weight.normal_(0, 0.01)
    model.train()
    fused = fold_batch_norms(model)
    assert model.training  # the original is left alone
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert not fused.training
    x = torch.randn(2, 3, 70, 100)
    with torch.no_grad():
        expected = model.eval()(x)
        got = fused(x)
    assert got.shape == expected.shape == (2, 21, 70, 100)
    # folding rounds each scaled weight once more and drops a pass; with kernels that differ by CPU, sums of up to
    # 4,608 terms (512 ch x 3x3) in 20-50 layers: ~eps*sqrt(K) = 8e-6 of the largest logit at most; measured
    # <= 2.3e-6 of it on every ISA tried: 3e-5 of it leaves 13x
    tol = 3e-5 * float(expected.abs().max())
    torch.testing.assert_close(got, expected, rtol=0, atol=tol)
    top2 = expected.topk(2, dim=1).values  # the classes fcn-eval reports: equal wherever the top-2 margin exceeds tol
    sure = top2[:, 0] - top2[:, 1] > tol
    assert sure.float().mean() > 0.99 and torch.equal(got.argmax(1)[sure], expected.argmax(1)[sure])
