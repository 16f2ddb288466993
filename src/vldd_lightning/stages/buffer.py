"""Stage ``buffer``: train K experts on the full training split and store their trajectories."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from vldd_lightning.errors import ArtifactError, ConfigError
from vldd_lightning.lit.callbacks import AtomicCheckpoint, TrajectoryRecorder, checkpoint_to_resume
from vldd_lightning.lit.contrastive import ContrastiveModule, OptimSettings
from vldd_lightning.stages.common import RunState, artifact_dir, build_trainer
from vldd_lightning.stages.training import real_train_pairs, train_loader
from vldd_lightning.storage.tensors import read_metadata
from vldd_lightning.storage.trajectories import (
    STORAGE_DTYPES,
    TrajectoryBuffer,
    expert_path,
    save_expert,
)
from vldd_lightning.utils.atomic import atomic_write_json
from vldd_lightning.utils.hashing import derive_seed

log = logging.getLogger(__name__)


def buffer_augment(cfg: Any) -> dict[str, Any] | None:
    settings = cfg.buffer
    if not settings.augment:
        return None
    return {
        "crop_scale": list(settings.crop_scale),
        "randaugment": list(settings.randaugment) if settings.randaugment else None,
        "views": int(settings.augment_views),
    }


def buffer_folder(state: RunState) -> Path:
    cfg, ctx = state.cfg, state.context
    if cfg.buffer.dir:
        from vldd_lightning.context import absolute_path

        return absolute_path(cfg.buffer.dir)
    parts = {
        "identity": ctx.identity(),
        "buffer": OmegaConf.to_container(cfg.buffer, resolve=True),
        "seed": cfg.seed,
    }
    parts["buffer"].pop("num_experts")  # more experts extend the same folder
    parts["buffer"].pop("dir")
    return artifact_dir(ctx, "buffers", f"{cfg.dataset.name}-{cfg.encoder.name}-{cfg.text_encoder.name}", parts)


def load_buffer(state: RunState) -> TrajectoryBuffer:
    model = state.context.new_model(state.cfg.seed)
    folder = buffer_folder(state)
    if not folder.is_dir():
        raise ArtifactError(f"no trajectory buffer at {folder}; run stage=buffer with this configuration first")
    return TrajectoryBuffer(folder, state.context.identity(), model.image_layout, model.text_layout)


def _train_expert(state: RunState, index: int, folder: Path) -> None:
    cfg, ctx = state.cfg, state.context
    settings = cfg.buffer
    seed = derive_seed(cfg.seed, "expert", index)
    work = folder / f"expert_{index:03d}.work"
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = work / "last.ckpt"

    model = ctx.new_model(seed)
    num_pairs = ctx.splits["train"].num_captions
    module = ContrastiveModule(
        model,
        OptimSettings(settings.lr_image, settings.lr_text, settings.momentum, settings.weight_decay),
        ctx.logit_scale,
        seed,
        num_pairs_tracked=num_pairs if settings.record_forgetting else 0,
        log_prefix=f"buffer/expert_{index:03d}",
    )
    recorder = TrajectoryRecorder()
    trainer = build_trainer(cfg, state.run_dir, state.loggers,
                            callbacks=[recorder, AtomicCheckpoint(checkpoint, every_n_epochs=1)],
                            max_epochs=settings.epochs, limit_val_batches=0)
    dataset = real_train_pairs(ctx, buffer_augment(cfg), seed, view_seed=cfg.seed)
    loader = train_loader(ctx, dataset, settings.batch_size, seed, trainer.world_size, trainer.global_rank)
    resume = checkpoint_to_resume(checkpoint)
    if resume:
        log.info("expert %d: resuming from %s", index, resume)
    trainer.fit(module, loader, ckpt_path=resume, weights_only=True)

    forgetting = None
    if settings.record_forgetting:
        events = trainer.strategy.reduce(module.forgetting_events.long(), reduce_op="sum")
        learned = trainer.strategy.reduce(module.ever_correct.long(), reduce_op="sum") > 0
        forgetting = {"forgetting_events": events.to(torch.int32).cpu(), "ever_correct": learned.cpu()}
    if trainer.is_global_zero:
        save_expert(
            expert_path(folder, index), recorder.image_snapshots, recorder.text_snapshots,
            ctx.identity(), model.image_layout, model.text_layout, settings.storage_dtype,
            {"expert": index, "seed": seed, "epochs": settings.epochs}, forgetting,
        )
        shutil.rmtree(work, ignore_errors=True)
    trainer.strategy.barrier("expert_saved")


def run_buffer(state: RunState) -> dict[str, Any]:
    cfg = state.cfg
    settings = cfg.buffer
    if settings.storage_dtype not in STORAGE_DTYPES:
        raise ConfigError(f"buffer.storage_dtype={settings.storage_dtype!r} is invalid; choose one of {sorted(STORAGE_DTYPES)}")
    folder = buffer_folder(state)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "buffer.json", {
        "identity": state.context.identity(),
        "buffer": OmegaConf.to_container(settings, resolve=True),
        "seed": cfg.seed,
    })
    trained = 0
    for index in range(settings.num_experts):
        path = expert_path(folder, index)
        if path.is_file():
            read_metadata(path, "expert trajectory")  # raises on a corrupt file
            continue
        log.info("training expert %d/%d", index + 1, settings.num_experts)
        _train_expert(state, index, folder)
        trained += 1
    buffer = load_buffer(state)
    size = sum(record.path.stat().st_size for record in buffer.experts)
    log.info("trajectory buffer %s: %d experts, %.1f MB on disk", folder, len(buffer), size / 1e6)
    if state.wandb is not None:
        state.wandb.log_metrics({"buffer/size_mb": size / 1e6, "buffer/experts": len(buffer)})
    return {"buffer_dir": str(folder), "experts": len(buffer), "trained_now": trained, "size_bytes": size}
