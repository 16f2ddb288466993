"""Callbacks: trajectory snapshots, atomic checkpoints and synthetic-image tables."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from vldd_lightning.utils.atomic import atomic_path

log = logging.getLogger(__name__)


class TrajectoryRecorder(L.Callback):
    """Record the flat trainable parameters of ``pl_module.model`` before training and after
    every epoch. The snapshots travel in the checkpoint, so a resumed expert keeps them."""

    def __init__(self) -> None:
        self.image_snapshots: list[Tensor] = []
        self.text_snapshots: list[Tensor] = []

    def _record(self, pl_module: L.LightningModule) -> None:
        model = pl_module.model
        params = dict(model.named_parameters())
        self.image_snapshots.append(model.image_layout.flatten(params).detach().cpu().clone())
        self.text_snapshots.append(model.text_layout.flatten(params).detach().cpu().clone())

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.image_snapshots:
            self._record(pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"image": list(self.image_snapshots), "text": list(self.text_snapshots)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.image_snapshots = list(state_dict["image"])
        self.text_snapshots = list(state_dict["text"])


class AtomicCheckpoint(L.Callback):
    """Save ``path`` every ``every_n_epochs`` epochs or every ``every_n_steps`` training steps.

    The checkpoint is written to a temporary name and renamed, so ``path`` always holds the
    last complete checkpoint. Every rank calls ``save_checkpoint`` (collective under DDP);
    rank zero renames.
    """

    def __init__(self, path: Path, every_n_epochs: int = 0, every_n_steps: int = 0) -> None:
        self.path = Path(path)
        self.every_n_epochs = every_n_epochs
        self.every_n_steps = every_n_steps
        self._batches = 0

    def save(self, trainer: L.Trainer) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        trainer.save_checkpoint(tmp, weights_only=False)
        if trainer.is_global_zero:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        trainer.strategy.barrier("atomic_checkpoint")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.save(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if not self.every_n_steps:
            return
        iteration = int(getattr(pl_module, "iteration", trainer.global_step))
        if iteration % self.every_n_steps == 0:
            self.save(trainer)


class SyntheticPairsTable(L.Callback):
    """Log the synthetic images with the real caption nearest to each synthetic text."""

    def __init__(self, every_n_iterations: int, describe: Any) -> None:
        self.every = every_n_iterations
        self.describe = describe  # callable(module) -> (list of PIL images, list of captions)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        iteration = int(pl_module.iteration)
        if not self.every or iteration % self.every or not trainer.is_global_zero:
            return
        from lightning.pytorch.loggers import WandbLogger

        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                images, captions = self.describe(pl_module)
                logger.log_image("distill/synthetic_pairs", images=images, caption=captions,
                                 step=trainer.global_step)


def atomic_torch_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
