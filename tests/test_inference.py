"""Inference modes (whole, slide, ms+flip), predict_image, and the checkpoint round trip."""

import numpy as np
import pytest
import torch
from eval_helpers import MODEL_CFG, make_checkpoint, tiny_model
from PIL import Image

import fcn_dist
from fcn_dist.model import IMAGENET_MEAN, IMAGENET_STD, normalize
from fcn_dist.inference import InferenceOptions, infer_logits, predict_image, tile_windows

torch.set_num_threads(1)
MEAN, STD = IMAGENET_MEAN, IMAGENET_STD


class ConstantModel(torch.nn.Module):
    """Logits of 1 everywhere: any pixel covered by no tile, or averaged wrongly, shows up."""

    def forward(self, x):
        return torch.ones(x.shape[0], 3, *x.shape[-2:])


class ColumnModel(torch.nn.Module):
    """Logits equal to the input's first channel, so flips and crops must be undone exactly."""

    def forward(self, x):
        return x[:, :1].repeat(1, 2, 1, 1)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def _images(h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (1, 3, h, w), dtype=torch.uint8, generator=g)


def test_tile_windows_cover_500x375_last_tile_at_border():
    windows = tile_windows(375, 500, (320, 480), (213, 320))
    assert windows == [(0, 320, 0, 480), (0, 320, 20, 500), (55, 375, 0, 480), (55, 375, 20, 500)]
    count = torch.zeros(375, 500)
    for y0, y1, x0, x1 in windows:
        count[y0:y1, x0:x1] += 1
    assert count.min() >= 1 and count.max() == 4


def test_tile_windows_clip_to_small_images():
    assert tile_windows(100, 150, (320, 480), (213, 320)) == [(0, 100, 0, 150)]
    assert tile_windows(64, 200, (64, 64), (64, 64)) == [(0, 64, 0, 64), (0, 64, 64, 128), (0, 64, 128, 192),
                                                        (0, 64, 136, 200)]


def test_whole_keeps_size_of_odd_images(model):
    with torch.inference_mode():
        logits = infer_logits(model, _images(37, 101), MEAN, STD)
    assert logits.shape == (1, 21, 37, 101) and logits.dtype == torch.float32


def test_slide_with_tile_covering_image_equals_whole(model):
    images = _images(100, 150)
    with torch.inference_mode():
        whole = infer_logits(model, images, MEAN, STD, InferenceOptions(mode="whole"))
        slide = infer_logits(model, images, MEAN, STD, InferenceOptions(mode="slide", tile=(320, 480), stride=(213, 320)))
    assert torch.equal(slide, whole)


def test_slide_averages_every_pixel_no_seams():
    logits = infer_logits(ConstantModel(), _images(375, 500), MEAN, STD, InferenceOptions(mode="slide",
                          tile=(320, 480), stride=(213, 320)))
    assert logits.shape == (1, 3, 375, 500)
    assert torch.equal(logits, torch.ones_like(logits))  # a zero seam or a wrong count would differ


def test_slide_500x375_full_size_matches_tile_average(model):
    images = _images(375, 500, seed=1)
    with torch.inference_mode():
        slide = infer_logits(model, images, MEAN, STD, InferenceOptions(mode="slide", tile=(320, 480), stride=(213, 320)))
        x = normalize(images, MEAN, STD)
        total = torch.zeros(1, 21, 375, 500)
        count = torch.zeros(375, 500)
        for y0, y1, x0, x1 in tile_windows(375, 500, (320, 480), (213, 320)):
            total[..., y0:y1, x0:x1] += model(x[..., y0:y1, x0:x1])
            count[y0:y1, x0:x1] += 1
    assert slide.shape == (1, 21, 375, 500)
    assert bool((count > 0).all())
    # slide runs the 4 tiles as one batch, the reference one at a time: oneDNN may pick other conv kernels (by
    # batch and CPU), reordering sums of up to 4,608 terms (512 ch x 3x3) in ~20 layers: ~eps*sqrt(K) = 8e-6 of
    # the largest logit at most; <= 2.3e-6 of it measured on every ISA tried, 3e-5 of it leaves 13x. A tile
    # misplaced or averaged wrongly moves logits by >= 1e-2 of it.
    expected = total / count
    tol = 3e-5 * float(expected.abs().max())
    assert torch.allclose(slide, expected, rtol=0, atol=tol)
    top2 = expected.topk(2, dim=1).values  # the classes users get: equal wherever the top-2 margin exceeds tol
    sure = top2[:, 0] - top2[:, 1] > tol
    assert sure.float().mean() > 0.99 and torch.equal(slide.argmax(1)[sure], expected.argmax(1)[sure])
    assert slide.argmax(1).shape == (1, 375, 500)


def test_flip_and_scales_average_and_undo_transforms():
    images = _images(33, 50)
    x = normalize(images, MEAN, STD)[:, :1].repeat(1, 2, 1, 1)
    flipped = infer_logits(ColumnModel(), images, MEAN, STD, InferenceOptions(flip=True))
    # exact by construction: flips only permute, and (a + a) / 2 == a; a flip not undone would mirror the logits
    assert torch.equal(flipped, x)
    ms = infer_logits(ConstantModel(), images, MEAN, STD, InferenceOptions(flip=True, scales=(0.5, 0.75, 1.25)))
    assert ms.shape == (1, 3, 33, 50)
    # a bilinear resize of a constant is a convex combination: a few roundings (exact on every ISA tried);
    # rtol 1e-5 (83 eps) leaves room, a missing pass or wrong count is off by >= 1/7
    assert torch.allclose(ms, torch.ones_like(ms), rtol=1e-5, atol=0)


def test_ms_flip_equals_manual_average(model):
    images = _images(64, 96)
    with torch.inference_mode():
        ms = infer_logits(model, images, MEAN, STD, InferenceOptions(flip=True, scales=(0.5, 1.0)))
        x = normalize(images, MEAN, STD)
        half = torch.nn.functional.interpolate(x, size=(32, 48), mode="bilinear", align_corners=False)
        up = lambda t: torch.nn.functional.interpolate(t, size=(64, 96), mode="bilinear", align_corners=False)
        expected = (up(model(half)) + up(model(half.flip(-1))).flip(-1) + model(x) + model(x.flip(-1)).flip(-1)) / 4
    # both run the model on the same inputs (same kernels); only the last resize differs, flipped before or after
    # the 2x bilinear upsampling (exact 0.25/0.75 weights, so a rounding or two: 7.4e-8 = 0.6 eps of the largest
    # logit measured, 0 on scalar kernels): 1e-6 of it leaves 13x; a pass not flipped back is off by O(1)
    tol = 1e-6 * float(expected.abs().max())
    assert torch.allclose(ms, expected, rtol=0, atol=tol)
    top2 = expected.topk(2, dim=1).values  # the classes users get: equal wherever the top-2 margin exceeds tol
    sure = top2[:, 0] - top2[:, 1] > tol
    assert sure.float().mean() > 0.99 and torch.equal(ms.argmax(1)[sure], expected.argmax(1)[sure])


def test_autocast_bf16_returns_float32(model):
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = infer_logits(model, _images(40, 60), MEAN, STD, InferenceOptions(mode="slide", tile=(32, 32), stride=(16, 16),
                              flip=True, scales=(1.0, 0.5)))
    assert logits.dtype == torch.float32 and logits.shape == (1, 21, 40, 60)


def test_channels_last_model_gets_channels_last_input(model):
    images = _images(50, 70)
    fast = tiny_model().to(memory_format=torch.channels_last)
    seen = []
    fast.backbone.conv1.register_forward_pre_hook(
        lambda _, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    with torch.inference_mode():
        expected = infer_logits(model, images, MEAN, STD)
        got = infer_logits(fast, images, MEAN, STD, InferenceOptions(mode="slide", tile=(32, 64), stride=(16, 32)))
        whole = infer_logits(fast, images, MEAN, STD)
    assert seen and all(seen)
    # contiguous and channels_last run different oneDNN kernels (and each CPU its own): sums of up to 4,608 terms
    # (512 ch x 3x3) in ~20 layers reordered, ~eps*sqrt(K) = 8e-6 of the largest logit at most; measured 1.5e-6
    # of it on this Xeon (1.18e-4 at 79), <= 2.3e-6 on every ISA tried: 3e-5 of it leaves 13x
    tol = 3e-5 * float(expected.abs().max())
    assert torch.allclose(whole, expected, rtol=0, atol=tol) and got.shape == expected.shape
    top2 = expected.topk(2, dim=1).values  # the classes users get: equal wherever the top-2 margin exceeds tol
    sure = top2[:, 0] - top2[:, 1] > tol
    assert sure.float().mean() > 0.99 and torch.equal(whole.argmax(1)[sure], expected.argmax(1)[sure])


def test_invalid_options_are_errors():
    with pytest.raises(ValueError, match="mode"):
        InferenceOptions(mode="tiles")
    with pytest.raises(ValueError, match="uncovered"):
        InferenceOptions(mode="slide", tile=(64, 64), stride=(65, 32))
    with pytest.raises(ValueError, match="positive"):
        InferenceOptions(scales=(0.0,))


def test_predict_image_accepts_pil_numpy_tensor(model):
    images = _images(45, 70)
    info = type("Info", (), {"mean": MEAN, "std": STD})()
    array = images[0].permute(1, 2, 0).numpy()
    model.train()
    from_tensor = predict_image(model, info, images[0])
    assert model.training  # the caller's mode is restored
    model.eval()
    from_numpy = predict_image(model, info, array)
    from_pil = predict_image(model, info, Image.fromarray(array))
    with torch.inference_mode():
        expected = infer_logits(model, images, MEAN, STD).argmax(1)[0]
    assert from_tensor.dtype == torch.int64 and from_tensor.shape == (45, 70)
    assert torch.equal(from_tensor, expected) and torch.equal(from_numpy, expected) and torch.equal(from_pil, expected)
    with pytest.raises(ValueError, match="uint8"):
        predict_image(model, info, np.zeros((4, 4, 3), dtype=np.float32))


def test_round_trip_export_load_bit_identical_logits(tmp_path):
    path, model = make_checkpoint(tmp_path / "model.safetensors")
    loaded, info = fcn_dist.load_model(path)
    assert info.model == MODEL_CFG and info.step == 7 and info.metrics == {"mIoU": 0.5}
    assert list(info.mean) == list(MEAN) and list(info.std) == list(STD) and len(info.classes) == 21
    assert not loaded.training
    images = _images(75, 110, seed=2)
    with torch.inference_mode():
        expected = infer_logits(model, images, MEAN, STD)
        got = infer_logits(loaded, images, info.mean, info.std)
    assert torch.equal(got, expected)
    assert torch.equal(fcn_dist.predict_image(loaded, info, images[0]), expected.argmax(1)[0])
