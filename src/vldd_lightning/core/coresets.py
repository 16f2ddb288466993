"""Coreset selection of real training pairs: random, herding, k-center and forgetting.

Herding and k-center run on one embedding per pair: the L2-normalised pooled feature of
the pretrained image backbone, concatenated with the L2-normalised frozen text embedding
of the pair's caption (so both modalities weigh equally). Both are greedy, take O(N n d)
time for N picks among n pairs of dimension d, and O(n d) memory: each pick costs one
matrix-vector product and no n x n matrix is ever formed. The products run in the
embeddings' dtype and the running scores accumulate in float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_budget(num_pairs: int, population: int) -> None:
    if not 1 <= num_pairs <= population:
        raise ValueError(f"cannot select {num_pairs} pairs from {population}; choose 1 <= num_pairs <= {population}")


def pair_embeddings(image_features: Tensor, text_embeddings: Tensor) -> Tensor:
    """Concatenate normalised image features (n, F) and text embeddings (n, D) into (n, F + D)."""
    return torch.cat([F.normalize(image_features.float(), dim=1), F.normalize(text_embeddings.float(), dim=1)], dim=1)


def _squared_norms(x: Tensor, chunk: int) -> Tensor:
    """Row-wise squared norms in float64, computed in chunks to bound the temporary memory."""
    return torch.cat([x[i : i + chunk].double().pow(2).sum(dim=1) for i in range(0, x.shape[0], chunk)])


def select_random(population: int, num_pairs: int, seed: int) -> Tensor:
    _check_budget(num_pairs, population)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(population, generator=generator)[:num_pairs]


@torch.no_grad()
def select_herding(embeddings: Tensor, num_pairs: int, chunk: int = 8192) -> Tensor:
    """Greedy herding: each pick makes the running mean of the picks closest to the data mean.

    At pick t (1-based) with picked sum s, choose the unpicked i minimising
    ||t * mu - s - x_i||^2 = const - 2 <t * mu - s, x_i> + ||x_i||^2. The scores <mu, x_i>
    and <s, x_i> are kept as vectors and updated with one product per pick. Ties go to the
    lowest index, so the result is deterministic.
    """
    n = embeddings.shape[0]
    _check_budget(num_pairs, n)
    x = embeddings
    squared_norms = _squared_norms(x, chunk)
    mean_scores = (x @ x.mean(dim=0)).double()  # <mu, x_i>
    picked_scores = torch.zeros(n, dtype=torch.float64)  # <s, x_i>
    available = torch.ones(n, dtype=torch.bool)
    picks = []
    for t in range(1, num_pairs + 1):
        objective = squared_norms - 2 * (t * mean_scores - picked_scores)
        objective[~available] = torch.inf
        pick = int(torch.argmin(objective))
        picks.append(pick)
        available[pick] = False
        for start in range(0, n, chunk):
            picked_scores[start : start + chunk] += (x[start : start + chunk] @ x[pick]).double()
    return torch.tensor(picks)


@torch.no_grad()
def select_k_center(embeddings: Tensor, num_pairs: int, seed: int, chunk: int = 8192) -> Tensor:
    """Greedy k-center (farthest-point) selection in Euclidean distance.

    The first centre is drawn with ``seed``; each next one is the pair farthest from all
    chosen centres, ties going to the lowest index.
    """
    n = embeddings.shape[0]
    _check_budget(num_pairs, n)
    x = embeddings
    squared_norms = _squared_norms(x, chunk)
    first = int(torch.randint(n, (1,), generator=torch.Generator().manual_seed(seed)))
    picks = [first]
    min_distance = torch.full((n,), torch.inf, dtype=torch.float64)
    for _ in range(num_pairs - 1):
        centre = x[picks[-1]]
        centre_norm = centre.double().pow(2).sum()
        for start in range(0, n, chunk):
            block = x[start : start + chunk]
            distance = squared_norms[start : start + chunk] - 2 * (block @ centre).double() + centre_norm
            min_distance[start : start + chunk] = torch.minimum(min_distance[start : start + chunk], distance.clamp_min(0))
        min_distance[picks[-1]] = -1.0  # never pick a centre twice
        picks.append(int(torch.argmax(min_distance)))
    return torch.tensor(picks)


def record_presentation(
    last_correct: Tensor, forgetting_events: Tensor, ever_correct: Tensor, indices: Tensor, correct: Tensor
) -> None:
    """Update forgetting statistics in place after pairs ``indices`` were presented.

    A forgetting event is a presentation at which a pair is retrieved wrongly after it was
    retrieved correctly at its previous presentation.
    """
    forgotten = last_correct[indices] & ~correct
    forgetting_events[indices] += forgotten.to(forgetting_events.dtype)
    last_correct[indices] = correct
    ever_correct[indices] |= correct


def select_forgetting(events: Tensor, ever_learned: Tensor, num_pairs: int, seed: int) -> Tensor:
    """Keep the most forgotten pairs, as in "An Empirical Study of Example Forgetting".

    Pairs never retrieved correctly during expert training count as forgotten infinitely
    often and rank first. Ties are broken by a random order drawn with ``seed``.
    """
    n = events.shape[0]
    _check_budget(num_pairs, n)
    score = events.double().clone()
    score[~ever_learned.bool()] = torch.inf
    tie_break = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    # sort by the tie-break order first, then stably by descending score
    order = tie_break[torch.argsort(score[tie_break], descending=True, stable=True)]
    return order[:num_pairs]
