"""Pieces shared by the stages: trainers, loggers, artifact folders and result records."""

from __future__ import annotations

import logging
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import DictConfig, OmegaConf

from vldd_lightning.context import ExperimentContext
from vldd_lightning.errors import ConfigError
from vldd_lightning.utils.hashing import stable_hash

log = logging.getLogger(__name__)

# The image backbone stays in eval mode on purpose (frozen BatchNorm statistics, see DualEncoder).
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode", category=UserWarning)
# The distillation's loader reads in the main process, where its length is exact.
warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined", category=UserWarning)

METRIC_KEYS = ("tr@1", "tr@5", "tr@10", "ir@1", "ir@5", "ir@10", "r_mean")


@dataclass
class RunState:
    """State of one Hydra job across its stages: run folder, context and shared loggers."""

    cfg: DictConfig
    run_dir: Path
    context: ExperimentContext
    _loggers: list[Logger] | None = None
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def loggers(self) -> list[Logger]:
        if self._loggers is None:
            self._loggers = build_loggers(self.cfg, self.run_dir)
        return self._loggers

    @property
    def wandb(self) -> WandbLogger | None:
        return next((lg for lg in self.loggers if isinstance(lg, WandbLogger)), None)

    def close(self) -> None:
        wandb_logger = self.wandb if self._loggers is not None else None
        if wandb_logger is not None:
            import wandb

            wandb.finish()


def run_grouping(cfg: DictConfig) -> tuple[str, str]:
    """W&B group and run name: runs of one sweep share a group.

    A W&B sweep (``WANDB_SWEEP_ID``) groups by its id, a Hydra multirun by its sweep folder,
    a single run by ``experiment_name``; ``logger.group`` overrides all three.
    """
    name = f"{cfg.experiment_name}/{cfg.stage}"
    group = str(cfg.experiment_name)
    try:
        from hydra.core.hydra_config import HydraConfig

        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode.name == "MULTIRUN":
            group = f"{cfg.experiment_name}/{Path(hydra_cfg.sweep.dir).name}"
            name = f"{name}/{hydra_cfg.job.override_dirname or hydra_cfg.job.num}"
    except ValueError:  # Hydra is not initialised (library use)
        pass
    if os.environ.get("WANDB_SWEEP_ID"):
        group = f"wandb-sweep-{os.environ['WANDB_SWEEP_ID']}"
    return (str(cfg.logger.group) if cfg.logger.group else group), name


def build_loggers(cfg: DictConfig, run_dir: Path) -> list[Logger]:
    settings = cfg.logger
    if settings.kind == "none":
        return []
    if settings.kind == "csv":
        return [CSVLogger(save_dir=str(run_dir), name="csv", version="")]
    if settings.kind != "wandb":
        raise ConfigError(f"logger.kind={settings.kind!r} is invalid; choose wandb, csv or none")
    if settings.mode not in ("offline", "online", "disabled"):
        raise ConfigError(f"logger.mode={settings.mode!r} is invalid; choose offline, online or disabled")
    tags = [str(tag) for tag in settings.tags] + [
        f"experiment:{cfg.experiment_name}", f"dataset:{cfg.dataset.name}", f"pairs:{cfg.num_pairs}",
        f"stage:{cfg.stage}",
    ]
    group, name = run_grouping(cfg)
    return [WandbLogger(
        project=settings.project,
        entity=settings.entity,
        save_dir=str(run_dir),
        offline=settings.mode == "offline",
        mode=settings.mode,
        group=group,
        name=name,
        tags=tags,
        job_type=str(cfg.stage),
        config=OmegaConf.to_container(cfg, resolve=True),
        log_model=False,
    )]


def build_trainer(
    cfg: DictConfig,
    run_dir: Path,
    loggers: list[Logger],
    callbacks: list[L.Callback] | None = None,
    max_epochs: int | None = None,
    check_val_every_n_epoch: int | None = None,
    single_device: bool = False,
    limit_val_batches: float | None = None,
) -> L.Trainer:
    """Build a Trainer from ``cfg.trainer``; ``single_device`` runs on one device without DDP."""
    settings = cfg.trainer
    if settings.num_threads:
        torch.set_num_threads(int(settings.num_threads))
    strategy: Any = "auto" if single_device else settings.strategy
    accelerator = settings.accelerator
    if strategy in ("ddp", "ddp_spawn") and (accelerator == "cpu" or not torch.cuda.is_available()):
        strategy = DDPStrategy(process_group_backend="gloo", start_method="popen" if strategy == "ddp" else "spawn")
    return L.Trainer(
        accelerator=accelerator,
        devices=1 if single_device else settings.devices,
        num_nodes=1 if single_device else settings.num_nodes,
        strategy=strategy,
        precision=settings.precision,
        max_epochs=max_epochs,
        logger=loggers or False,
        callbacks=callbacks or [],
        default_root_dir=str(run_dir),
        enable_checkpointing=False,
        enable_model_summary=False,
        log_every_n_steps=settings.log_every_n_steps,
        enable_progress_bar=settings.enable_progress_bar,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=check_val_every_n_epoch,
        limit_val_batches=limit_val_batches,
    )


def global_rank() -> int:
    """This process's rank in the default process group (0 outside distributed runs)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def artifact_dir(ctx: ExperimentContext, kind: str, label: str, parts: dict[str, Any]) -> Path:
    """Return a folder named by the hash of everything that determines its content.

    Rerunning the same configuration finds the same folder, which is how finished stages
    are reused and interrupted ones resumed.
    """
    return ctx.paths["artifacts_dir"] / kind / f"{label}-{stable_hash(parts, 12)}"


def mean_and_std(values: list[float]) -> tuple[float, float]:
    """Return the mean and the sample standard deviation (0 for a single value)."""
    mean = sum(values) / len(values)
    variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(variance)


def summarise(per_seed: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and sample standard deviation of each metric over seeds."""
    mean, std = {}, {}
    for key in METRIC_KEYS:
        mean[key], std[key] = mean_and_std([run[key] for run in per_seed])
    return {"mean": mean, "std": std}


def format_metrics(summary: dict[str, dict[str, float]]) -> str:
    mean, std = summary["mean"], summary["std"]
    tr = "/".join(f"{mean[k]:.1f}" for k in ("tr@1", "tr@5", "tr@10"))
    ir = "/".join(f"{mean[k]:.1f}" for k in ("ir@1", "ir@5", "ir@10"))
    return f"TR@1/5/10 {tr} ; IR@1/5/10 {ir} ; mean {mean['r_mean']:.1f} ± {std['r_mean']:.1f}"
