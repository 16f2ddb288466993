"""Every config composes against the typed schema; cross-field rules and bad keys are reported."""

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigAttributeError, ValidationError

from vldd_lightning.app import CONFIG_DIR
from vldd_lightning.errors import ConfigError
from vldd_lightning.validation import validate_config

from .conftest import compose_config

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
GROUPS = {group: sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
          for group in ("dataset", "encoder", "text_encoder", "protocol", "distill", "coreset", "trainer", "logger")}


def test_default_config_is_valid():
    cfg = compose_config([])
    validate_config(cfg)
    assert cfg.stage == "all"
    assert cfg.dataset.name == "tuxpaint"
    assert cfg.logger.mode == "offline"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes(experiment):
    cfg = compose_config([f"+experiment={experiment}"])
    assert cfg.experiment_name == experiment


@pytest.mark.parametrize(("group", "option"), [(g, o) for g, options in GROUPS.items() for o in options])
def test_group_option_composes(group, option):
    cfg = compose_config([f"{group}={option}"])
    assert cfg is not None


def test_paper_experiment_uses_published_settings():
    cfg = compose_config(["+experiment=flickr_100"])
    assert cfg.encoder.arch == "nfnet_l0"
    assert cfg.text_encoder.model == "bert-base-uncased"
    assert cfg.text_encoder.pooling == "cls"
    assert cfg.num_pairs == 100
    assert (cfg.distill.syn_steps, cfg.distill.expert_epochs, cfg.distill.max_start_epoch) == (8, 1, 2)
    assert (cfg.distill.lr_image, cfg.distill.lr_text, cfg.distill.lr_lr, cfg.distill.syn_lr_init) == (1000, 1000, 0.01, 0.1)
    assert (cfg.buffer.num_experts, cfg.buffer.epochs, cfg.buffer.batch_size, cfg.buffer.lr_image) == (20, 10, 128, 0.1)
    assert (cfg.evaluate.protocol.momentum, cfg.evaluate.protocol.weight_decay, cfg.evaluate.protocol.batch_size) == (0.9, 5e-4, 64)
    validate_config(cfg)


def test_ablation_experiments_set_their_weights():
    assert compose_config(["+experiment=flickr_100_text_only"]).distill.image_weight == 0.0
    assert compose_config(["+experiment=flickr_100_image_only"]).distill.text_weight == 0.0
    assert compose_config(["+experiment=flickr_100_clip"]).text_encoder.pooling == "clip"
    assert compose_config(["+experiment=flickr_100_vit_tiny"]).encoder.arch == "vit_tiny_patch16_224"


def test_experiment_files_hold_only_overrides():
    for path in (CONFIG_DIR / "experiment").glob("*.yaml"):
        text = Path(path).read_text()
        assert text.startswith("# @package _global_"), path.name


def test_unknown_key_is_rejected():
    with pytest.raises(ConfigCompositionException) as info:
        compose_config(["distill.syn_stepz=3"])
    assert isinstance(info.value.__cause__, ConfigAttributeError)
    assert "Key 'syn_stepz' not in 'DistillConfig'" in str(info.value.__cause__)
    # Hydra lets `+key=value` append to a structured config; start-up validation rejects it
    with pytest.raises(ConfigError, match=r"distill\.syn_stepz"):
        validate_config(compose_config(["+distill.syn_stepz=3"]))


def test_wrong_type_is_rejected():
    with pytest.raises(ConfigCompositionException) as info:
        compose_config(["distill.syn_steps=eight"])
    assert isinstance(info.value.__cause__, ValidationError)


def test_missing_group_option_lists_choices():
    with pytest.raises(Exception, match=r"Could not find 'encoder/nfnet_l9'[\s\S]*nfnet_l0"):
        compose_config(["encoder=nfnet_l9"])


@pytest.mark.parametrize(("overrides", "message"), [
    (["distill.mini_batch_size=30", "num_pairs=20"], r"distill\.mini_batch_size=30 is larger than the pair budget num_pairs=20"),
    (["distill.max_start_epoch=5", "buffer.epochs=4"], r"distill\.max_start_epoch=5 plus distill\.expert_epochs=1 .*buffer\.epochs=4"),
    (["distill.syn_lr_init=20"], r"distill\.syn_lr_init=20.* must lie within"),
    (["distill.image_weight=0", "distill.text_weight=0"], "not both zero"),
    (["encoder.image_head=none"], r"encoder\.embed_dim=256 must be null"),
    (["stage=train"], "stage='train' is invalid"),
    (["evaluate.num_eval=0"], r"evaluate\.num_eval=0 must be at least 1"),
    (["distill.iterations=-5"], r"distill\.iterations=-5 is invalid; it must be at least 1"),
    (["buffer.epochs=0"], r"buffer\.epochs=0 is invalid"),
    (["evaluate.protocol.val_every=0"], r"evaluate\.protocol\.val_every=0 is invalid"),
])
def test_cross_field_rules_name_the_fields(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(compose_config(overrides))


def test_distill_rules_apply_only_when_distilling():
    validate_config(compose_config(["stage=coreset", "distill.mini_batch_size=30", "num_pairs=20"]))
