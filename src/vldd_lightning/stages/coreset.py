"""Stage ``coreset``: select N real training pairs and write them as a pair set."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vldd_lightning.core.coresets import (
    pair_embeddings,
    select_forgetting,
    select_herding,
    select_k_center,
    select_random,
)
from vldd_lightning.data.images import ImageDataset
from vldd_lightning.errors import ConfigError
from vldd_lightning.stages.buffer import buffer_folder, load_buffer
from vldd_lightning.stages.common import RunState, artifact_dir
from vldd_lightning.stages.training import Protocol
from vldd_lightning.storage.pairset import PairSet, load_pairset, save_pairset

log = logging.getLogger(__name__)

CORESET_METHODS = ("random", "herding", "k_center", "forgetting")


def coreset_embeddings(state: RunState) -> Tensor:
    """Per-pair embeddings: normalised pretrained image features and text embeddings."""
    ctx = state.context
    owners = torch.tensor(ctx.splits["train"].caption_to_image)
    return pair_embeddings(ctx.image_features("train")[owners], ctx.text_embeddings("train"))


def select_pairs(state: RunState, method: str, num_pairs: int, seed: int) -> Tensor:
    """Indices of the selected training pairs (captions of the train split)."""
    population = state.context.splits["train"].num_captions
    if num_pairs > population:
        raise ConfigError(f"num_pairs={num_pairs} exceeds the {population} training pairs; lower num_pairs")
    if method == "random":
        return select_random(population, num_pairs, seed)
    if method == "herding":
        return select_herding(coreset_embeddings(state), num_pairs)
    if method == "k_center":
        return select_k_center(coreset_embeddings(state), num_pairs, seed)
    if method == "forgetting":
        events, learned = load_buffer(state).forgetting_statistics()
        if events.shape[0] != population:
            raise ConfigError(f"the buffer's forgetting statistics cover {events.shape[0]} pairs, the train split has {population}")
        return select_forgetting(events, learned, num_pairs, seed)
    raise ConfigError(f"coreset method {method!r} is invalid; choose one of {CORESET_METHODS}")


def coreset_path(state: RunState, method: str, num_pairs: int, seed: int) -> Path:
    parts: dict[str, Any] = {"identity": state.context.identity(), "method": method, "num_pairs": num_pairs, "seed": seed}
    if method == "forgetting":
        parts["buffer"] = str(buffer_folder(state))
    folder = artifact_dir(state.context, "coresets", f"{state.cfg.dataset.name}-{method}-n{num_pairs}-s{seed}", parts)
    return folder / "coreset.safetensors"


def make_coreset(state: RunState, method: str, num_pairs: int, seed: int) -> Path:
    """Select a coreset (or reuse a stored one) and return its pair set file."""
    path = coreset_path(state, method, num_pairs, seed)
    if path.is_file():
        load_pairset(path)  # raises on a corrupt file
        return path
    cfg, ctx = state.cfg, state.context
    indices = select_pairs(state, method, num_pairs, seed)
    split = ctx.splits["train"]
    image_paths = [split.image_paths[split.caption_to_image[i]] for i in indices.tolist()]
    dataset = ImageDataset(image_paths, ctx.eval_transform(), ctx.background)
    images = torch.stack([dataset[k] for k in range(len(dataset))])
    protocol = Protocol.from_config(cfg.evaluate.protocol)
    metadata = {
        "kind": "coreset",
        "method": method,
        "identity": ctx.identity(),
        "protocol": protocol.as_dict(),
        "seed": seed,
        "selected_indices": indices.tolist(),
        "selection_embedding": "normalised pretrained image feature + normalised text embedding"
        if method in ("herding", "k_center") else None,
    }
    texts = ctx.text_embeddings("train")[indices]
    save_pairset(path, PairSet(images, texts, protocol.lr_image, protocol.lr_text, metadata))
    log.info("selected %d pairs by %s (seed %d): %s", num_pairs, method, seed, path)
    return path


def run_coreset(state: RunState) -> dict[str, Any]:
    cfg = state.cfg
    method = cfg.coreset.method
    if method not in CORESET_METHODS:
        raise ConfigError(f"coreset.method={method!r} is invalid; choose one of {CORESET_METHODS}")
    path = make_coreset(state, method, cfg.num_pairs, cfg.seed)
    return {"coreset": str(path), "method": method, "num_pairs": cfg.num_pairs}
