"""Cross-field checks of a composed configuration, run before any stage starts."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from vldd_lightning.config.schema import STAGES, Config
from vldd_lightning.errors import ConfigError


def _needs_distillation(cfg: DictConfig) -> bool:
    if cfg.stage in ("distill", "all"):
        return True
    if cfg.stage == "evaluate" and not cfg.evaluate.pairs:
        return any(str(method).startswith("distilled") for method in cfg.evaluate.methods)
    return False


def _check_schema(cfg: DictConfig) -> None:
    """Reject keys that the schema lacks, including ones added with Hydra's ``+key=value``."""
    schema = OmegaConf.structured(Config)
    OmegaConf.set_struct(schema, True)
    try:
        # a plain container: merging the DictConfig itself would carry over its own node types
        OmegaConf.merge(schema, OmegaConf.to_container(cfg, resolve=False))
    except (ConfigKeyError, ConfigAttributeError, ValidationError) as error:
        key = getattr(error, "full_key", None) or "?"
        raise ConfigError(f"invalid configuration key or value {key}: {error.msg}") from error


def validate_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` naming the fields of the first inconsistency found."""
    _check_schema(cfg)
    if cfg.stage not in STAGES:
        raise ConfigError(f"stage={cfg.stage!r} is invalid; choose one of {', '.join(STAGES)}")
    if cfg.num_pairs < 1:
        raise ConfigError(f"num_pairs={cfg.num_pairs} must be at least 1")

    encoder = cfg.encoder
    if encoder.image_head == "none" and encoder.embed_dim is not None:
        raise ConfigError(
            f"encoder.image_head=none maps images straight to the backbone features, so "
            f"encoder.embed_dim={encoder.embed_dim} must be null"
        )
    if encoder.image_head != "none" and encoder.embed_dim is None:
        raise ConfigError(f"encoder.image_head={encoder.image_head} needs an encoder.embed_dim")
    if encoder.trainable == "none" and encoder.image_head == "none":
        raise ConfigError(
            "encoder.trainable=none with encoder.image_head=none leaves no trainable image "
            "parameters; train part of the backbone or add an image head"
        )
    if len(encoder.mean) != 3 or len(encoder.std) != 3 or min(encoder.std) <= 0:
        raise ConfigError("encoder.mean and encoder.std need three values each, with positive std")

    for name in ("train_full", "evaluate.protocol"):
        protocol = cfg.train_full if name == "train_full" else cfg.evaluate.protocol
        _require_at_least_one(protocol, name, ("epochs", "batch_size", "val_every"))
    if cfg.evaluate.num_eval < 1:
        raise ConfigError(f"evaluate.num_eval={cfg.evaluate.num_eval} must be at least 1")

    buffer = cfg.buffer
    _require_at_least_one(buffer, "buffer", ("num_experts", "epochs", "batch_size"))
    if buffer.augment and buffer.augment_views < 1:
        raise ConfigError(f"buffer.augment_views={buffer.augment_views} must be at least 1 when buffer.augment=true")

    if _needs_distillation(cfg):
        _validate_distill(cfg)


def _require_at_least_one(section: DictConfig, prefix: str, keys: tuple[str, ...]) -> None:
    for key in keys:
        if section[key] < 1:
            raise ConfigError(f"{prefix}.{key}={section[key]} is invalid; it must be at least 1")


def _validate_distill(cfg: DictConfig) -> None:
    d = cfg.distill
    if d.mini_batch_size > cfg.num_pairs:
        raise ConfigError(
            f"distill.mini_batch_size={d.mini_batch_size} is larger than the pair budget "
            f"num_pairs={cfg.num_pairs}; lower distill.mini_batch_size or raise num_pairs"
        )
    if d.mini_batch_size < 2:
        raise ConfigError(f"distill.mini_batch_size={d.mini_batch_size} must be at least 2 for a contrastive loss")
    _require_at_least_one(d, "distill", ("max_start_epoch", "expert_epochs", "syn_steps", "iterations"))
    if not cfg.buffer.dir and d.max_start_epoch - 1 + d.expert_epochs > cfg.buffer.epochs:
        raise ConfigError(
            f"distill.max_start_epoch={d.max_start_epoch} plus distill.expert_epochs={d.expert_epochs} "
            f"reaches epoch {d.max_start_epoch - 1 + d.expert_epochs}, beyond the trajectories of "
            f"buffer.epochs={cfg.buffer.epochs}; lower them or raise buffer.epochs"
        )
    for key in ("lr_image", "lr_text", "lr_lr", "syn_lr_init", "syn_lr_min"):
        if not d[key] > 0:
            raise ConfigError(f"distill.{key}={d[key]} must be positive")
    if not d.syn_lr_min <= d.syn_lr_init <= d.syn_lr_max:
        raise ConfigError(
            f"distill.syn_lr_init={d.syn_lr_init} must lie within [distill.syn_lr_min, "
            f"distill.syn_lr_max] = [{d.syn_lr_min}, {d.syn_lr_max}]"
        )
    if d.image_weight < 0 or d.text_weight < 0 or d.image_weight + d.text_weight == 0:
        raise ConfigError(
            f"distill.image_weight={d.image_weight} and distill.text_weight={d.text_weight} must be "
            "non-negative and not both zero"
        )
    _require_at_least_one(d, "distill", ("max_consecutive_skips", "checkpoint_every"))
