"""A faithful re-implementation of d2l.ai's FCN pipeline, the baseline of the benchmarks.

The code follows d2l's ``torch`` flavour (chapter "Semantic Segmentation and the Dataset" and
"Fully Convolutional Networks", the seed document of fcn_dist) function for function, so the
benchmarks compare fcn_dist with what the seed actually does:

- ``read_voc_images`` decodes every image of a split, and its label PNG as RGB;
- ``VOCSegDataset`` drops images smaller than the crop (``filter``), normalises every kept
  image to float32 up front and keeps them all in memory (the "float32 preload"), and decodes
  labels per item through the 256**3-entry RGB colour map (``voc_label_indices``), which maps
  the void colour to background;
- ``voc_rand_crop`` is a plain random crop;
- ``train_batch_ch13`` / ``train_ch13``: loss ``cross_entropy(reduction='none').mean(1).mean(1)``
  summed over the batch, SGD, and the accuracy of every batch read back with ``float()`` (a
  host sync per step), as d2l's ``Accumulator`` does;
- ``predict``: normalise, forward, argmax, one image at a time, on the top-left 320x480 crop
  of each image (d2l's chapter crops test images that way). Like d2l it runs with autograd on.
- ``predict_tiled``: the seed's prose method for whole images of any size (tiles with sides
  multiple of 32 covering the image, overlapping logits averaged), which d2l describes but
  does not code; written here in the style of ``predict``.

Differences, all neutral for speed: no ``print`` in ``VOCSegDataset.__init__``, the VOC folder
is passed in instead of downloaded, ``nn.DataParallel`` is left out (on a CPU it calls the
module directly), and the backbone starts from random weights (no ImageNet download here).
"""

from __future__ import annotations

import os

import torch
import torchvision
from torch import nn
from torch.nn import functional as F

VOC_COLORMAP = [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0],
                [0, 0, 128], [128, 0, 128], [0, 128, 128], [128, 128, 128],
                [64, 0, 0], [192, 0, 0], [64, 128, 0], [192, 128, 0],
                [64, 0, 128], [192, 0, 128], [64, 128, 128], [192, 128, 128],
                [0, 64, 0], [128, 64, 0], [0, 192, 0], [128, 192, 0],
                [0, 64, 128]]


NORMALIZE = torchvision.transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])


def normalize_image(img: torch.Tensor) -> torch.Tensor:
    """d2l's ``VOCSegDataset.normalize_image`` without building a dataset: uint8 (3, H, W) to float32."""
    return NORMALIZE(img.float() / 255)


def read_voc_images(voc_dir: str, is_train: bool = True) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Every image and label of train.txt or val.txt, decoded.

    Returns:
        features: uint8 (3, H, W) images; labels: uint8 (3, H, W) RGB renderings of the masks.
    """
    txt_fname = os.path.join(voc_dir, "ImageSets", "Segmentation", "train.txt" if is_train else "val.txt")
    mode = torchvision.io.image.ImageReadMode.RGB
    with open(txt_fname, "r") as f:
        images = f.read().split()
    features, labels = [], []
    for fname in images:
        features.append(torchvision.io.read_image(os.path.join(voc_dir, "JPEGImages", f"{fname}.jpg")))
        labels.append(torchvision.io.read_image(os.path.join(voc_dir, "SegmentationClass", f"{fname}.png"), mode))
    return features, labels


def voc_colormap2label() -> torch.Tensor:
    """int64 (256**3,) lookup from packed RGB to class index (every other colour, void included, is 0)."""
    colormap2label = torch.zeros(256 ** 3, dtype=torch.long)
    for i, colormap in enumerate(VOC_COLORMAP):
        colormap2label[(colormap[0] * 256 + colormap[1]) * 256 + colormap[2]] = i
    return colormap2label


def voc_label_indices(colormap: torch.Tensor, colormap2label: torch.Tensor) -> torch.Tensor:
    """uint8 RGB label (3, H, W) to int64 class indices (H, W)."""
    colormap = colormap.permute(1, 2, 0).numpy().astype("int32")
    idx = (colormap[:, :, 0] * 256 + colormap[:, :, 1]) * 256 + colormap[:, :, 2]
    return colormap2label[idx]


def voc_rand_crop(feature: torch.Tensor, label: torch.Tensor, height: int, width: int):
    """The same random (height, width) window of an image and its label."""
    rect = torchvision.transforms.RandomCrop.get_params(feature, (height, width))
    feature = torchvision.transforms.functional.crop(feature, *rect)
    label = torchvision.transforms.functional.crop(label, *rect)
    return feature, label


class VOCSegDataset(torch.utils.data.Dataset):
    """d2l's VOC dataset: float32 images preloaded, labels decoded per item through RGB."""

    def __init__(self, is_train: bool, crop_size: tuple[int, int], voc_dir: str):
        self.transform = NORMALIZE
        self.crop_size = crop_size
        features, labels = read_voc_images(voc_dir, is_train=is_train)
        self.features = [self.normalize_image(feature) for feature in self.filter(features)]
        self.labels = self.filter(labels)
        self.colormap2label = voc_colormap2label()

    def normalize_image(self, img: torch.Tensor) -> torch.Tensor:
        return self.transform(img.float() / 255)

    def filter(self, imgs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [img for img in imgs if img.shape[1] >= self.crop_size[0] and img.shape[2] >= self.crop_size[1]]

    def __getitem__(self, idx: int):
        feature, label = voc_rand_crop(self.features[idx], self.labels[idx], *self.crop_size)
        return feature, voc_label_indices(label, self.colormap2label)

    def __len__(self) -> int:
        return len(self.features)


def load_data_voc(batch_size: int, crop_size: tuple[int, int], voc_dir: str, num_workers: int = 4):
    """d2l's loaders (d2l fixes ``num_workers`` at 4; here it is a parameter)."""
    train_iter = torch.utils.data.DataLoader(VOCSegDataset(True, crop_size, voc_dir), batch_size,
                                             shuffle=True, drop_last=True, num_workers=num_workers)
    test_iter = torch.utils.data.DataLoader(VOCSegDataset(False, crop_size, voc_dir), batch_size,
                                            drop_last=True, num_workers=num_workers)
    return train_iter, test_iter


def bilinear_kernel(in_channels: int, out_channels: int, kernel_size: int) -> torch.Tensor:
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = (torch.arange(kernel_size).reshape(-1, 1), torch.arange(kernel_size).reshape(1, -1))
    filt = (1 - torch.abs(og[0] - center) / factor) * (1 - torch.abs(og[1] - center) / factor)
    weight = torch.zeros((in_channels, out_channels, kernel_size, kernel_size))
    weight[range(in_channels), range(out_channels), :, :] = filt
    return weight


def build_net(num_classes: int = 21) -> nn.Sequential:
    """d2l's FCN: ResNet-18 without avgpool/fc, 1x1 conv, bilinear-initialised transposed conv."""
    pretrained_net = torchvision.models.resnet18(weights=None)
    net = nn.Sequential(*list(pretrained_net.children())[:-2])
    net.add_module("final_conv", nn.Conv2d(512, num_classes, kernel_size=1))
    net.add_module("transpose_conv", nn.ConvTranspose2d(num_classes, num_classes, kernel_size=64, padding=16,
                                                        stride=32))
    net.transpose_conv.weight.data.copy_(bilinear_kernel(num_classes, num_classes, 64))
    return net


def loss(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-image mean cross-entropy, (B,)."""
    return F.cross_entropy(inputs, targets, reduction="none").mean(1).mean(1)


def accuracy(y_hat: torch.Tensor, y: torch.Tensor) -> float:
    """Correct predictions, read back to the host (d2l's ``float(reduce_sum(...))``)."""
    if len(y_hat.shape) > 1 and y_hat.shape[1] > 1:
        y_hat = y_hat.argmax(axis=1)
    cmp = y_hat.type(y.dtype) == y
    return float(cmp.type(y.dtype).sum())


def train_batch_ch13(net, X, y, loss, trainer, device):
    """One d2l training step; returns (loss sum, correct pixels) as d2l does."""
    X = X.to(device)
    y = y.to(device)
    net.train()
    trainer.zero_grad()
    pred = net(X)
    l = loss(pred, y)
    l.sum().backward()
    trainer.step()
    train_loss_sum = l.sum()
    train_acc_sum = accuracy(pred, y)
    return train_loss_sum, train_acc_sum


def train_steps(net, trainer, batches, device) -> list[float]:
    """``train_ch13``'s inner loop over ``batches``, with its per-step host reads (``Accumulator.add``).

    Returns:
        The loss sum of each step.
    """
    losses = []
    for features, labels in batches:
        l, acc = train_batch_ch13(net, features, labels, loss, trainer, device)
        losses.append(float(l))  # metric.add(l, acc, ...) converts each value with float()
    return losses


def predict(net, normalize_image, img: torch.Tensor, device) -> torch.Tensor:
    """d2l's predict: uint8 (3, H, W) image to an (H', W') class map."""
    X = normalize_image(img).unsqueeze(0)
    pred = net(X.to(device)).argmax(dim=1)
    return pred.reshape(pred.shape[1], pred.shape[2])


def predict_crop(img: torch.Tensor, crop_size: tuple[int, int] = (320, 480)) -> torch.Tensor:
    """The top-left ``crop_size`` window d2l predicts on (zero-padded where the image is smaller)."""
    return torchvision.transforms.functional.crop(img, 0, 0, *crop_size)


def predict_tiled(net, normalize_image, img: torch.Tensor, device, tile: tuple[int, int] = (320, 480),
                  num_classes: int = 21) -> torch.Tensor:
    """The seed's prose method for a whole image of any size, written in d2l's style.

    "Cut several rectangles whose height and width are multiples of 32, whose union covers
    the image; forward each; where a pixel is covered several times, average its transposed-conv
    outputs before the softmax." Rectangles are the chapter's 320x480 crop, shrunk to the
    largest multiple of 32 that fits a smaller side, placed every tile (the last one flush with
    the border), so a 375x500 image takes 2x2 of them. Autograd on, one tile at a time, as
    ``predict``.

    Returns:
        (H, W) class map of the whole image.
    """
    h, w = img.shape[1:]
    th, tw = min(tile[0], h // 32 * 32), min(tile[1], w // 32 * 32)
    ys = sorted(set(list(range(0, h - th, th)) + [h - th]))
    xs = sorted(set(list(range(0, w - tw, tw)) + [w - tw]))
    X = normalize_image(img).unsqueeze(0).to(device)
    logits = torch.zeros((1, num_classes, h, w), device=device)
    count = torch.zeros((1, 1, h, w), device=device)
    for y in ys:
        for x in xs:
            logits[:, :, y:y + th, x:x + tw] += net(X[:, :, y:y + th, x:x + tw]).float()
            count[:, :, y:y + th, x:x + tw] += 1
    pred = (logits / count).argmax(dim=1)
    return pred.reshape(h, w)
