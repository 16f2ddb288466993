"""Datasets of training pairs that accept ``(index, epoch)`` keys from EpochSeededSampler."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset

from vldd_lightning.utils.hashing import derive_seed


def _split_key(key: int | tuple[int, int]) -> tuple[int, int]:
    return key if isinstance(key, tuple) else (key, 0)


class TensorPairs(Dataset):
    """Pairs held in memory: images or features (P, ...) and text embeddings (P, D)."""

    def __init__(self, inputs: Tensor, text_embeddings: Tensor) -> None:
        if inputs.shape[0] != text_embeddings.shape[0]:
            raise ValueError("inputs and text embeddings must have one row per pair")
        self.inputs, self.text_embeddings = inputs, text_embeddings

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, Tensor, int]:
        index, _ = _split_key(key)
        return self.inputs[index], self.text_embeddings[index], index


class AugmentedFeaturePairs(Dataset):
    """Pairs whose image side is one of V precomputed augmented views of the image's features.

    With a frozen backbone, drawing a stored view per (epoch, pair) is augmentation from a
    finite pool of V views: the backbone then runs V times per image in total instead of
    once per epoch.
    """

    def __init__(self, view_features: Tensor, pair_images: Tensor, text_embeddings: Tensor, seed: int) -> None:
        self.view_features = view_features  # (V, I, F)
        self.pair_images = pair_images  # (P,)
        self.text_embeddings = text_embeddings  # (P, D)
        self.seed = seed

    def __len__(self) -> int:
        return int(self.pair_images.shape[0])

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, Tensor, int]:
        index, epoch = _split_key(key)
        views = self.view_features.shape[0]
        view = derive_seed(self.seed, "view", epoch, index) % views
        return self.view_features[view, self.pair_images[index]], self.text_embeddings[index], index


class IndexedImages(Dataset):
    """Images (or features) with their index, for retrieval evaluation."""

    def __init__(self, items: Dataset | Tensor) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.items[index], index


def pair_image_tensor(caption_to_image: list[int]) -> Tensor:
    return torch.tensor(caption_to_image, dtype=torch.long)
