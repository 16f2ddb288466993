"""Image loading, the train and eval transforms, and datasets of image-caption pairs."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset, Sampler
from torchvision import transforms as T

from vldd_lightning.errors import DataError
from vldd_lightning.utils.hashing import derive_seed


def load_rgb(path: Path, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Open an image as RGB, compositing any transparency onto ``background``."""
    try:
        with Image.open(path) as image:
            image.load()
            has_alpha = image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info)
            if has_alpha:
                rgba = image.convert("RGBA")
                canvas = Image.new("RGBA", rgba.size, (*background, 255))
                canvas.alpha_composite(rgba)
                return canvas.convert("RGB")
            return image.convert("RGB")
    except FileNotFoundError as error:
        raise DataError(f"image not found: {path}; check dataset.image_root") from error
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise DataError(f"image {path} is unreadable or corrupt ({error}); replace or remove it") from error


def eval_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> T.Compose:
    return T.Compose([
        T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(image_size),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def train_transform(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop_scale: tuple[float, float] = (0.5, 1.0),
    randaugment: tuple[int, int] | None = (2, 5),
) -> T.Compose:
    """Random resized crop, horizontal flip and RandAugment(num_ops, magnitude)."""
    steps: list[object] = [
        T.RandomResizedCrop(image_size, scale=crop_scale, interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
    ]
    if randaugment is not None:
        steps.append(T.RandAugment(num_ops=randaugment[0], magnitude=randaugment[1]))
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)


class EpochSeededSampler(Sampler[tuple[int, int]]):
    """Yield ``(index, epoch)`` with a permutation drawn from ``(seed, epoch)``.

    The dataset derives its augmentation seed from the same pair, so an epoch is replayed
    exactly after a resume. Each of ``num_replicas`` ranks takes every ``num_replicas``-th
    index of the permutation (padded by wrapping so that all ranks see the same count).
    """

    def __init__(self, size: int, seed: int, shuffle: bool = True, num_replicas: int = 1, rank: int = 0) -> None:
        if size <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.size // self.num_replicas)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, "permutation", self.epoch))
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        total = len(self) * self.num_replicas
        order = (order * (total // self.size + 1))[:total]
        for index in order[self.rank :: self.num_replicas]:
            yield index, self.epoch


class PairDataset(Dataset):
    """Real (image, caption embedding) pairs: one item per caption of a split.

    Items are ``(image, text_embedding, pair_index)``. Indexing with ``(index, epoch)``
    seeds the random transform from ``(seed, epoch, index)``.
    """

    def __init__(
        self,
        image_paths: Sequence[Path],
        pair_images: Sequence[int],
        text_embeddings: Tensor,
        transform: T.Compose,
        seed: int = 0,
        background: tuple[int, int, int] = (255, 255, 255),
    ) -> None:
        if len(pair_images) != text_embeddings.shape[0]:
            raise ValueError("pair_images and text_embeddings must have one row per pair")
        self.image_paths = list(image_paths)
        self.pair_images = list(pair_images)
        self.text_embeddings = text_embeddings
        self.transform = transform
        self.seed = seed
        self.background = background

    def __len__(self) -> int:
        return len(self.pair_images)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, Tensor, int]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        image = load_rgb(self.image_paths[self.pair_images[index]], self.background)
        torch.manual_seed(derive_seed(self.seed, "augment", epoch, index))
        return self.transform(image), self.text_embeddings[index], index


class ImageDataset(Dataset):
    """Images of a split under the eval transform, for embedding and feature caching."""

    def __init__(self, image_paths: Sequence[Path], transform: T.Compose,
                 background: tuple[int, int, int] = (255, 255, 255)) -> None:
        self.image_paths = list(image_paths)
        self.transform = transform
        self.background = background

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> Tensor:
        return self.transform(load_rgb(self.image_paths[index], self.background))
