"""The symmetric InfoNCE (CLIP) loss shared by experts, students and evaluation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# s = log(1/0.07): the fixed log logit scale of CLIP's initialisation; logits = exp(s) * cos.
DEFAULT_LOG_LOGIT_SCALE = math.log(1 / 0.07)


def clip_loss(image_emb: Tensor, text_emb: Tensor, logit_scale: float | Tensor) -> Tensor:
    """Symmetric cross-entropy over the cosine-similarity matrix of a batch of pairs.

    Args:
        image_emb: (B, E) image embeddings, not necessarily normalised.
        text_emb: (B, E) text embeddings; row i is the caption paired with image i.
        logit_scale: the multiplier of the cosine, exp(s) and not s.
    """
    image_emb = F.normalize(image_emb, dim=-1)
    text_emb = F.normalize(text_emb, dim=-1)
    logits = logit_scale * image_emb @ text_emb.T  # (B, B)
    targets = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def in_batch_correct(image_emb: Tensor, text_emb: Tensor) -> Tensor:
    """Return a (B,) bool: pair i is top-1 in both directions of the in-batch retrieval.

    Ties count as wrong, so a collapsed model is never credited.
    """
    sim = F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T
    own = sim.diagonal()
    others = sim.clone()
    others.fill_diagonal_(-math.inf)
    image_to_text = own > others.max(dim=1).values
    text_to_image = own > others.max(dim=0).values
    return image_to_text & text_to_image
