"""Shared pytest fixtures (data; a clean wandb state between tests)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _no_wandb_service_left_behind():
    """After each test: stop any wandb service an in-process test started and forget its address.

    wandb puts its service's socket in ``os.environ["WANDB_SERVICE"]``; left there, every later
    subprocess (fcn-train, fcn-eval) inherits it and fails to connect once that service is gone.
    """
    yield
    if "wandb" in sys.modules:
        sys.modules["wandb"].teardown()
    os.environ.pop("WANDB_SERVICE", None)


@pytest.fixture(scope="session")
def synthetic_voc(tmp_path_factory) -> Path:
    """A small synthetic VOC set: 12 train and 4 val images, longest side 96 px, seed 0.

    Returns the folder holding ``VOCdevkit/VOC2012`` (a valid ``data.root``). Shared by the
    whole session: read it, never modify it (copy it with ``shutil.copytree`` first).
    """
    from fcn_dist.data.synthetic import make_synthetic_voc

    root = tmp_path_factory.mktemp("synthetic_voc")
    make_synthetic_voc(root, num_train=12, num_val=4, seed=0, max_side=96)
    return root


@pytest.fixture(scope="session")
def huge_jpeg(tmp_path_factory) -> Path:
    """A 14000x14000 grayscale JPEG (196 Mpx, above Pillow's 179 Mpx decompression-bomb limit).

    Solid grey, so it is ~2 MB on disk; writing it holds the 196 MB image once per session.
    Read it, never modify it.
    """
    from PIL import Image

    path = tmp_path_factory.mktemp("huge") / "huge.jpg"
    Image.new("L", (14000, 14000), 128).save(path, quality=50)
    return path
