"""Every experiment config: composes, validates, and takes one distillation step on the CPU.

The paper's encoders need a hub download, so the smoke step builds each experiment's image
architecture with random weights at 32 px, and random text embeddings of the dimension its
text encoder produces; everything else (unroll mode, trainable parameters, loss weights,
learning rates, augmentation) is the experiment's own.
"""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from vldd_lightning.app import CONFIG_DIR
from vldd_lightning.lit.distill import DistillModule
from vldd_lightning.models.dual_encoder import DualEncoder, DualEncoderSpec
from vldd_lightning.models.image import BackboneSpec
from vldd_lightning.storage.trajectories import TrajectoryBuffer, expert_path, save_expert
from vldd_lightning.validation import validate_config

from .conftest import compose_config

TEXT_DIMS = {"minilm": 384, "bert_base": 768, "clip": 512}
EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


def smoke_signature(experiment: str) -> str:
    """Experiments differing only in pair budget or data set share one smoke step."""
    cfg = compose_config([f"+experiment={experiment}"])
    validate_config(cfg)
    return json.dumps({"encoder": dict(cfg.encoder), "text": cfg.text_encoder.name,
                       "distill": {k: v for k, v in cfg.distill.items() if k != "mini_batch_size"}}, sort_keys=True, default=str)


def groups() -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for experiment in EXPERIMENTS:
        grouped.setdefault(smoke_signature(experiment), []).append(experiment)
    return grouped


GROUPS = groups()


@pytest.mark.slow
@pytest.mark.parametrize("experiments", list(GROUPS.values()), ids=lambda names: "+".join(names))
def test_experiment_takes_a_distillation_step(experiments, tmp_path):
    from vldd_lightning.stages.distill import settings_from_config

    cfg = compose_config([f"+experiment={experiments[0]}", "encoder.weights=none", "encoder.image_size=32"])
    settings = replace(settings_from_config(cfg, 1 / 0.07), syn_steps=1, mini_batch_size=3)
    encoder = cfg.encoder
    torch.manual_seed(0)
    student = DualEncoder(DualEncoderSpec(
        BackboneSpec(encoder.arch, "none", encoder.bn_eps, 32), TEXT_DIMS[cfg.text_encoder.name],
        encoder.trainable, encoder.last_blocks, encoder.image_head, encoder.embed_dim, encoder.head_dropout))
    params = dict(student.named_parameters())
    image0 = student.image_layout.flatten(params).detach()
    text0 = student.text_layout.flatten(params).detach()
    snapshots = max(2, cfg.distill.max_start_epoch + cfg.distill.expert_epochs)
    images = [image0 + 1e-3 * k * torch.randn_like(image0) for k in range(snapshots)]
    texts = [text0 + 1e-3 * k * torch.randn_like(text0) for k in range(snapshots)]
    save_expert(expert_path(Path(tmp_path), 0), images, texts, {}, student.image_layout, student.text_layout, "float32", {})
    buffer = TrajectoryBuffer(Path(tmp_path), {}, student.image_layout, student.text_layout)

    module = DistillModule(student, buffer, torch.randn(4, 3, 32, 32), torch.randn(4, TEXT_DIMS[cfg.text_encoder.name]),
                           cfg.distill.syn_lr_init, settings)
    module.setup("fit")
    before = module.image_syn.detach().clone()
    result = module.compute_meta_gradient(0)
    assert torch.isfinite(result.loss)
    image_grad, text_grad = result.input_grads
    if cfg.distill.image_weight:
        assert image_grad.abs().sum() > 0
    if cfg.distill.text_weight:
        assert text_grad.abs().sum() > 0
    assert torch.isfinite(image_grad).all()
    assert torch.isfinite(text_grad).all()
    with torch.no_grad():
        module.image_syn -= settings.lr_image * image_grad
    assert not torch.equal(before, module.image_syn)
