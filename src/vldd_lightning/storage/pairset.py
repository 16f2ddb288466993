"""Pair sets: distilled or selected (image, text embedding) pairs with their evaluation protocol.

``NAME.safetensors`` contains ``images`` (N, 3, H, W) in the encoder's normalised input space,
``text_embeddings`` (N, D) in the frozen text encoder's output space, and the scalar
learning rates ``lr_image`` and ``lr_text`` for training a student on them. ``NAME.json``
contains the metadata: kind and method, the data set and model identity the pairs belong to,
and the evaluation protocol, so that stage ``evaluate`` can reproduce it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vldd_lightning.errors import ArtifactError
from vldd_lightning.storage.tensors import describe_mismatch, load_tensors, save_tensors
from vldd_lightning.utils.atomic import atomic_write_json, read_json

FORMAT = "vldd.pairset"
VERSION = 1


@dataclass
class PairSet:
    images: Tensor
    text_embeddings: Tensor
    lr_image: float
    lr_text: float
    metadata: dict[str, Any]

    @property
    def num_pairs(self) -> int:
        return int(self.images.shape[0])


def save_pairset(path: Path, pairs: PairSet) -> Path:
    """Write the ``.json`` metadata, then ``path`` (.safetensors), whose presence marks completion."""
    if pairs.images.shape[0] != pairs.text_embeddings.shape[0]:
        raise ValueError("images and text embeddings must have the same number of pairs")
    metadata = {"format": FORMAT, "version": VERSION, "num_pairs": pairs.num_pairs, **pairs.metadata}
    tensors = {
        "images": pairs.images.float(),
        "text_embeddings": pairs.text_embeddings.float(),
        "lr_image": torch.tensor(float(pairs.lr_image)),
        "lr_text": torch.tensor(float(pairs.lr_text)),
    }
    atomic_write_json(path.with_suffix(".json"), metadata)
    save_tensors(path, tensors, metadata)
    return path


def load_pairset(path: Path) -> PairSet:
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ArtifactError(f"a pair set is a .safetensors file with a .json beside it, got {path}")
    metadata = read_json(path.with_suffix(".json"), "pair set metadata")
    if metadata.get("format") != FORMAT or metadata.get("version") != VERSION:
        raise ArtifactError(f"{path.with_suffix('.json')} is not version-{VERSION} vldd pair set metadata")
    tensors = load_tensors(path, "pair set")
    images, texts = tensors["images"], tensors["text_embeddings"]
    if images.ndim != 4 or texts.ndim != 2 or images.shape[0] != texts.shape[0]:
        raise ArtifactError(f"{path}: images {tuple(images.shape)} and text embeddings {tuple(texts.shape)} do not form pairs")
    if images.shape[0] != metadata["num_pairs"]:
        raise ArtifactError(f"{path} contains {images.shape[0]} pairs but its metadata records {metadata['num_pairs']}")
    lr_image, lr_text = float(tensors["lr_image"]), float(tensors["lr_text"])
    if not (lr_image > 0 and lr_text > 0):
        raise ArtifactError(f"{path}: learning rates must be positive, got lr_image={lr_image}, lr_text={lr_text}")
    return PairSet(images, texts, lr_image, lr_text, metadata)


def check_pairset_identity(pairs: PairSet, identity: dict[str, Any], path: Path) -> None:
    """Refuse a pair set made for another data set, model, image size or normalisation."""
    problems = describe_mismatch(identity, pairs.metadata.get("identity", {}))
    if problems:
        raise ArtifactError(
            f"the pair set {path} does not match this configuration:\n  " + "\n  ".join(problems)
            + "\nevaluate it with the dataset, encoder and text_encoder it was made with"
        )
    expected_shape = (3, identity["image_size"], identity["image_size"])
    if tuple(pairs.images.shape[1:]) != expected_shape:
        raise ArtifactError(f"{path}: images are {tuple(pairs.images.shape[1:])}, this encoder needs {expected_shape}")
    if pairs.text_embeddings.shape[1] != identity["text_dim"]:
        raise ArtifactError(
            f"{path}: text embeddings have {pairs.text_embeddings.shape[1]} dims, the text encoder "
            f"produces {identity['text_dim']}"
        )
