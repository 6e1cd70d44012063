"""The training losses: each against a reference written here, void ignored, and exact under sharding."""

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from eval_helpers import run_torchrun

from fcn_dist.config import OptimConfig
from fcn_dist.losses import (build_loss, dice_loss, focal_loss, segmentation_loss, weighted_cross_entropy)

sys.path.insert(0, str(Path(__file__).parent))
from loss_cases import CASES, NUM_CLASSES, loss_case_batch, loss_case_model, optim_config  # noqa: E402

C = 4
W = [0.5, 2.0, 1.0, 3.0]


@pytest.fixture(scope="module")
def case():
    """Logits (2, 4, 3, 5) and masks with void pixels; class 3 is never labelled."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, C, 3, 5, generator=generator) * 2
    masks = torch.randint(0, 3, (2, 3, 5), generator=generator).to(torch.uint8)
    masks[0, 0, :3] = 255
    masks[1, 2, 1] = 255
    return logits, masks


def _pixels(logits, masks):
    """(log-softmax list of C floats, label) per labelled pixel, computed with math in float64."""
    out = []
    for b in range(masks.shape[0]):
        for y in range(masks.shape[1]):
            for x in range(masks.shape[2]):
                label = int(masks[b, y, x])
                if label == 255:
                    continue
                z = [float(logits[b, c, y, x]) for c in range(logits.shape[1])]
                top = max(z)
                lse = top + math.log(sum(math.exp(v - top) for v in z))
                out.append(([v - lse for v in z], label))
    return out


def test_plain_ce_is_the_sum_over_labelled_pixels_over_all_pixels(case):
    logits, masks = case
    reference = sum(-log_p[label] for log_p, label in _pixels(logits, masks)) / masks.numel()
    assert float(segmentation_loss(logits, masks)) == pytest.approx(reference, rel=1e-6)
    assert build_loss(OptimConfig(), C) is segmentation_loss  # the default run computes exactly what it did


def test_weighted_ce_is_pytorchs_weight_semantic(case):
    logits, masks = case
    pixels = _pixels(logits, masks)
    reference = sum(-W[label] * log_p[label] for log_p, label in pixels) / sum(W[label] for _, label in pixels)
    loss = weighted_cross_entropy(logits, masks, torch.tensor(W))
    assert float(loss) == pytest.approx(reference, rel=1e-6)
    torch_mean = F.cross_entropy(logits, masks.long(), weight=torch.tensor(W), ignore_index=255)
    assert float(loss) == pytest.approx(float(torch_mean), rel=1e-6)
    built = build_loss(OptimConfig(class_weights=W), C)
    assert float(built(logits, masks)) == float(loss)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("weights", [None, W])
def test_focal_is_lin_et_al_over_labelled_pixels(case, gamma, weights):
    logits, masks = case
    pixels = _pixels(logits, masks)
    w = weights or [1.0] * C
    reference = (sum(-w[label] * (1 - math.exp(log_p[label])) ** gamma * log_p[label] for log_p, label in pixels)
                 / sum(w[label] for _, label in pixels))
    weight_t = None if weights is None else torch.tensor(weights)
    assert float(focal_loss(logits, masks, gamma, weight_t)) == pytest.approx(reference, rel=1e-6)
    if gamma == 0:  # gamma 0: cross-entropy with the weight= semantic (mean over labelled pixels without weights)
        ce = F.cross_entropy(logits, masks.long(), weight=weight_t, ignore_index=255)
        assert float(focal_loss(logits, masks, 0.0, weight_t)) == pytest.approx(float(ce), rel=1e-6)


@pytest.mark.parametrize("weights", [None, W])
def test_dice_is_one_minus_the_mean_soft_dice_of_the_labelled_classes(case, weights):
    logits, masks = case
    pixels = _pixels(logits, masks)
    w = weights or [1.0] * C
    terms = []
    for c in range(C):
        labelled = sum(1 for _, label in pixels if label == c)
        if not labelled:
            continue  # class 3: predicted with some probability everywhere, never labelled: no term
        intersection = sum(math.exp(log_p[c]) for log_p, label in pixels if label == c)
        predicted = sum(math.exp(log_p[c]) for log_p, _ in pixels)
        terms.append((w[c], 2 * intersection / (predicted + labelled)))
    assert len(terms) == 3
    reference = 1 - sum(wc * d for wc, d in terms) / sum(wc for wc, _ in terms)
    weight_t = None if weights is None else torch.tensor(weights)
    assert float(dice_loss(logits, masks, weight_t)) == pytest.approx(reference, rel=1e-6)


def test_ce_plus_dice_is_their_sum(case):
    logits, masks = case
    plain = build_loss(OptimConfig(loss="ce+dice"), C)(logits, masks)
    assert float(plain) == pytest.approx(float(segmentation_loss(logits, masks) + dice_loss(logits, masks)), rel=1e-7)
    weighted = build_loss(OptimConfig(loss="ce+dice", class_weights=W), C)(logits, masks)
    w = torch.tensor(W)
    expected = weighted_cross_entropy(logits, masks, w) + dice_loss(logits, masks, w)
    assert float(weighted) == pytest.approx(float(expected), rel=1e-7)


@pytest.mark.parametrize("name", list(CASES))
def test_void_pixels_take_no_part(case, name):
    """Changing the logits of void pixels changes no loss, and their gradient is exactly 0."""
    logits, masks = case
    loss_fn = build_loss(OptimConfig(loss=CASES[name][0], class_weights=W if "weighted" in name else "none"), C)
    void = (masks == 255).unsqueeze(1).expand_as(logits)
    moved = torch.where(void, logits + 7 * torch.randn_like(logits), logits)
    assert float(loss_fn(moved, masks)) == pytest.approx(float(loss_fn(logits, masks)), rel=1e-6)
    base = logits.clone().requires_grad_()
    loss_fn(base, masks).backward()
    assert torch.all(base.grad[void] == 0) and base.grad[~void].abs().sum() > 0


@pytest.mark.parametrize("name", list(CASES))
def test_a_batch_without_labelled_pixels_gives_zero_and_a_zero_gradient(name):
    loss_fn = build_loss(OptimConfig(loss=CASES[name][0], class_weights=W if "weighted" in name else "none"), C)
    logits = torch.randn(1, C, 4, 4, requires_grad=True)
    loss = loss_fn(logits, torch.full((1, 4, 4), 255, dtype=torch.uint8))
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.all(logits.grad == 0)


def test_unresolved_auto_weights_are_refused():
    with pytest.raises(ValueError, match="resolved"):
        build_loss(OptimConfig(class_weights="auto"), C)


@pytest.mark.slow
def test_two_processes_with_batch_b_give_the_gradient_of_one_process_with_2b(tmp_path):
    """DDP on 2 gloo processes (batch 2 each), the loss built as fcn_dist.train builds it, against one process
    with the batch of 4, for every loss and weighted variant."""
    worker = Path(__file__).parent / "dist_loss_worker.py"
    proc = run_torchrun([worker, tmp_path], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    images, masks = loss_case_batch()
    for name in CASES:
        model = loss_case_model()
        loss = build_loss(optim_config(name), NUM_CLASSES)(model(images), masks)
        loss.backward()
        reference = {key: p.grad for key, p in model.named_parameters()}
        scale = max(float(g.abs().max()) for g in reference.values())
        # Both sides sum the same fp32 terms (<= 576 pixels per sum) in another order, so they differ by a few
        # eps of the largest gradient (1.5e-7 of it measured); 1e-5 of it leaves 60x. Without the global sums
        # (each process normalising by itself) the gradients are off by 13% to 175% of it.
        tolerance = 1e-5 * scale
        for key, ref in reference.items():
            assert torch.equal(ranks[0][name]["grads"][key], ranks[1][name]["grads"][key]), (name, key)
            assert float((ranks[0][name]["grads"][key] - ref).abs().max()) <= tolerance, (name, key)
        # train/loss is the mean over processes: it is the one-process loss
        mean_loss = (ranks[0][name]["loss"] + ranks[1][name]["loss"]) / 2
        assert float(mean_loss) == pytest.approx(float(loss), rel=1e-6), name
        naive = max(float((ranks[0][name]["naive_grads"][key] - ref).abs().max()) for key, ref in reference.items())
        if name == "ce":  # the plain CE divides by all pixels, the same count on every process: exact without sums
            assert naive <= tolerance
        else:  # the test sees a loss that forgets the global sums
            assert naive > 1000 * tolerance, name
