"""Image-text retrieval recall (TR@K, IR@K) with pessimistic tie-breaking.

TR@K: the fraction of images whose best-ranked own caption is among the top K captions.
IR@K: the fraction of captions whose own image is among the top K images.
Every tie is resolved against the correct item: an item counts as ranked above a correct
one whenever its score is greater than *or equal to* the correct score. Images may have
any number of captions, but each caption belongs to exactly one image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

DEFAULT_KS = (1, 5, 10)


def _check_inputs(similarity: Tensor, caption_to_image: Tensor) -> None:
    if similarity.ndim != 2:
        raise ValueError(f"similarity must be (images, captions), got shape {tuple(similarity.shape)}")
    num_images, num_captions = similarity.shape
    if caption_to_image.shape != (num_captions,):
        raise ValueError(
            f"caption_to_image must have one entry per caption ({num_captions}), "
            f"got shape {tuple(caption_to_image.shape)}"
        )
    if num_captions and (caption_to_image.min() < 0 or caption_to_image.max() >= num_images):
        raise ValueError(f"caption_to_image has indices outside [0, {num_images})")
    captions_per_image = torch.bincount(caption_to_image, minlength=num_images)
    if (captions_per_image == 0).any():
        missing = int((captions_per_image == 0).nonzero()[0])
        raise ValueError(f"image {missing} has no caption; every image needs at least one")
    if not torch.isfinite(similarity).all():
        raise ValueError("similarity contains NaN or infinite values; the embeddings diverged")


def text_retrieval_ranks(similarity: Tensor, caption_to_image: Tensor, chunk: int = 1024) -> Tensor:
    """Return, per image, the 0-based pessimistic rank of its best-ranked own caption.

    The rank is the number of other images' captions scored at least as high as the
    image's highest-scored own caption.
    """
    _check_inputs(similarity, caption_to_image)
    ranks = []
    for start in range(0, similarity.shape[0], chunk):
        rows = similarity[start : start + chunk]  # (b, C)
        image_index = torch.arange(start, start + rows.shape[0], device=rows.device)
        own = caption_to_image[None, :] == image_index[:, None]  # (b, C)
        best_own = rows.masked_fill(~own, -torch.inf).max(dim=1).values  # (b,)
        above = (rows >= best_own[:, None]) & ~own
        ranks.append(above.sum(dim=1))
    return torch.cat(ranks)


def image_retrieval_ranks(similarity: Tensor, caption_to_image: Tensor, chunk: int = 4096) -> Tensor:
    """Return, per caption, the 0-based pessimistic rank of its own image."""
    _check_inputs(similarity, caption_to_image)
    ranks = []
    for start in range(0, similarity.shape[1], chunk):
        columns = similarity[:, start : start + chunk]  # (I, c)
        owners = caption_to_image[start : start + chunk]
        own_score = columns.gather(0, owners[None, :])  # (1, c)
        # subtract the own image, which always ties with itself
        ranks.append((columns >= own_score).sum(dim=0) - 1)
    return torch.cat(ranks)


def recall_at_k(ranks: Tensor, ks: Sequence[int]) -> dict[int, float]:
    return {k: 100.0 * (ranks < k).double().mean().item() for k in ks}


def retrieval_metrics(
    similarity: Tensor, caption_to_image: Tensor, ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float]:
    """Compute TR@K and IR@K in percent, and their mean under the key ``r_mean``.

    Args:
        similarity: (I, C) image-caption scores; higher is more similar.
        caption_to_image: (C,) index of the image each caption belongs to.
    """
    similarity = similarity.float()
    caption_to_image = caption_to_image.to(device=similarity.device, dtype=torch.long)
    text_recall = recall_at_k(text_retrieval_ranks(similarity, caption_to_image), ks)
    image_recall = recall_at_k(image_retrieval_ranks(similarity, caption_to_image), ks)
    metrics = {f"tr@{k}": value for k, value in text_recall.items()}
    metrics |= {f"ir@{k}": value for k, value in image_recall.items()}
    metrics["r_mean"] = sum(metrics.values()) / len(metrics)
    return metrics
