"""Confusion matrix and scores against hand-computed values."""

import pytest
import torch

from fcn_dist.metrics import compute_scores, confusion_matrix

# 4 classes; two void pixels; class 2 only predicted; class 3 in neither labels nor predictions
LABELS = torch.tensor([[0, 0, 0, 1], [1, 255, 255, 0]], dtype=torch.uint8)
PREDS = torch.tensor([[0, 0, 1, 1], [2, 0, 2, 0]], dtype=torch.int64)
EXPECTED_CM = [[3, 1, 0, 0],
               [0, 1, 1, 0],
               [0, 0, 0, 0],
               [0, 0, 0, 0]]


def test_confusion_matrix_by_hand_ignores_void():
    cm = confusion_matrix(PREDS, LABELS, num_classes=4)
    assert cm.dtype == torch.int64
    assert cm.tolist() == EXPECTED_CM
    assert int(cm.sum()) == 6  # 8 pixels minus 2 void


def test_confusion_matrix_any_shape_and_sums_over_images():
    batch = confusion_matrix(PREDS.reshape(2, 1, 4), LABELS.reshape(2, 1, 4), 4)
    parts = confusion_matrix(PREDS[0], LABELS[0], 4) + confusion_matrix(PREDS[1], LABELS[1], 4)
    assert batch.tolist() == EXPECTED_CM
    assert parts.tolist() == EXPECTED_CM


def test_confusion_matrix_custom_ignore_index():
    cm = confusion_matrix(torch.tensor([1, 1, 0]), torch.tensor([0, 1, 3]), 2, ignore_index=3)
    assert cm.tolist() == [[0, 1], [0, 1]]


def test_scores_by_hand():
    scores = compute_scores(torch.tensor(EXPECTED_CM))
    # IoU = tp / (gt + pred - tp): 3/(4+3-3), 1/(2+2-1), 0/(0+1-0), 0/0 -> None
    assert scores["per_class_IoU"][0] == pytest.approx(3 / 4, abs=1e-15)
    assert scores["per_class_IoU"][1] == pytest.approx(1 / 3, abs=1e-15)
    assert scores["per_class_IoU"][2] == 0.0  # only in predictions: IoU 0, counted in the mean
    assert scores["per_class_IoU"][3] is None  # in neither: null, left out of the mean
    assert scores["mIoU"] == pytest.approx((3 / 4 + 1 / 3 + 0) / 3, abs=1e-15)
    assert scores["pixel_accuracy"] == pytest.approx(4 / 6, abs=1e-15)
    assert scores["mean_accuracy"] == pytest.approx((3 / 4 + 1 / 2) / 2, abs=1e-15)  # classes with labels
    assert scores["fwIoU"] == pytest.approx(4 / 6 * 3 / 4 + 2 / 6 * 1 / 3, abs=1e-15)
    assert set(scores) == {"mIoU", "pixel_accuracy", "mean_accuracy", "fwIoU", "mDice", "mFscore", "per_class_IoU",
                           "per_class_Dice", "per_class_Fscore"}
    assert all(type(scores[k]) is float for k in ("mIoU", "pixel_accuracy", "mean_accuracy", "fwIoU", "mDice",
                                                  "mFscore"))


def test_dice_and_fscore_by_hand_absent_classes_left_out():
    scores = compute_scores(torch.tensor(EXPECTED_CM))
    # Dice = 2TP / (2TP + FP + FN): class 0: 6/(6+0+1), class 1: 2/(2+1+1), class 2 (only predicted): 0/(0+1+0),
    # class 3 (in neither): 0/0 -> None, left out of the mean
    assert scores["per_class_Dice"][:3] == pytest.approx([6 / 7, 2 / 4, 0.0], abs=1e-15)
    assert scores["per_class_Dice"][3] is None
    assert scores["mDice"] == pytest.approx((6 / 7 + 1 / 2 + 0) / 3, abs=1e-15)
    # F1 from precision and recall: class 0: P = 3/3, R = 3/4 -> 2PR/(P+R) = 6/7; class 1: P = 1/2, R = 1/2 -> 1/2;
    # class 2: P = 0/1, R undefined (no label) -> 0; class 3: None
    assert scores["per_class_Fscore"][:3] == pytest.approx([6 / 7, 1 / 2, 0.0], abs=1e-15)
    assert scores["per_class_Fscore"][3] is None
    assert scores["mFscore"] == pytest.approx((6 / 7 + 1 / 2) / 3, abs=1e-15)


def test_fscore_of_a_class_labelled_but_never_predicted_is_zero_and_counts():
    # class 0: 2 right, 1 predicted as 1; class 1: 1 labelled, never predicted right (predicted 0); class 2 absent
    cm = torch.tensor([[2, 1, 0], [1, 0, 0], [0, 0, 0]])
    scores = compute_scores(cm)
    # class 0: P = 2/3, R = 2/3 -> F = 2/3, Dice = 4/(4+1+1); class 1: TP 0, P = 0/1, R = 0/1 -> F 0, Dice 0
    assert scores["per_class_Fscore"] == pytest.approx([2 / 3, 0.0, None], abs=1e-15)
    assert scores["per_class_Dice"] == pytest.approx([4 / 6, 0.0, None], abs=1e-15)
    assert scores["mFscore"] == pytest.approx(1 / 3, abs=1e-15) and scores["mDice"] == pytest.approx(1 / 3, abs=1e-15)
    # a class labelled and never predicted at all (an empty column): precision 0/0 is taken as 0, so F = 0
    scores = compute_scores(torch.tensor([[3, 0], [2, 0]]))
    assert scores["per_class_Fscore"] == pytest.approx([2 * 1 * 0.6 / 1.6, 0.0], abs=1e-15)
    assert scores["per_class_Dice"] == pytest.approx([6 / 8, 0.0], abs=1e-15)
    assert scores["mFscore"] == pytest.approx(0.75 / 2, abs=1e-15)


def test_perfect_prediction_scores_one():
    labels = torch.tensor([0, 1, 2, 2, 255])
    preds = torch.tensor([0, 1, 2, 2, 1])
    scores = compute_scores(confusion_matrix(preds, labels, 3))
    assert scores["mIoU"] == scores["pixel_accuracy"] == scores["mean_accuracy"] == scores["fwIoU"] == 1.0
    assert scores["mDice"] == scores["mFscore"] == 1.0
    assert scores["per_class_IoU"] == scores["per_class_Dice"] == scores["per_class_Fscore"] == [1.0, 1.0, 1.0]


def test_out_of_range_ids_are_errors():
    with pytest.raises(ValueError, match="label 7"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 7]), 3)
    with pytest.raises(ValueError, match="prediction 3"):
        confusion_matrix(torch.tensor([0, 3]), torch.tensor([0, 1]), 3)
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(torch.zeros(2, 3), torch.zeros(3, 2), 3)


def test_empty_or_non_square_matrix_is_an_error():
    with pytest.raises(ValueError, match="no labelled pixels"):
        compute_scores(confusion_matrix(torch.tensor([1]), torch.tensor([255]), 2))
    with pytest.raises(ValueError, match=r"\(C, C\)"):
        compute_scores(torch.zeros(2, 3, dtype=torch.int64))
