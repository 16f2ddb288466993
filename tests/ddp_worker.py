"""Worker script of test_ddp.py: distil with 2 gloo processes, or resume on one.

Usage: python tests/ddp_worker.py OUT_DIR train|resume (the test calls ``main`` for resume)
Each rank appends one JSON line per iteration to OUT_DIR/rank_<r>.jsonl with its draw and
a digest of the synthetic state after the step.
"""

import hashlib
import json
import sys
from dataclasses import replace
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_distill_module import SETTINGS, make_module
from vldd_lightning.lit.callbacks import AtomicCheckpoint


def digest(module) -> str:
    state = [module.image_syn, module.text_syn, module.syn_lr_image, module.syn_lr_text]
    return hashlib.sha256(b"".join(t.detach().cpu().numpy().tobytes() for t in state)).hexdigest()


class RecordState(L.Callback):
    def __init__(self, out: Path) -> None:
        self.out = out

    def write(self, trainer, record) -> None:
        with open(self.out / f"rank_{trainer.global_rank}.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def on_train_start(self, trainer, pl_module):
        self.write(trainer, {"start": int(pl_module.iteration), "digest": digest(pl_module)})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        record = {
            "iteration": int(pl_module.iteration),
            "draw": list(pl_module.last_draw),
            "digest": digest(pl_module),
            "world_size": trainer.world_size,
        }
        self.write(trainer, record)


def main(out: Path, mode: str) -> None:
    torch.set_num_threads(1)
    # several experts and start epochs, so the ranks' draws differ
    settings = replace(SETTINGS, iterations=4 if mode == "train" else 6, max_start_epoch=1)
    module = make_module(out / "buffer", "none", settings, n=6, experts=4)
    callbacks = [RecordState(out), AtomicCheckpoint(out / "last.ckpt", every_n_steps=3)]
    if mode == "train":
        trainer = L.Trainer(accelerator="cpu", devices=2, strategy=DDPStrategy(process_group_backend="gloo"),
                            max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, callbacks=callbacks)
        trainer.fit(module)
    else:
        trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks[:1])
        trainer.fit(module, ckpt_path=out / "last.ckpt", weights_only=True)
    if trainer.is_global_zero:
        (out / f"final_{mode}.json").write_text(json.dumps({"iteration": int(module.iteration), "digest": digest(module)}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
