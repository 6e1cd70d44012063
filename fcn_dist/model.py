"""FCN models (Long et al.; the d2l.ai chapter's network) on torchvision ResNet trunks.

``fcn32s`` + ``resnet18`` is the seed's network layer for layer: the ResNet-18 children
without avgpool/fc, a 1x1 conv 512 -> C, and ``ConvTranspose2d(C, C, 64, stride=32,
padding=16)`` initialised with the bilinear kernel (12,993,642 parameters for C=21).
``fcn16s``/``fcn8s`` add the paper's skips: 1x1 score convs on layer3 (stride 16) and layer2
(stride 8), initialised at zero, fused after 2x transposed convs with bilinear init.

Any input size: the trunk has output stride 32, so an input of H x W with H, W multiples of
32 comes back at exactly H x W. Other sizes are zero-padded at the bottom and right up to the
next multiple of 32 (zero is the mean colour after normalisation), run, and the logits are
cropped back to H x W. Padding only on the far sides keeps every pixel at the same place
relative to the stride-32 grid as in an unpadded image (the geometry of the seed's network is
unchanged; the logits still see the padding through the trunk's large receptive field).

On CPU, while training, the final transposed conv runs as an equivalent 2x2 conv + pixel shuffle
(``upsample_by_pixel_shuffle``: same parameters, same numbers, faster with bf16); ``FCN.head``
selects it.

Inputs follow one convention, defined here: uint8 (3, H, W) images (``hwc_to_chw`` from decoded
arrays), turned into float32 on the device by ``normalize`` with the ImageNet statistics.

This module knows nothing about processes, logging or files other than weights.
"""

from __future__ import annotations

import copy
import urllib.error
from collections import OrderedDict
from pathlib import Path

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from .config import ModelConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OUTPUT_STRIDE = 32
HEADS = ("auto", "pixel_shuffle", "conv_transpose")
_TRUNK_CHANNELS = {  # (layer2, layer3, layer4) output channels
    "resnet18": (128, 256, 512), "resnet34": (128, 256, 512),
    "resnet50": (512, 1024, 2048), "resnet101": (512, 1024, 2048),
}
_IMAGENET_WEIGHTS = {
    "resnet18": "ResNet18_Weights", "resnet34": "ResNet34_Weights",
    "resnet50": "ResNet50_Weights", "resnet101": "ResNet101_Weights",
}


def normalize(images: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """uint8 images to normalised float32, on the images' device and in their memory format.

    Args:
        images: uint8 (B, 3, H, W) or (3, H, W), values 0..255.
        mean, std: per-channel statistics of images scaled to [0, 1].

    Returns:
        float32 tensor of the same shape: ``(images / 255 - mean) / std``.
    """
    mean_t = torch.tensor(mean, dtype=torch.float32, device=images.device).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=images.device).view(3, 1, 1)
    return images.float().div_(255.0).sub_(mean_t).div_(std_t)


def hwc_to_chw(image: np.ndarray) -> torch.Tensor:
    """A decoded (H, W, 3) uint8 array as a (3, H, W) uint8 tensor.

    One copy (PIL's buffers are read-only), kept in its decoded HWC order: the result is a
    channels-last view. torch's uint8 antialiased resize is faster on channels-last images
    (same values), and the train preset's random rescale is most of a sample's cost; call
    ``.contiguous()`` where a plain layout is wanted.
    """
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)


class PretrainedWeightsError(RuntimeError):
    """Backbone weights that cannot be loaded; the message names the file and the fix."""


def bilinear_kernel(in_channels: int, out_channels: int, kernel_size: int) -> torch.Tensor:
    """The seed's bilinear upsampling kernel for ``ConvTranspose2d`` weights.

    Returns:
        (in_channels, out_channels, k, k) tensor: the 2-D bilinear filter on the channel
        diagonal and zero elsewhere.
    """
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float32)
    filt1d = 1 - torch.abs(og - center) / factor
    weight = torch.zeros(in_channels, out_channels, kernel_size, kernel_size)
    idx = torch.arange(min(in_channels, out_channels))
    weight[idx, idx] = filt1d[:, None] * filt1d[None, :]
    return weight


def _upsampler(channels: int, factor: int, fixed: bool) -> nn.ConvTranspose2d:
    """A ``2f x 2f`` stride-``f`` transposed conv that scales by exactly ``f``, bilinear-initialised."""
    layer = nn.ConvTranspose2d(channels, channels, kernel_size=2 * factor, stride=factor,
                               padding=factor // 2, bias=not fixed)
    with torch.no_grad():
        layer.weight.copy_(bilinear_kernel(channels, channels, 2 * factor))
        if layer.bias is not None:
            layer.bias.zero_()
    layer.weight.requires_grad_(not fixed)
    return layer


class FCN(nn.Module):
    """Fully convolutional network on a ResNet trunk.

    Attributes:
        backbone: ResNet children conv1..layer4 (torchvision names, so torchvision state
            dicts load into it directly).
        score: 1x1 conv from the last trunk channels to classes (the seed's ``final_conv``).
        upsample: the final transposed conv back to input resolution (the seed's
            ``transpose_conv``), stride 32, 16 or 8 depending on the arch.
        score_layer3, up2_32 (fcn16s, fcn8s), score_layer2, up2_16 (fcn8s): skip scores and
            2x transposed convs.
        head: how ``upsample`` runs: ``auto`` (``pixel_shuffle`` on CPU with autograd or in bf16, else
            ``conv_transpose``), ``pixel_shuffle`` (``upsample_by_pixel_shuffle``) or
            ``conv_transpose`` (the plain layer). Same parameters and numbers up to rounding.
    """

    head: str = "auto"

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        resnet = getattr(torchvision.models, cfg.backbone)(weights=None)
        self.backbone = nn.Sequential(OrderedDict(list(resnet.named_children())[:-2]))
        c2, c3, c4 = _TRUNK_CHANNELS[cfg.backbone]
        n, fixed = cfg.num_classes, cfg.upsample == "fixed"
        self.score = nn.Conv2d(c4, n, kernel_size=1)
        if cfg.arch in ("fcn16s", "fcn8s"):
            self.score_layer3 = _zero_conv(c3, n)
            self.up2_32 = _upsampler(n, 2, fixed)
        if cfg.arch == "fcn8s":
            self.score_layer2 = _zero_conv(c2, n)
            self.up2_16 = _upsampler(n, 2, fixed)
        final_stride = {"fcn32s": 32, "fcn16s": 16, "fcn8s": 8}[cfg.arch]
        self.upsample = _upsampler(n, final_stride, fixed)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Args: images (B, 3, H, W) normalised, H, W >= 32. Returns: logits (B, C, H, W)."""
        h, w = images.shape[-2:]
        pad_h, pad_w = -h % OUTPUT_STRIDE, -w % OUTPUT_STRIDE
        # an exported graph always pads (by 0 at multiples of 32), so it serves every size, whatever the example's
        if _exporting() or pad_h or pad_w:
            images = F.pad(images, (0, pad_w, 0, pad_h))
        feats = {}
        x = images
        for name, layer in self.backbone.named_children():
            x = layer(x)
            feats[name] = x
        logits = self.score(x)
        if self.cfg.arch in ("fcn16s", "fcn8s"):
            logits = self.up2_32(logits) + self.score_layer3(feats["layer3"])
        if self.cfg.arch == "fcn8s":
            logits = self.up2_16(logits) + self.score_layer2(feats["layer2"])
        if self.head not in HEADS:
            raise ValueError(f"FCN.head={self.head!r} is not one of {', '.join(HEADS)}")
        # auto: on CPU the 2x2 conv avoids ConvTranspose2d's slow weight gradient and its slow bf16
        # forward (see upsample_by_pixel_shuffle); fp32 without autograd keeps the plain layer,
        # the faster one there.
        fast = self.head == "pixel_shuffle" or (
            self.head == "auto" and logits.device.type == "cpu" and (torch.is_grad_enabled() or _bf16(logits)))
        logits = upsample_by_pixel_shuffle(logits, self.upsample) if fast else self.upsample(logits)
        return logits[..., :h, :w]


def _bf16(x: torch.Tensor) -> bool:
    """Whether a CPU op on ``x`` runs in bfloat16: a bf16 tensor, or bf16 autocast on."""
    return x.dtype == torch.bfloat16 or (
        torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)


def _exporting() -> bool:
    """Whether ``forward`` is being captured: ``torch.export`` (the dynamo ONNX exporter) or a trace (TorchScript's)."""
    return torch.compiler.is_exporting() or torch.jit.is_tracing()


def upsample_by_pixel_shuffle(x: torch.Tensor, layer: nn.ConvTranspose2d) -> torch.Tensor:
    """``layer(x)`` for a ``2s x 2s``, stride-``s``, padding-``s/2`` transposed conv, as a 2x2 conv + pixel shuffle.

    Output row ``y = s*q + r - s/2`` (0 <= r < s) of such a transposed conv sees exactly two input
    rows: ``q - 1`` through kernel row ``s + r`` and ``q`` through kernel row ``r``; columns alike.
    So a 2x2 convolution (padding 1) whose ``C_out*s*s`` output channels hold the kernel's ``s*s``
    phases, then ``pixel_shuffle(s)`` and a crop of ``s/2`` pixels, gives the same numbers. The
    weight and bias are the layer's own parameters, reshaped differentiably, so gradients, state
    dicts and checkpoints are those of the plain layer.

    Why: on CPU (torch 2.14, oneDNN 3.12) ``ConvTranspose2d``'s weight gradient always runs
    oneDNN's generic im2col + gemm fallback (``conv:any+x64:gemm:jit``), which makes the fcn32s
    head the most expensive single layer of a bf16 training step. As a 2x2 conv it takes oneDNN's
    brgemm kernels, plus the copies of the shuffle: the bf16 training step gets faster and the
    fp32 one stays the same. bf16 autocast is not slower than fp32 on CPU in any layout, with or
    without this path; running the head in fp32 under bf16 autocast was slower. On a CPU with
    AMX (Intel Xeon, Sapphire Rapids) the bf16 *forward* of the fcn32s ``ConvTranspose2d`` is
    itself pathological (about 0.9 s for one 384x512 image, against 11 ms for this form), so bf16
    inference on CPU takes this path too. GPUs keep ``nn.ConvTranspose2d`` (cuDNN): nothing has
    been measured there yet. So does fp32 inference on CPU (no autograd), where the plain layer
    is the faster one.
    Measured figures: benchmarks/README.md, "Upsampling head".

    Args:
        x: (B, C_in, h, w).
        layer: ``ConvTranspose2d(C_in, C_out, 2s, stride=s, padding=s/2)``, s even, no
            dilation, groups or output padding.

    Returns:
        (B, C_out, s*h, s*w), equal to ``layer(x)`` up to float rounding.
    """
    s = layer.stride[0]
    c_in, c_out = layer.weight.shape[:2]
    expected = ((2 * s, 2 * s), (s, s), (s // 2, s // 2), (1, 1), 1, (0, 0))
    if s % 2 or (layer.kernel_size, layer.stride, layer.padding, layer.dilation, layer.groups,
                 layer.output_padding) != expected:
        raise ValueError(f"{layer} is not a 2s x 2s, stride-s, padding-s/2 transposed conv with s even")
    # (C_in, C_out, 2, s, 2, s) kernel halves; tap a=0 of the 2x2 conv reads input row q-1, i.e. kernel half 1
    weight = (layer.weight.reshape(c_in, c_out, 2, s, 2, s).flip(2, 4)
              .permute(1, 3, 5, 0, 2, 4).reshape(c_out * s * s, c_in, 2, 2))
    bias = None if layer.bias is None else layer.bias.repeat_interleave(s * s)
    phases = F.conv2d(x, weight, bias, padding=1)  # (B, C_out*s*s, h+1, w+1)
    p = s // 2
    return F.pixel_shuffle(phases, s)[..., p:p + s * x.shape[-2], p:p + s * x.shape[-1]]


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """An inference copy of ``model`` with each BatchNorm2d folded into the convolution before it.

    ``bn(conv(x))`` in eval mode is an affine map per channel, so it folds into the
    convolution's weight and bias (``torch.nn.utils.fusion.fuse_conv_bn_eval``); the BatchNorm
    becomes ``nn.Identity``. Same function up to float rounding (fp32: ~4e-5 on logits of
    magnitude ~10), one pass over each activation less, so inference is a few per cent faster.
    Measured figures: benchmarks/README.md, "Folded BatchNorms".

    Pairs are found by registration order: a BatchNorm2d registered directly after a Conv2d
    in the same parent with matching channels, as torchvision's ResNets register them and call
    them (stem, every block, every downsample). ``torch.fx``'s ``fuse`` cannot be used because
    ``FCN.forward`` pads by the input's shape, which symbolic tracing does not follow.

    Args:
        model: an FCN (or any module); not modified.

    Returns:
        A deep copy in eval mode; train it no further (its BatchNorms are gone).
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fused = copy.deepcopy(model).eval()
    for parent in fused.modules():
        names = list(parent._modules)
        for prev, name in zip(names, names[1:]):
            conv, bn = parent._modules[prev], parent._modules[name]
            if (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
                    and bn.num_features == conv.out_channels and bn.track_running_stats):
                parent._modules[prev] = fuse_conv_bn_eval(conv, bn)
                parent._modules[name] = nn.Identity()
    return fused


def _zero_conv(in_channels: int, num_classes: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, num_classes, kernel_size=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise PretrainedWeightsError(f"model.pretrained={path}: file not found (use imagenet, none or a .pth/.safetensors path)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def load_backbone_weights(model: FCN, pretrained: str) -> None:
    """Load backbone weights into ``model.backbone`` from torchvision (imagenet) or a file.

    Args:
        model: the FCN whose trunk receives the weights.
        pretrained: ``imagenet``, ``none`` or a path to a ResNet state dict (.pth or
            .safetensors; ``fc.*`` and ``backbone.`` prefixes are accepted).

    Raises:
        PretrainedWeightsError: unreadable file, mismatched keys, or imagenet weights that
            are neither cached nor downloadable; never falls back to random weights.
    """
    if pretrained == "none":
        return
    if pretrained == "imagenet":
        weights = getattr(torchvision.models, _IMAGENET_WEIGHTS[model.cfg.backbone]).DEFAULT
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        try:
            state = weights.get_state_dict(progress=False)
        except (urllib.error.URLError, OSError, RuntimeError) as err:
            raise PretrainedWeightsError(
                f"model.pretrained=imagenet: cannot download {weights.url} ({err.__class__.__name__}: {err}); "
                f"put that file at {cache} (TORCH_HOME decides the folder), or set model.pretrained=none "
                "or a local .pth/.safetensors path") from None
    else:
        state = _read_state_dict(Path(pretrained))
    state = {k.removeprefix("backbone."): v for k, v in state.items() if not k.startswith("fc.")}
    expected = model.backbone.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or mismatched:
        raise PretrainedWeightsError(
            f"model.pretrained={pretrained}: not a {model.cfg.backbone} state dict "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shape {mismatched[:3]})")
    model.backbone.load_state_dict(state, strict=True)


def build_model(cfg: ModelConfig) -> FCN:
    """Build an FCN from its config and load the configured backbone weights.

    Returns:
        The model in train mode on CPU, fp32.
    """
    model = FCN(cfg)
    load_backbone_weights(model, cfg.pretrained)
    return model
