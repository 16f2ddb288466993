import math

import pytest
import torch
import torch.nn.functional as F

from vldd_lightning.core.contrastive import DEFAULT_LOG_LOGIT_SCALE, clip_loss, in_batch_correct


def test_logit_scale_is_exp_of_log_inverse_temperature():
    assert math.exp(DEFAULT_LOG_LOGIT_SCALE) == pytest.approx(1 / 0.07)


def test_clip_loss_golden_value():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    # cosines: [[1/sqrt2, 0], [1/sqrt2, 1]], scale 2
    # rows: CE([1.414, 0], 0) = log(1 + e^-1.414) = 0.21763; CE([1.414, 2], 1) = log(1 + e^-0.586) = 0.44254
    # cols: CE([1.414, 1.414], 0) = log 2 = 0.69315; CE([0, 2], 1) = log(1 + e^-2) = 0.12693
    expected = 0.5 * ((0.21763 + 0.44254) / 2 + (0.69315 + 0.12693) / 2)
    assert clip_loss(image, text, 2.0).item() == pytest.approx(expected, abs=2e-5)


def test_clip_loss_matches_explicit_formula():
    torch.manual_seed(0)
    image, text = torch.randn(5, 8), torch.randn(5, 8)
    logits = 14.0 * F.normalize(image, dim=1) @ F.normalize(text, dim=1).T
    target = torch.arange(5)
    expected = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    assert torch.allclose(clip_loss(image, text, 14.0), expected)


def test_clip_loss_ignores_embedding_norms():
    torch.manual_seed(1)
    image, text = torch.randn(4, 6), torch.randn(4, 6)
    assert torch.allclose(clip_loss(image, text, 5.0), clip_loss(3 * image, 0.5 * text, 5.0))


def test_in_batch_correct_requires_both_directions():
    image = torch.tensor([[1.0, 0.0], [1.0, 0.1]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # pair 0: image 0 -> text 0 (1.0 > 0.0) but text 0 -> image 0 (1.0) vs image 1 (0.995): correct
    # pair 1: image 1 -> text 1 (0.0995) < text 0 (0.995): wrong
    assert in_batch_correct(image, text).tolist() == [True, False]


def test_in_batch_correct_counts_ties_as_wrong():
    same = torch.ones(3, 4)
    assert in_batch_correct(same, same).tolist() == [False, False, False]
