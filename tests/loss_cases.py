"""The losses' sharding cases, shared by tests/test_losses.py and its torchrun worker (dist_loss_worker.py)."""

import torch

from fcn_dist.config import OptimConfig

NUM_CLASSES = 5
WEIGHTS = [0.5, 1.0, 2.0, 3.0, 0.25]
CASES = {
    "ce": ("ce", "none"),
    "ce-weighted": ("ce", WEIGHTS),
    "dice": ("dice", "none"),
    "dice-weighted": ("dice", WEIGHTS),
    "ce+dice": ("ce+dice", "none"),
    "ce+dice-weighted": ("ce+dice", WEIGHTS),
    "focal": ("focal", "none"),
    "focal-weighted": ("focal", WEIGHTS),
}
"""name: (optim.loss, optim.class_weights)."""
GLOBAL_BATCH = 4
"""2 processes x batch 2, or 1 process x batch 4."""


def optim_config(case: str) -> OptimConfig:
    loss, weights = CASES[case]
    return OptimConfig(loss=loss, class_weights=weights, focal_gamma=2.0)


def loss_case_model() -> torch.nn.Module:
    """A small conv net without BatchNorm: a sample's logits do not depend on the rest of its batch."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, NUM_CLASSES, 1))


def loss_case_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Images (4, 3, 12, 12) and masks (4, 12, 12) whose halves differ: the first two samples are
    classes 0-1 with ~40% void, the last two classes 1-4 with ~5% void, so per-half normalisers
    and per-class sums differ from the whole batch's."""
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(GLOBAL_BATCH, 3, 12, 12, generator=generator)
    first = torch.randint(0, 2, (2, 12, 12), generator=generator)
    second = torch.randint(1, NUM_CLASSES, (2, 12, 12), generator=generator)
    masks = torch.cat([first, second])
    void = torch.rand(GLOBAL_BATCH, 12, 12, generator=generator) < torch.tensor([0.4, 0.4, 0.05, 0.05]).view(-1, 1, 1)
    return images, torch.where(void, 255, masks).to(torch.uint8)
