"""LightningModule that trains a dual encoder on pairs and measures retrieval.

Used for the full-data model, the experts of the trajectory buffer and the students that
evaluate a pair set. Batches are ``(inputs, text_embeddings, pair_indices)`` where
``inputs`` are images (B, 3, H, W) or, with a frozen backbone, their features (B, F).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from vldd_lightning.core.contrastive import clip_loss, in_batch_correct
from vldd_lightning.core.coresets import record_presentation
from vldd_lightning.core.retrieval import retrieval_metrics
from vldd_lightning.errors import NonFiniteError
from vldd_lightning.models.dual_encoder import DualEncoder
from vldd_lightning.utils.hashing import derive_seed


@dataclass(frozen=True)
class OptimSettings:
    lr_image: float
    lr_text: float
    momentum: float = 0.0
    weight_decay: float = 0.0


@dataclass
class RetrievalTarget:
    """The caption side of a retrieval split: embeddings and owning image per caption."""

    text_embeddings: Tensor  # (C, D) frozen text encoder outputs
    caption_to_image: Tensor  # (C,)


def embed_inputs(model: DualEncoder, inputs: Tensor) -> Tensor:
    """Image embeddings of images or of precomputed backbone features."""
    if inputs.ndim == 2:
        return model.image_head(inputs)
    return model.image_head(model.image_features(inputs))


class ContrastiveModule(L.LightningModule):
    def __init__(
        self,
        model: DualEncoder,
        optim: OptimSettings,
        logit_scale: float,
        seed: int,
        targets: dict[str, RetrievalTarget] | None = None,
        num_pairs_tracked: int = 0,
        max_nonfinite_steps: int = 10,
        log_prefix: str = "train",
    ) -> None:
        super().__init__()
        self.model = model
        self.optim = optim
        self.logit_scale = logit_scale
        self.seed = seed
        self.targets = targets or {}
        self.max_nonfinite_steps = max_nonfinite_steps
        self.log_prefix = log_prefix
        self._nonfinite_in_a_row = 0
        self._image_embeddings: list[tuple[Tensor, Tensor]] = []
        self.last_metrics: dict[str, dict[str, float]] = {}
        # forgetting statistics (Toneva et al., "An Empirical Study of Example Forgetting")
        self.register_buffer("forgetting_events", torch.zeros(num_pairs_tracked, dtype=torch.int32))
        self.register_buffer("last_correct", torch.zeros(num_pairs_tracked, dtype=torch.bool))
        self.register_buffer("ever_correct", torch.zeros(num_pairs_tracked, dtype=torch.bool))

    # training

    def on_train_batch_start(self, batch: object, batch_idx: int) -> None:
        # dropout draws depend only on (seed, step), so a resumed run replays them exactly
        torch.manual_seed(derive_seed(self.seed, "dropout", self.global_step))

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor | None:
        inputs, texts, indices = batch
        image_emb = embed_inputs(self.model, inputs)
        text_emb = self.model.text_head(texts)
        loss = clip_loss(image_emb, text_emb, self.logit_scale)

        if not torch.isfinite(loss):
            self._nonfinite_in_a_row += 1
            self.log(f"{self.log_prefix}/nonfinite_steps", float(self._nonfinite_in_a_row))
            if self._nonfinite_in_a_row >= self.max_nonfinite_steps:
                raise NonFiniteError(
                    f"the training loss was not finite for {self._nonfinite_in_a_row} steps in a "
                    f"row (lr_image={self.optim.lr_image}, lr_text={self.optim.lr_text}); lower "
                    "the learning rates"
                )
            return None  # Lightning skips the optimiser step
        self._nonfinite_in_a_row = 0

        if self.forgetting_events.numel():
            self._update_forgetting(image_emb.detach(), text_emb.detach(), indices)
        self.log(f"{self.log_prefix}/loss", loss, prog_bar=True, batch_size=texts.shape[0])
        return loss

    @torch.no_grad()
    def _update_forgetting(self, image_emb: Tensor, text_emb: Tensor, indices: Tensor) -> None:
        correct = in_batch_correct(image_emb, text_emb)
        record_presentation(self.last_correct, self.forgetting_events, self.ever_correct, indices, correct)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        image_params = [p for n, p in self.model.named_parameters() if p.requires_grad and not n.startswith("text_head.")]
        text_params = [p for p in self.model.text_head.parameters() if p.requires_grad]
        groups = [
            {"params": image_params, "lr": self.optim.lr_image},
            {"params": text_params, "lr": self.optim.lr_text},
        ]
        return torch.optim.SGD(
            [group for group in groups if group["params"]],
            lr=self.optim.lr_image,
            momentum=self.optim.momentum,
            weight_decay=self.optim.weight_decay,
        )

    # retrieval on val (validation loop) and test (test loop)

    def _collect(self, batch: tuple[Tensor, Tensor]) -> None:
        inputs, indices = batch
        self._image_embeddings.append((embed_inputs(self.model, inputs), indices))

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._collect(batch)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._collect(batch)

    def on_validation_epoch_end(self) -> None:
        self._finish_retrieval("val")

    def on_test_epoch_end(self) -> None:
        self._finish_retrieval("test")

    def _finish_retrieval(self, split: str) -> None:
        embeddings = torch.cat([e for e, _ in self._image_embeddings])
        indices = torch.cat([i for _, i in self._image_embeddings])
        self._image_embeddings.clear()
        if self.trainer.world_size > 1:
            embeddings = self.all_gather(embeddings).flatten(0, 1)
            indices = self.all_gather(indices).flatten(0, 1)
        # the distributed sampler pads by repeating items: keep one row per image, in order
        order = torch.argsort(indices, stable=True)
        indices, embeddings = indices[order], embeddings[order]
        keep = torch.ones_like(indices, dtype=torch.bool)
        keep[1:] = indices[1:] != indices[:-1]
        image_emb = F.normalize(embeddings[keep].float(), dim=-1)

        target = self.targets[split]
        text_emb = F.normalize(self.model.text_head(target.text_embeddings.to(self.device)).float(), dim=-1)
        if not torch.isfinite(image_emb).all() or not torch.isfinite(text_emb).all():
            metrics = {"r_mean": float("nan")}
        else:
            metrics = retrieval_metrics(image_emb @ text_emb.T, target.caption_to_image)
        self.last_metrics[split] = metrics
        for name, value in metrics.items():
            self.log(f"{split}/{name}", value, sync_dist=True)


class BestValidationState(L.Callback):
    """Keep the trainable weights of the epoch with the best ``val/r_mean`` in memory.

    After training, :meth:`restore` loads them back, so the test split is measured on the
    model selected by validation and never selects anything itself.
    """

    def __init__(self) -> None:
        self.best_score = -float("inf")
        self.best_epoch: int | None = None
        self.best_state: dict[str, Tensor] | None = None

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        assert isinstance(pl_module, ContrastiveModule)
        score = pl_module.last_metrics.get("val", {}).get("r_mean", float("nan"))
        if score == score and score > self.best_score:  # NaN never wins
            self.best_score = score
            self.best_epoch = trainer.current_epoch
            self.best_state = copy.deepcopy(pl_module.model.state_dict())

    def restore(self, pl_module: ContrastiveModule) -> None:
        if self.best_state is not None:
            pl_module.model.load_state_dict(self.best_state)
