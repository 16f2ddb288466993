"""Stage ``distill``: learn N synthetic pairs by bi-trajectory matching and export them."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from vldd_lightning.core.augment import parse_strategy
from vldd_lightning.core.unroll import UNROLL_MODES
from vldd_lightning.errors import ArtifactError, ConfigError
from vldd_lightning.lit.callbacks import AtomicCheckpoint, SyntheticPairsTable, checkpoint_to_resume
from vldd_lightning.lit.distill import DistillModule, DistillSettings
from vldd_lightning.stages.buffer import buffer_folder, load_buffer, run_buffer
from vldd_lightning.stages.common import RunState, artifact_dir, build_trainer
from vldd_lightning.stages.training import Protocol
from vldd_lightning.storage.pairset import PairSet, load_pairset, save_pairset
from vldd_lightning.utils.atomic import atomic_path
from vldd_lightning.utils.hashing import derive_seed

log = logging.getLogger(__name__)

DISTILLED_NAME = "distilled.safetensors"


def distill_folder(state: RunState) -> Path:
    cfg = state.cfg
    parts = {
        "buffer": str(buffer_folder(state)),
        "distill": OmegaConf.to_container(cfg.distill, resolve=True),
        "num_pairs": cfg.num_pairs,
        "seed": cfg.seed,
    }
    for key in ("checkpoint_every", "grid_max_images"):
        parts["distill"].pop(key)
    label = f"{cfg.dataset.name}-{cfg.encoder.name}-n{cfg.num_pairs}"
    return artifact_dir(state.context, "distilled", label, parts)


def settings_from_config(cfg: DictConfig, logit_scale: float) -> DistillSettings:
    d = cfg.distill
    if d.unroll not in UNROLL_MODES:
        raise ConfigError(f"distill.unroll={d.unroll!r} is invalid; choose one of {UNROLL_MODES}")
    try:
        parse_strategy(d.augment_strategy if d.augment else "")
    except ValueError as error:
        raise ConfigError(f"distill.augment_strategy: {error}") from error
    if d.autocast not in (None, "bf16"):
        raise ConfigError(f"distill.autocast={d.autocast!r} is invalid; choose null or bf16")
    return DistillSettings(
        iterations=d.iterations, syn_steps=d.syn_steps, expert_epochs=d.expert_epochs,
        max_start_epoch=d.max_start_epoch, mini_batch_size=d.mini_batch_size,
        lr_image=d.lr_image, lr_text=d.lr_text, lr_lr=d.lr_lr, momentum=d.momentum,
        syn_lr_min=d.syn_lr_min, syn_lr_max=d.syn_lr_max,
        image_weight=d.image_weight, text_weight=d.text_weight,
        augment=d.augment_strategy if d.augment else "",
        unroll=d.unroll, hoist_frozen_features=d.hoist_frozen_features,
        # the published code multiplied the cosine by s = log(1/0.07) in the inner loop
        inner_logit_scale=float(torch.tensor(logit_scale).log()) if d.temperature_compat else logit_scale,
        max_consecutive_skips=d.max_consecutive_skips,
        max_abs_value=d.max_abs_value,
        seed=derive_seed(cfg.seed, "distill"),
        autocast_dtype=torch.bfloat16 if d.autocast == "bf16" else None,
    )


def initial_pairs(state: RunState) -> tuple[Tensor, Tensor, list[int]]:
    """N random real training pairs (distinct images), or noise with matching statistics."""
    cfg, ctx = state.cfg, state.context
    split = ctx.splits["train"]
    texts = ctx.text_embeddings("train")
    n = cfg.num_pairs
    if n > split.num_images:
        raise ConfigError(f"num_pairs={n} exceeds the {split.num_images} training images; lower num_pairs")
    generator = torch.Generator().manual_seed(derive_seed(cfg.seed, "init"))
    images_chosen = torch.randperm(split.num_images, generator=generator)[:n].tolist()
    captions_of: dict[int, list[int]] = {}
    for caption, image in enumerate(split.caption_to_image):
        captions_of.setdefault(image, []).append(caption)
    caption_idx = [
        captions_of[i][int(torch.randint(len(captions_of[i]), (1,), generator=generator))] for i in images_chosen
    ]
    if cfg.distill.init == "real":
        from vldd_lightning.data.images import ImageDataset

        dataset = ImageDataset([split.image_paths[i] for i in images_chosen], ctx.eval_transform(), ctx.background)
        image_syn = torch.stack([dataset[i] for i in range(n)])
        text_syn = texts[caption_idx].clone()
    elif cfg.distill.init == "noise":
        size = cfg.encoder.image_size
        image_syn = torch.randn(n, 3, size, size, generator=generator)
        mean, std = texts.mean(0), texts.std(0)
        text_syn = mean + std * torch.randn(n, texts.shape[1], generator=generator)
        caption_idx = []
    else:
        raise ConfigError(f"distill.init={cfg.distill.init!r} is invalid; choose real or noise")
    return image_syn, text_syn, caption_idx


def check_against_buffer(state: RunState, snapshots: int) -> None:
    d = state.cfg.distill
    if d.max_start_epoch < 1:
        raise ConfigError(f"distill.max_start_epoch={d.max_start_epoch} must be at least 1")
    last_start = d.max_start_epoch - 1
    if last_start + d.expert_epochs > snapshots - 1:
        raise ConfigError(
            f"distill.max_start_epoch={d.max_start_epoch} with distill.expert_epochs={d.expert_epochs} "
            f"needs snapshots up to epoch {last_start + d.expert_epochs}, but the experts were "
            f"trained for {snapshots - 1} epochs (buffer.epochs); lower them or train longer experts"
        )


def nearest_captions(state: RunState, text_syn: Tensor) -> list[str]:
    ctx = state.context
    real = F.normalize(ctx.text_embeddings("train"), dim=1)
    nearest = (F.normalize(text_syn.detach().cpu().float(), dim=1) @ real.T).argmax(dim=1)
    captions = ctx.splits["train"].captions
    return [captions[i] for i in nearest.tolist()]


def to_pixels(images: Tensor, mean: list[float], std: list[float]) -> Tensor:
    """Undo the input normalisation; returns values clipped to [0, 1]."""
    mean_t = torch.tensor(mean).view(1, 3, 1, 1)
    std_t = torch.tensor(std).view(1, 3, 1, 1)
    return (images.detach().cpu().float() * std_t + mean_t).clamp(0, 1)


def save_grid(path: Path, images: Tensor, captions: list[str], mean: list[float], std: list[float],
              max_images: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = min(images.shape[0], max_images)
    columns = min(8, count)
    rows = -(-count // columns)
    pixels = to_pixels(images[:count], mean, std)
    figure, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.6 * rows), squeeze=False)
    for k, axis in enumerate(axes.flat):
        axis.axis("off")
        if k < count:
            axis.imshow(pixels[k].permute(1, 2, 0).numpy())
            axis.set_title("\n".join(textwrap.wrap(captions[k], 24)[:3]), fontsize=7)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)


def run_distill(state: RunState) -> dict[str, Any]:
    cfg, ctx = state.cfg, state.context
    folder = distill_folder(state)
    output = folder / DISTILLED_NAME
    if output.is_file():
        load_pairset(output)  # raises on a corrupt file
        log.info("distilled set %s exists; reusing it", output)
        return {"distilled": str(output), "reused": True}

    settings = settings_from_config(cfg, ctx.logit_scale)
    if cfg.distill.mini_batch_size > cfg.num_pairs:
        raise ConfigError(
            f"distill.mini_batch_size={cfg.distill.mini_batch_size} exceeds num_pairs={cfg.num_pairs}; "
            "lower distill.mini_batch_size or raise num_pairs"
        )
    if not cfg.buffer.dir:
        run_buffer(state)  # trains missing experts; complete ones are only checked
    buffer = load_buffer(state)
    check_against_buffer(state, buffer.min_snapshots)

    folder.mkdir(parents=True, exist_ok=True)
    image_syn, text_syn, init_captions = initial_pairs(state)
    student = ctx.new_model(cfg.seed)
    if not student.image_layout.numel:
        raise ConfigError("the image side has no trainable parameters; set encoder.trainable or encoder.image_head")
    module = DistillModule(student, buffer, image_syn, text_syn, cfg.distill.syn_lr_init, settings)

    def describe(pl_module: DistillModule) -> tuple[list[Any], list[str]]:
        count = min(pl_module.num_pairs, cfg.distill.grid_max_images)
        pixels = to_pixels(pl_module.image_syn[:count], cfg.encoder.mean, cfg.encoder.std)
        return [p for p in pixels], nearest_captions(state, pl_module.text_syn[:count])

    checkpoint = folder / "last.ckpt"
    callbacks = [
        AtomicCheckpoint(checkpoint, every_n_steps=cfg.distill.checkpoint_every),
        SyntheticPairsTable(cfg.logger.log_images_every, describe),
    ]
    trainer = build_trainer(cfg, state.run_dir, state.loggers, callbacks=callbacks, max_epochs=1, limit_val_batches=0)
    resume = checkpoint_to_resume(checkpoint)
    if resume:
        log.info("resuming distillation from %s", resume)
    trainer.fit(module, ckpt_path=resume, weights_only=True)
    if int(module.iteration) < settings.iterations:
        raise ArtifactError(
            f"distillation stopped at iteration {int(module.iteration)} of {settings.iterations}; "
            f"rerun the same command to resume from {checkpoint}"
        )

    if trainer.is_global_zero:
        export(state, module, folder, init_captions)
    trainer.strategy.barrier("distilled_exported")
    return {
        "distilled": str(output),
        "reused": False,
        "skipped_steps": int(module.skipped_steps),
        "lr_clamps": int(module.lr_clamps),
        "syn_lr_image": module.syn_lr_image.item(),
        "syn_lr_text": module.syn_lr_text.item(),
    }


def export(state: RunState, module: DistillModule, folder: Path, init_captions: list[int]) -> Path:
    cfg, ctx = state.cfg, state.context
    protocol = Protocol.from_config(cfg.evaluate.protocol, module.syn_lr_image.item(), module.syn_lr_text.item())
    metadata = {
        "kind": "distilled",
        "method": "distilled",
        "identity": ctx.identity(),
        "protocol": protocol.as_dict(),
        "distill": OmegaConf.to_container(cfg.distill, resolve=True),
        "seed": cfg.seed,
        "iterations_done": int(module.iteration),
        "skipped_steps": int(module.skipped_steps),
        "buffer": str(module.buffer.experts[0].path.parent),
        "initial_captions": init_captions,
    }
    pairs = PairSet(module.image_syn.detach().cpu(), module.text_syn.detach().cpu(),
                    module.syn_lr_image.item(), module.syn_lr_text.item(), metadata)
    output = folder / DISTILLED_NAME
    if not torch.isfinite(pairs.images).all() or not torch.isfinite(pairs.text_embeddings).all():
        raise ArtifactError("the synthetic pairs contain non-finite values; nothing was exported")
    save_grid(folder / "distilled.png", pairs.images, nearest_captions(state, pairs.text_embeddings),
              cfg.encoder.mean, cfg.encoder.std, cfg.distill.grid_max_images)
    save_pairset(output, pairs)
    log.info("exported %d distilled pairs to %s", pairs.num_pairs, output)
    return output
