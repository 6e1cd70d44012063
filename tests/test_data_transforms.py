"""Paired transforms: alignment, padding values, presets, normalisation and per-sample seeding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from fcn_dist.config import DataConfig
from fcn_dist.data import build_dataset
from fcn_dist.data import voc as voc_module
from fcn_dist.data.transforms import AugmentedDataset, build_transforms, resized_crop_nearest, sample_seed
from fcn_dist.model import IMAGENET_MEAN, IMAGENET_STD, normalize


def coordinate_pair(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image whose pixel (y, x) is (y, x, 255), and a mask derived from it (never 255)."""
    y, x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    image = torch.stack([y, x, torch.full_like(y, 255)]).to(torch.uint8)
    return image, mask_of(image)


def mask_of(image: torch.Tensor) -> torch.Tensor:
    return ((7 * image[0].long() + 3 * image[1].long()) % 254).to(torch.uint8)


def test_train_preset_keeps_pixels_aligned_and_pads_with_void():
    cfg = DataConfig(crop_size=[48, 64], scale_range=[1.0, 1.0], hflip=True)
    transform = build_transforms(cfg, train=True)
    sizes = [(30, 40), (48, 64), (100, 50), (40, 200), (120, 150), (47, 65)]
    flips, padded = set(), 0
    for draw in range(240):
        height, width = sizes[draw % len(sizes)]
        torch.manual_seed(draw)
        image, mask = transform(*coordinate_pair(height, width))
        assert type(image) is torch.Tensor and type(mask) is torch.Tensor
        assert image.dtype == mask.dtype == torch.uint8
        assert image.shape == (3, 48, 64) and mask.shape == (48, 64)
        real, pad = image[2] == 255, image[2] == 0
        assert bool((real | pad).all())
        assert bool((mask[pad] == 255).all()) and bool((image[:, pad] == 0).all())
        assert bool((mask[real] != 255).all())
        assert torch.equal(mask[real], mask_of(image)[real])
        assert int(real.sum()) == min(height, 48) * min(width, 64)
        # the real pixels form one rectangle of consecutive rows and (possibly reversed) columns
        rows, cols = real.any(1).nonzero().flatten(), real.any(0).nonzero().flatten()
        box = image[:, rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1].long()
        assert bool(real[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1].all())
        assert bool((box[0].diff(dim=0) == 1).all())
        steps = box[1].diff(dim=1).unique().tolist()
        assert steps in ([], [1], [-1])
        flips.update(steps)
        padded += bool(pad.any())
    assert flips == {1, -1} and padded > 50


def block_pair(height: int, width: int, block: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Image of constant blocks whose colour encodes the block; mask = block id."""
    y, x = torch.meshgrid(torch.arange(height) // block, torch.arange(width) // block, indexing="ij")
    image = torch.stack([20 * y + 10, 20 * x + 10, torch.full_like(y, 255)]).to(torch.uint8)
    return image, (y * 8 + x).to(torch.uint8)


def test_random_scale_keeps_blocks_aligned():
    cfg = DataConfig(crop_size=[64, 96], scale_range=[0.5, 2.0], hflip=True)
    transform = build_transforms(cfg, train=True)
    source_image, source_mask = block_pair(80, 128)
    scaled_down = 0
    for draw in range(120):
        torch.manual_seed(1000 + draw)
        image, mask = transform(source_image, source_mask)
        assert image.shape == (3, 64, 96) and mask.shape == (64, 96)
        pad = mask == 255
        assert torch.equal(pad, image[2] == 0) and bool((image[:, pad] == 0).all())
        assert bool((image[2][~pad] == 255).all())
        # interior pixels: the mask is constant over a 5x5 neighbourhood
        m = mask.long()
        windows = torch.nn.functional.unfold(m[None, None].float(), 5, padding=2)[0].view(25, 64, 96)
        interior = (windows == m.float()).all(0) & ~pad
        by, bx = (image[0].long() - 10) // 20, (image[1].long() - 10) // 20
        assert int(interior.sum()) > 200
        assert torch.equal(image[0].long()[interior], (20 * by + 10)[interior])
        assert torch.equal(image[1].long()[interior], (20 * bx + 10)[interior])
        assert torch.equal(m[interior], (by * 8 + bx)[interior])
        scaled_down += bool(pad.any())
    assert scaled_down > 10


@pytest.mark.parametrize("scale", [0.5, 0.8, 2.0])
def test_random_scale_has_the_drawn_scale(scale):
    """Only the crop window is resized; it must look like the whole image rescaled by the draw."""
    cfg = DataConfig(crop_size=[64, 96], scale_range=[scale, scale], hflip=False)
    transform = build_transforms(cfg, train=True)
    source_image, source_mask = block_pair(80, 128)  # 16-pixel blocks
    for draw in range(20):
        torch.manual_seed(draw)
        image, mask = transform(source_image, source_mask)
        real = mask != 255
        rows, cols = int(real.any(1).sum()), int(real.any(0).sum())
        assert (rows, cols) == (min(64, round(80 * scale)), min(96, round(128 * scale)))
        # interior blocks are 16 * scale pixels long (the first and last may be cut by the crop)
        first_row = int(real.any(1).nonzero()[0, 0])
        runs = torch.unique_consecutive(mask[first_row][real[first_row]], return_counts=True)[1][1:-1]
        assert len(runs) > 0 and all(abs(int(n) - 16 * scale) <= 1 for n in runs), runs


def test_d2l_preset_is_a_plain_crop():
    transform = build_transforms(DataConfig(preset="d2l", crop_size=[40, 56]), train=True)
    source_image, source_mask = coordinate_pair(60, 90)
    corners = set()
    for draw in range(50):
        torch.manual_seed(draw)
        image, mask = transform(source_image, source_mask)
        top, left = int(image[0, 0, 0]), int(image[1, 0, 0])
        assert torch.equal(image, source_image[:, top: top + 40, left: left + 56])
        assert torch.equal(mask, source_mask[top: top + 40, left: left + 56])
        corners.add((top, left))
    assert len(corners) > 10


def test_eval_preset_is_untouched():
    image, mask = coordinate_pair(37, 53)
    out_image, out_mask = build_transforms(DataConfig(), train=False)(image, mask)
    assert torch.equal(out_image, image) and torch.equal(out_mask, mask)


def test_normalize_exact():
    images = torch.randint(0, 256, (2, 3, 5, 7), dtype=torch.uint8)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    expected = (images.double() / 255 - mean.double()) / std.double()
    out = normalize(images, IMAGENET_MEAN, IMAGENET_STD)
    assert out.dtype == torch.float32 and out.shape == images.shape
    # no sums: three correctly rounded elementwise ops on values <= 2.64, the same on every CPU; all 768
    # (channel, value) inputs are off by <= 2.53e-7 (~1 ulp), so atol 1e-6 is safe and still catches a wrong constant
    assert torch.allclose(out.double(), expected, atol=1e-6)
    assert torch.equal(normalize(images[0]), out[0])
    assert normalize(images.contiguous(memory_format=torch.channels_last)).is_contiguous(
        memory_format=torch.channels_last)
    assert torch.equal(normalize(images, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)), images.float() / 255)


def test_d2l_preset_keeps_exactly_the_images_at_least_as_large_as_the_crop(synthetic_voc, monkeypatch):
    voc = synthetic_voc / "VOCdevkit" / "VOC2012"
    names = (voc / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    sizes = [Image.open(voc / "JPEGImages" / f"{n}.jpg").size[::-1] for n in names]
    crop = [56, 80]
    expected = [i for i, (h, w) in enumerate(sizes) if h >= crop[0] and w >= crop[1]]
    assert 0 < len(expected) < len(names)

    def no_decoding(*args, **kwargs):
        raise AssertionError("the d2l filter decoded an image")

    with monkeypatch.context() as patch:  # sizes come from headers: nothing is decoded at build time
        patch.setattr(voc_module, "decode_image", no_decoding)
        d2l = build_dataset(DataConfig(root=str(synthetic_voc), preset="d2l", crop_size=crop), "train", train=True)
    assert d2l.indices == expected and len(d2l) == len(expected)
    for i in range(len(d2l)):
        image, mask = d2l[i]
        assert image.shape == (3, *crop) and mask.shape == tuple(crop)
    train = build_dataset(DataConfig(root=str(synthetic_voc), preset="train", crop_size=crop), "train", train=True)
    assert len(train) == len(names) and train.indices == list(range(len(names)))


def _collect(dataset, workers: int, persistent: bool = False, epochs=(0,)) -> list[list[torch.Tensor]]:
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, shuffle=False, num_workers=workers,
                                         persistent_workers=persistent)
    out = []
    for epoch in epochs:
        dataset.set_epoch(epoch)
        out.append([t for batch in loader for t in batch])
    return out


def test_augmentation_depends_only_on_seed_epoch_index(synthetic_voc):
    cfg = DataConfig(root=str(synthetic_voc), crop_size=[48, 64])
    dataset = build_dataset(cfg, "train", train=True, seed=3)
    assert isinstance(dataset, AugmentedDataset) and dataset.epoch.is_shared()
    single = _collect(dataset, workers=0, epochs=(0, 1))
    # two persistent workers see set_epoch(1) through the shared-memory epoch
    multi = _collect(dataset, workers=2, persistent=True, epochs=(0, 1))
    for a, b in zip(single, multi):
        assert len(a) == len(b) == 2 * 4
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(single[0], single[1]))
    # the global RNG neither changes the draw nor is changed by it
    dataset.set_epoch(1)
    torch.manual_seed(12345)
    state = torch.get_rng_state()
    first = dataset[5]
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(777)
    second = dataset[5]
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    other_seed = build_dataset(cfg, "train", train=True, seed=4)
    other_seed.set_epoch(1)
    assert not torch.equal(other_seed[5][0], first[0])


def test_sample_seed_mixes_every_argument():
    seeds = {sample_seed(s, e, i) for s in range(3) for e in range(3) for i in range(50)}
    assert len(seeds) == 3 * 3 * 50 and all(0 <= s < 2**63 for s in seeds)
    assert sample_seed(0, 1, 2) == sample_seed(0, 1, 2)


@pytest.mark.parametrize("preset", ["train", "d2l"])
def test_workers_return_uint8(synthetic_voc, preset):
    cfg = DataConfig(root=str(synthetic_voc), crop_size=[32, 48], preset=preset)
    image, mask = build_dataset(cfg, "train", train=True)[0]
    assert image.dtype == mask.dtype == torch.uint8
    assert image.shape == (3, 32, 48) and mask.shape == (32, 48)
    assert np.isin(mask.numpy(), [0, 1, 3, 7, 8, 12, 15, 255]).all()


def test_resized_crop_nearest_equals_torchvision():
    """The mask path of RandomScaleCrop gives exactly torchvision's nearest resize, for up- and downscales."""
    generator = torch.Generator().manual_seed(0)
    mask = torch.randint(0, 256, (2, 61, 83), dtype=torch.uint8, generator=generator)
    cases = [(0, 0, 61, 83, 61, 83), (3, 5, 20, 30, 40, 60), (0, 0, 61, 83, 30, 41), (7, 2, 33, 71, 320, 480),
             (1, 1, 1, 1, 5, 3), (10, 20, 37, 53, 37, 1)]
    for _ in range(200):
        top = int(torch.randint(0, 60, (), generator=generator))
        left = int(torch.randint(0, 82, (), generator=generator))
        height = int(torch.randint(1, 61 - top + 1, (), generator=generator))
        width = int(torch.randint(1, 83 - left + 1, (), generator=generator))
        out_h, out_w = (int(v) for v in torch.randint(1, 700, (2,), generator=generator))
        cases.append((top, left, height, width, out_h, out_w))
    for top, left, height, width, out_h, out_w in cases:
        expected = F.resized_crop(tv_tensors.Mask(mask), top, left, height, width, [out_h, out_w],
                                  interpolation=F.InterpolationMode.NEAREST)
        got = resized_crop_nearest(mask, top, left, height, width, (out_h, out_w))
        assert got.dtype == torch.uint8 and got.shape == (2, out_h, out_w)
        assert torch.equal(got, expected.as_subclass(torch.Tensor)), (top, left, height, width, out_h, out_w)
        assert torch.equal(resized_crop_nearest(mask[0], top, left, height, width, (out_h, out_w)), got[0])
