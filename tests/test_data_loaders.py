"""build_dataloaders: batching, seeded shuffling, worker options, eval padding, config checks."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from fcn_dist.config import ConfigError, load_config
from fcn_dist.data import build_dataloaders, crop_collate, list_collate, window_collate
from fcn_dist.data.transforms import finish_windows
from fcn_dist.data.voc import DataError, VOCSegmentation
from fcn_dist.labels import VOC_CLASSES, class_names


def _cfg(root, *extra):
    return load_config(None, ["data.format=voc", f"data.root={root}", "data.crop_size=[32,48]",
                              "data.batch_size=5", "data.num_workers=0", *extra])


def _epoch(loader, epoch=0):
    loader.dataset.set_epoch(epoch)
    return [t for batch in loader for t in batch]


def test_train_loader_options(synthetic_voc):
    train, val = build_dataloaders(_cfg(synthetic_voc, "data.num_workers=2", "data.prefetch_factor=3"))
    assert train.batch_size == 5 and train.drop_last and len(train) == 12 // 5
    assert isinstance(train.sampler, torch.utils.data.RandomSampler) and train.generator is not None
    assert train.num_workers == 2 and train.persistent_workers and train.prefetch_factor == 3
    assert train.pin_memory == torch.cuda.is_available()
    assert val.batch_size == 1 and isinstance(val.sampler, torch.utils.data.SequentialSampler)
    assert val.collate_fn is list_collate and val.persistent_workers
    images, masks = next(iter(train))
    assert images.shape == (5, 3, 32, 48) and masks.shape == (5, 32, 48)
    assert images.dtype == masks.dtype == torch.uint8
    zero_workers, _ = build_dataloaders(_cfg(synthetic_voc))
    assert not zero_workers.persistent_workers and zero_workers.prefetch_factor is None


@pytest.mark.parametrize("preset, channels_last", [("d2l", True), ("train", False)])
@pytest.mark.parametrize("workers", [0, 2])
def test_train_batches_equal_stacked_items_in_their_layout(synthetic_voc, preset, channels_last, workers):
    """crop_collate: the same values as stacking the items, channels-last for un-resized crops, from workers too."""
    loader, _ = build_dataloaders(_cfg(synthetic_voc, f"data.preset={preset}", f"data.num_workers={workers}",
                                       "data.batch_size=2", "data.scale_range=[0.5,2.0]"))
    assert loader.collate_fn is crop_collate
    batches = _epoch(loader, epoch=3)
    # the same sampling and items, stacked by torch's default_collate in one process
    reference = torch.utils.data.DataLoader(loader.dataset, batch_size=2, shuffle=True, drop_last=True,
                                            generator=torch.Generator().manual_seed(0))  # _cfg's train.seed
    expected = [t for batch in reference for t in batch]
    assert len(batches) == len(expected) == 2 * len(loader) > 0
    for k, (got, want) in enumerate(zip(batches, expected)):
        assert torch.equal(got, want)
        if k % 2 == 0:  # images
            assert got.is_contiguous(memory_format=torch.channels_last) == channels_last
            assert got.is_contiguous() == (not channels_last)


def test_crop_collate_follows_the_majority_layout():
    image = torch.arange(2 * 3 * 4 * 5, dtype=torch.uint8).reshape(2, 4, 5, 3)
    views = [image[k].permute(2, 0, 1) for k in range(2)]  # channels-last views, as the readers give
    dense = [view.contiguous() for view in views]
    mask = torch.zeros(4, 5, dtype=torch.uint8)
    for items, channels_last in [(views, True), (dense, False), ([views[0], dense[1], views[1]], True),
                                 ([dense[0], views[1], dense[1]], False)]:
        images, masks = crop_collate([(item, mask) for item in items])
        assert images.is_contiguous(memory_format=torch.channels_last) == channels_last
        assert torch.equal(images, torch.stack(items)) and masks.shape == (len(items), 4, 5)


def test_shuffle_is_seeded(synthetic_voc):
    first = _epoch(build_dataloaders(_cfg(synthetic_voc, "train.seed=1"))[0])
    again = _epoch(build_dataloaders(_cfg(synthetic_voc, "train.seed=1"))[0])
    other = _epoch(build_dataloaders(_cfg(synthetic_voc, "train.seed=2"))[0])
    assert all(torch.equal(a, b) for a, b in zip(first, again)) and len(first) == 4
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_val_loader_keeps_whole_images_unpadded(synthetic_voc):
    _, val = build_dataloaders(_cfg(synthetic_voc, "data.eval_batch_size=3"))
    reader = VOCSegmentation(synthetic_voc, "val")
    batches = list(val)
    assert [len(images) for images, _ in batches] == [3, 1]
    got = [pair for images, masks in batches for pair in zip(images, masks)]
    assert len(got) == len(reader) and len({image.shape for image, _ in got}) > 1  # sizes differ
    for k, (image, mask) in enumerate(got):
        expected_image, expected_mask = reader[k]
        assert torch.equal(image, expected_image) and torch.equal(mask, expected_mask)


def test_class_names_and_mismatch(synthetic_voc):
    cfg = _cfg(synthetic_voc)
    assert class_names(cfg.data.classes) == list(VOC_CLASSES)
    assert class_names(_cfg(synthetic_voc, "data.classes=[a,b]").data.classes) == ["a", "b"]
    with pytest.raises(ConfigError, match="model.num_classes=21.*2 classes"):
        build_dataloaders(_cfg(synthetic_voc, "data.classes=[a,b]"))


def test_too_few_images_for_a_batch(synthetic_voc):
    with pytest.raises(DataError, match="12 usable images, fewer than data.batch_size=13"):
        build_dataloaders(_cfg(synthetic_voc, "data.batch_size=13"))


def test_synthetic_format_generates_on_first_use(tmp_path):
    root = tmp_path / "synth"
    cfg = load_config(None, ["data.format=synthetic", f"data.root={root}", "data.synthetic_train=6",
                             "data.synthetic_val=2", "data.synthetic_max_side=64", "data.crop_size=[32,32]",
                             "data.batch_size=2", "data.num_workers=0"])
    train, val = build_dataloaders(cfg)
    assert (root / "VOCdevkit" / "VOC2012" / "synthetic.json").is_file()
    assert len(train) == 3 and len(val) == 2


@pytest.mark.parametrize("workers", [0, 2])
def test_resize_on_device_finishes_to_the_loader_preset(synthetic_voc, workers):
    """data.resize_on=device: windows from the loader, finished by finish_windows, equal the loader-side preset."""
    # equal workers: persistent workers draw the loader's base seed once, not once per epoch, which
    # changes later epochs' shuffling
    common = ["data.batch_size=3", "data.scale_range=[0.5,2.0]", "data.crop_size=[48,64]",
              f"data.num_workers={workers}"]
    on_loader, _ = build_dataloaders(_cfg(synthetic_voc, *common))
    on_device, _ = build_dataloaders(_cfg(synthetic_voc, *common, "data.resize_on=device"))
    assert on_device.collate_fn is window_collate and on_loader.collate_fn is crop_collate
    flips = windows_smaller = 0
    for epoch in (0, 1):
        on_loader.dataset.set_epoch(epoch)
        on_device.dataset.set_epoch(epoch)
        for (images, masks), (windows, window_masks, geometry) in zip(on_loader, on_device, strict=True):
            pixels = sum(height * width for height, width, *_rest in geometry)
            assert len(geometry) == 3 and windows.shape == (3 * pixels,) and window_masks.shape == (pixels,)
            flips += sum(flip for *_rest, flip in geometry)
            windows_smaller += sum(height * width < 48 * 64 for height, width, *_rest in geometry)
            finished = finish_windows(windows, window_masks, geometry)
            assert torch.equal(finished[0], images) and torch.equal(finished[1], masks)
            for wrong in (geometry[:2], geometry + geometry[:1]):
                with pytest.raises(ValueError, match="geometry covers .* pass window_collate's"):
                    finish_windows(windows, window_masks, wrong)
    assert 0 < flips < 2 * 12 // 3 * 3 and windows_smaller > 0  # both flips drawn; windows really cut


def test_resize_on_device_is_a_no_op_without_a_rescale(synthetic_voc):
    for extra in (["data.preset=d2l"], ["data.scale_range=[1.0,1.0]"]):
        loader, _ = build_dataloaders(_cfg(synthetic_voc, "data.resize_on=device", *extra))
        assert loader.collate_fn is crop_collate and len(next(iter(loader))) == 2
    with pytest.raises(ConfigError, match="data.resize_on"):
        _cfg(synthetic_voc, "data.resize_on=gpu")


def test_a_crash_with_live_workers_still_exits(synthetic_voc, tmp_path):
    """Workers ignore SIGTERM (Slurm, see ignore_stop_signals). An uncaught exception keeps the
    loader iterator alive in its traceback until exit, and multiprocessing's exit handler then
    waited for those workers forever; the process must exit with the error instead."""
    script = tmp_path / "crash.py"
    script.write_text(textwrap.dedent(f"""
        from fcn_dist.config import load_config
        from fcn_dist.data import build_dataloaders
        from fcn_dist.process import loader_worker_init

        cfg = load_config(None, ["data.format=voc", "data.root={synthetic_voc}", "data.crop_size=[32,48]",
                                 "data.batch_size=2", "data.num_workers=2"])
        train, val = build_dataloaders(cfg, loader_worker_init())

        def loop():
            for k, batch in enumerate(train):
                if k == 1:
                    raise RuntimeError("crash in the training loop")

        loop()
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "RuntimeError: crash in the training loop" in proc.stderr
