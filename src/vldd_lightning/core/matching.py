"""The bi-trajectory matching loss and the expert segment it compares against."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class TrajectorySegment:
    """Start and target snapshots of one expert, per modality, as flat vectors."""

    image_start: Tensor
    image_target: Tensor
    text_start: Tensor
    text_target: Tensor


@dataclass(frozen=True)
class MatchingWeights:
    """Weights of the image and text terms; zero gives the single-modality ablations."""

    image: float = 1.0
    text: float = 1.0


def _normalised_distance(end: Tensor, target: Tensor, start: Tensor, side: str) -> Tensor:
    denominator = (start - target).pow(2).sum()
    if not torch.isfinite(denominator) or denominator <= 0:
        raise ValueError(
            f"the expert's {side} parameters did not move between the start and target "
            f"snapshots (squared distance {denominator.item():.3g}); train the experts with a "
            "larger learning rate or more epochs"
        )
    return (end - target).pow(2).sum() / denominator.detach()


def matching_loss(
    image_end: Tensor,
    text_end: Tensor,
    segment: TrajectorySegment,
    weights: MatchingWeights,
) -> tuple[Tensor, Tensor, Tensor]:
    """Return (total, image term, text term) of the normalised matching loss.

    L = w_img * ||theta_S - theta*||^2 / ||theta_0 - theta*||^2
      + w_txt * ||phi_S - phi*||^2 / ||phi_0 - phi*||^2
    A term with zero weight is neither computed nor required to have moved.
    """
    zero = image_end.new_zeros(())
    image_term = (
        _normalised_distance(image_end, segment.image_target, segment.image_start, "image")
        if weights.image
        else zero
    )
    text_term = (
        _normalised_distance(text_end, segment.text_target, segment.text_start, "text")
        if weights.text
        else zero
    )
    return weights.image * image_term + weights.text * text_term, image_term, text_term
