"""Training a dual encoder on pairs and measuring its retrieval on the val and test splits."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from vldd_lightning.context import ExperimentContext
from vldd_lightning.data.images import EpochSeededSampler, ImageDataset, PairDataset
from vldd_lightning.data.pairs import (
    AugmentedFeaturePairs,
    IndexedImages,
    TensorPairs,
    pair_image_tensor,
)
from vldd_lightning.lit.contrastive import (
    BestValidationState,
    ContrastiveModule,
    OptimSettings,
    RetrievalTarget,
)
from vldd_lightning.stages.common import RunState, build_trainer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Protocol:
    epochs: int
    batch_size: int
    momentum: float
    weight_decay: float
    lr_image: float
    lr_text: float
    select_on_val: bool = True
    val_every: int = 5

    @classmethod
    def from_config(cls, cfg: Any, lr_image: float | None = None, lr_text: float | None = None) -> Protocol:
        return cls(
            epochs=int(cfg.epochs), batch_size=int(cfg.batch_size), momentum=float(cfg.momentum),
            weight_decay=float(cfg.weight_decay),
            lr_image=float(cfg.lr_image if lr_image is None else lr_image),
            lr_text=float(cfg.lr_text if lr_text is None else lr_text),
            select_on_val=bool(cfg.select_on_val), val_every=int(cfg.val_every),
        )

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def real_train_pairs(ctx: ExperimentContext, augment: dict[str, Any] | None, seed: int,
                     view_seed: int = 0) -> Dataset:
    """The whole training split as a dataset, in the fastest form the encoder allows.

    Frozen backbone: precomputed features (augmented views when ``augment`` is given; the
    pool of views is drawn with ``view_seed`` and shared, each run picks views with ``seed``).
    Trainable backbone: images through the train or eval transform.
    """
    split = ctx.splits["train"]
    texts = ctx.text_embeddings("train")
    owners = pair_image_tensor(split.caption_to_image)
    if ctx.frozen_backbone:
        if augment is None:
            return TensorPairs(ctx.image_features("train")[owners], texts)
        views = ctx.image_features("train", views=int(augment["views"]), augment=augment, seed=view_seed)
        return AugmentedFeaturePairs(views, owners, texts, seed)
    transform = ctx.train_transform(augment) if augment is not None else ctx.eval_transform()
    return PairDataset(split.image_paths, split.caption_to_image, texts, transform, seed, ctx.background)


def retrieval_targets(ctx: ExperimentContext) -> dict[str, RetrievalTarget]:
    return {
        name: RetrievalTarget(ctx.text_embeddings(name), torch.tensor(ctx.splits[name].caption_to_image))
        for name in ("val", "test")
    }


def retrieval_loader(ctx: ExperimentContext, split: str) -> DataLoader:
    if ctx.frozen_backbone:
        items: Any = ctx.image_features(split)
    else:
        items = ImageDataset(ctx.splits[split].image_paths, ctx.eval_transform(), ctx.background)
    return DataLoader(IndexedImages(items), batch_size=256, num_workers=0 if ctx.frozen_backbone else ctx.cfg.trainer.num_workers)


def train_loader(ctx: ExperimentContext, dataset: Dataset, batch_size: int, seed: int,
                 world_size: int = 1, rank: int = 0) -> DataLoader:
    sampler = EpochSeededSampler(len(dataset), seed, shuffle=True, num_replicas=world_size, rank=rank)
    workers = 0 if isinstance(dataset, TensorPairs | AugmentedFeaturePairs) else ctx.cfg.trainer.num_workers
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      drop_last=False, persistent_workers=workers > 0)


def train_and_test(
    state: RunState,
    dataset: Dataset,
    protocol: Protocol,
    seed: int,
    use_logger: bool = False,
) -> dict[str, Any]:
    """Train a fresh student on ``dataset`` and return its test metrics.

    With ``select_on_val`` the weights of the best validation epoch are tested; the test
    split is measured once, at the end, and selects nothing.
    """
    ctx = state.context
    model = ctx.new_model(seed)
    module = ContrastiveModule(
        model,
        OptimSettings(protocol.lr_image, protocol.lr_text, protocol.momentum, protocol.weight_decay),
        ctx.logit_scale,
        seed,
        retrieval_targets(ctx),
    )
    best = BestValidationState()
    trainer = build_trainer(
        state.cfg, state.run_dir, state.loggers if use_logger else [],
        callbacks=[best], max_epochs=protocol.epochs,
        check_val_every_n_epoch=protocol.val_every if protocol.select_on_val else 1,
        single_device=True, limit_val_batches=1.0 if protocol.select_on_val else 0,
    )
    loader = train_loader(ctx, dataset, protocol.batch_size, seed)
    val_loader = retrieval_loader(ctx, "val") if protocol.select_on_val else None
    trainer.fit(module, loader, val_loader)
    if protocol.select_on_val and protocol.epochs % protocol.val_every:
        trainer.validate(module, val_loader, verbose=False)
    if protocol.select_on_val:
        best.restore(module)
    trainer.test(module, retrieval_loader(ctx, "test"), verbose=False)
    metrics = dict(module.last_metrics["test"])
    return {"metrics": metrics, "best_epoch": best.best_epoch, "best_val_r_mean": best.best_score if best.best_epoch is not None else None}
