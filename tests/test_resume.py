"""Interrupted stages resume from their last complete state and end bit for bit as uninterrupted runs."""

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from vldd_lightning.app import run
from vldd_lightning.storage.pairset import load_pairset

pytestmark = pytest.mark.usefixtures("tuxpaint_root")


class Interrupt(Exception):
    pass


class InterruptAt(L.Callback):
    """Raise once the module's counter (distillation iteration or epoch) reaches ``at``."""

    def __init__(self, at: int, by_epoch: bool = False) -> None:
        self.at, self.by_epoch = at, by_epoch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self.by_epoch and int(pl_module.iteration) == self.at:
            raise Interrupt()

    def on_train_epoch_end(self, trainer, pl_module):
        if self.by_epoch and trainer.current_epoch + 1 == self.at:
            raise Interrupt()


@pytest.fixture
def interrupt_next_trainer(monkeypatch):
    """``arm(stage_module, callback)``: the next trainer that stage module builds gets ``callback``."""
    from vldd_lightning.stages import common

    def arm(stage_module: str, callback: L.Callback) -> None:
        pending = [callback]

        def build(*args, callbacks=None, **kwargs):
            extra = [pending.pop()] if pending else []
            return common.build_trainer(*args, callbacks=(callbacks or []) + extra, **kwargs)

        monkeypatch.setattr(f"vldd_lightning.stages.{stage_module}.build_trainer", build)

    return arm


def test_distillation_resumes_exactly(make_config, tmp_path, interrupt_next_trainer, shared_buffer):
    overrides = ("stage=distill", "distill.iterations=6", "distill.checkpoint_every=2", f"buffer.dir={shared_buffer}")
    reference = load_pairset(run(make_config(*overrides, "seed=1"), tmp_path / "a")["distilled"])

    # same run in a fresh artifact folder, stopped after iteration 3: the checkpoint holds iteration 2
    interrupted_cfg = make_config(*overrides, "seed=1", "paths.artifacts_dir=" + str(tmp_path / "second"))
    interrupt_next_trainer("distill", InterruptAt(3))
    with pytest.raises(Interrupt):
        run(interrupted_cfg, tmp_path / "b")
    checkpoints = list((tmp_path / "second").glob("distilled/*/last.ckpt"))
    assert len(checkpoints) == 1
    assert not list((tmp_path / "second").glob("distilled/*/distilled.safetensors"))
    assert torch.load(checkpoints[0], weights_only=True)["state_dict"]["iteration"] == 2

    resumed = load_pairset(run(interrupted_cfg, tmp_path / "c")["distilled"])
    assert resumed.metadata["iterations_done"] == 6
    assert torch.equal(resumed.images, reference.images)
    assert torch.equal(resumed.text_embeddings, reference.text_embeddings)
    assert resumed.lr_image == reference.lr_image
    assert resumed.lr_text == reference.lr_text


def test_expert_resumes_exactly(make_config, tmp_path, interrupt_next_trainer):
    overrides = ("stage=buffer", "buffer.num_experts=1", "buffer.epochs=3")
    run(make_config(*overrides), tmp_path / "a")
    reference = load_file(next((tmp_path / "artifacts").glob("buffers/*/expert_000.safetensors")))

    second = make_config(*overrides, "paths.artifacts_dir=" + str(tmp_path / "second"))
    interrupt_next_trainer("buffer", InterruptAt(2, by_epoch=True))
    with pytest.raises(Interrupt):
        run(second, tmp_path / "b")
    assert list((tmp_path / "second").glob("buffers/*/expert_000.work/last.ckpt"))
    assert not list((tmp_path / "second").glob("buffers/*/expert_000.safetensors"))

    run(second, tmp_path / "c")
    resumed = load_file(next((tmp_path / "second").glob("buffers/*/expert_000.safetensors")))
    assert resumed.keys() == reference.keys()
    for name in reference:
        assert torch.equal(resumed[name], reference[name]), name
    assert not list((tmp_path / "second").glob("buffers/*/expert_000.work"))
