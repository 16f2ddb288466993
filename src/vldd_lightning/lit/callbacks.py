"""Callbacks: trajectory snapshots, atomic checkpoints and synthetic-image tables."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from vldd_lightning.errors import ArtifactError

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
    """Save ``path`` every ``every_n_epochs`` epochs or every ``every_n_steps`` steps.

    Steps count the module's ``iteration`` buffer where it has one (distillation), else the
    trainer's global step. The checkpoint is written to a temporary name and renamed, so
    ``path`` always contains the last complete checkpoint. Every rank calls
    ``save_checkpoint``, which is collective under DDP, and rank zero renames.
    """

    def __init__(self, path: Path, every_n_epochs: int = 0, every_n_steps: int = 0) -> None:
        self.path = Path(path)
        self.every_n_epochs = every_n_epochs
        self.every_n_steps = every_n_steps

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


def checkpoint_to_resume(path: Path) -> Path | None:
    """Return ``path`` if a complete checkpoint is there, None if none; raise if it is corrupt.

    Loading uses ``weights_only`` so a checkpoint can hold tensors and plain values but no
    pickled code.
    """
    if not path.is_file():
        return None
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
        raise ArtifactError(
            f"checkpoint {path} is corrupt or truncated ({type(error).__name__}: {error}); delete it "
            "to restart this stage from its beginning"
        ) from error
    return path


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
