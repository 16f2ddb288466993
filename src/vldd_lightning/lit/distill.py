"""LightningModule for bi-trajectory matching: the synthetic pairs are its parameters.

Each training step is one distillation iteration:

1. draw an expert and a start epoch (each rank draws its own);
2. unroll ``syn_steps`` SGD steps of a functional student from the expert's snapshot on
   random mini-batches of the synthetic pairs (see :mod:`vldd_lightning.core.unroll`);
3. compute the normalised image and text matching terms against the expert's later
   snapshot, and their gradients with respect to the synthetic images, texts and the two
   inner learning rates;
4. average those gradients over ranks (DDP), skip the step if any is not finite, and step
   the four optimisers; the learning rates are then projected into ``[syn_lr_min, syn_lr_max]``.

All randomness of iteration i on rank r derives from ``(seed, i, r)``, so a resumed run
repeats exactly what an uninterrupted one does.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset

from vldd_lightning.core.augment import differentiable_augment, parse_strategy
from vldd_lightning.core.contrastive import clip_loss
from vldd_lightning.core.matching import MatchingWeights
from vldd_lightning.core.params import FunctionalModel
from vldd_lightning.core.unroll import MetaGradient, matching_meta_gradient
from vldd_lightning.errors import NonFiniteError
from vldd_lightning.models.dual_encoder import DualEncoder
from vldd_lightning.storage.trajectories import TrajectoryBuffer
from vldd_lightning.utils.hashing import derive_seed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillSettings:
    iterations: int
    syn_steps: int
    expert_epochs: int
    max_start_epoch: int
    mini_batch_size: int
    lr_image: float
    lr_text: float
    lr_lr: float
    momentum: float
    syn_lr_min: float
    syn_lr_max: float
    image_weight: float
    text_weight: float
    augment: str  # an augmentation strategy, "" for none
    unroll: str
    hoist_frozen_features: bool
    inner_logit_scale: float
    max_consecutive_skips: int
    seed: int
    autocast_dtype: torch.dtype | None = None  # bfloat16 autocast of the student's forward
    max_abs_value: float = 1e3  # a step moving a synthetic value beyond this is skipped as runaway


class _Iterations(IterableDataset):
    """Yield one item per remaining iteration; the module's ``iteration`` buffer is the counter.

    The length is the total number of iterations: on resume Lightning restores how many
    batches of the epoch it already ran, which equals the restored counter.
    """

    def __init__(self, module: DistillModule) -> None:
        self.module = module

    def __len__(self) -> int:
        return self.module.settings.iterations

    def __iter__(self):
        while int(self.module.iteration) < self.module.settings.iterations:
            yield int(self.module.iteration)


@torch.no_grad()
def preview_sgd_step(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    """Return the parameter values ``optimizer.step()`` would produce, changing nothing.

    Follows ``torch.optim.SGD`` (momentum, dampening, Nesterov and weight decay); the
    distillation only uses SGD.
    """
    if not isinstance(optimizer, torch.optim.SGD):
        raise TypeError(f"preview_sgd_step supports torch.optim.SGD, got {type(optimizer).__name__}")
    values = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            step = p.grad if p.grad is not None else torch.zeros_like(p)
            if group["weight_decay"]:
                step = step + group["weight_decay"] * p
            buffer = optimizer.state.get(p, {}).get("momentum_buffer")
            if group["momentum"]:
                buffer = step if buffer is None else group["momentum"] * buffer + (1 - group["dampening"]) * step
                step = step + group["momentum"] * buffer if group["nesterov"] else buffer
            sign = 1.0 if group.get("maximize") else -1.0
            values.append(p + sign * group["lr"] * step)
    return values


class _IterationLoader(DataLoader):
    """A loader whose position is the module's ``iteration`` buffer, restored with the weights.

    Having a (empty) state lets Lightning resume mid-epoch without warning that it cannot.
    """

    def state_dict(self) -> dict[str, int]:
        return {}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        pass


class DistillModule(L.LightningModule):
    def __init__(
        self,
        student: DualEncoder,
        buffer: TrajectoryBuffer,
        image_syn: Tensor,
        text_syn: Tensor,
        syn_lr_init: float,
        settings: DistillSettings,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.settings = settings
        self.image_syn = nn.Parameter(image_syn.clone())
        self.text_syn = nn.Parameter(text_syn.clone())
        self.syn_lr_image = nn.Parameter(torch.tensor(float(syn_lr_init)))
        self.syn_lr_text = nn.Parameter(torch.tensor(float(syn_lr_init)))
        self.register_buffer("iteration", torch.tensor(0, dtype=torch.long))
        self.register_buffer("skipped_steps", torch.tensor(0, dtype=torch.long))
        self.register_buffer("consecutive_skips", torch.tensor(0, dtype=torch.long))
        self.register_buffer("lr_clamps", torch.tensor(0, dtype=torch.long))
        # the student is not a submodule: it is rebuilt from the pretrained weights, never
        # trained as a module, and must not be part of the checkpoint or of DDP's buckets
        self._student = [student]
        self.buffer = buffer
        self.operations = parse_strategy(settings.augment)
        self.weights = MatchingWeights(settings.image_weight, settings.text_weight)
        self._last_time: float | None = None
        self.last_draw: tuple[int, int] | None = None  # (expert, start epoch) of the latest iteration

    @property
    def student(self) -> DualEncoder:
        return self._student[0]

    @property
    def num_pairs(self) -> int:
        return int(self.image_syn.shape[0])

    def setup(self, stage: str) -> None:
        # fused attention kernels (timm's scaled_dot_product_attention path) have no double
        # backward, which the unroll needs; the explicit softmax attention does
        for module in self.student.modules():
            if hasattr(module, "fused_attn"):
                module.fused_attn = False
        self.student.to(self.device).train()
        self.functional = FunctionalModel(self.student, (self.student.image_layout, self.student.text_layout))
        self.hoist = self.settings.hoist_frozen_features and not self.student.backbone_trainable

    def on_fit_start(self) -> None:
        self.student.to(self.device).train()
        self.functional = FunctionalModel(self.student, (self.student.image_layout, self.student.text_layout))

    def train_dataloader(self) -> DataLoader:
        return _IterationLoader(_Iterations(self), batch_size=None)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        s = self.settings
        return [
            torch.optim.SGD([self.image_syn], lr=s.lr_image, momentum=s.momentum),
            torch.optim.SGD([self.text_syn], lr=s.lr_text, momentum=s.momentum),
            torch.optim.SGD([self.syn_lr_image], lr=s.lr_lr, momentum=s.momentum),
            torch.optim.SGD([self.syn_lr_text], lr=s.lr_lr, momentum=s.momentum),
        ]

    # one distillation iteration

    def _generator(self, *keys: object) -> torch.Generator:
        device = self.device if self.device.type == "cuda" else "cpu"
        return torch.Generator(device=device).manual_seed(derive_seed(self.settings.seed, *keys))

    def _draw(self, iteration: int) -> tuple[int, int, list[Tensor]]:
        s = self.settings
        g = self._generator("draw", iteration, self.global_rank)
        expert = int(torch.randint(len(self.buffer), (1,), generator=g, device=g.device))
        start = int(torch.randint(s.max_start_epoch, (1,), generator=g, device=g.device))
        batches = [
            torch.randperm(self.num_pairs, generator=g, device=g.device)[: s.mini_batch_size].to(self.device)
            for _ in range(s.syn_steps)
        ]
        return expert, start, batches

    def compute_meta_gradient(self, iteration: int) -> MetaGradient:
        """Unroll the student for this iteration's draw and differentiate the matching loss.

        ``input_grads`` of the result are the gradients of the synthetic images and texts.
        """
        s = self.settings
        expert, start, batches = self._draw(iteration)
        self.last_draw = (expert, start)
        segment = self.buffer.segment(expert, start, s.expert_epochs, self.device, self.image_syn.dtype)
        rank = self.global_rank

        if self.hoist:
            # frozen backbone: augment and encode every synthetic image once per iteration
            images = differentiable_augment(self.image_syn, self.operations, self._generator("augment", iteration, rank))
            features = self.student.image_features(images)
            inputs = [features, self.text_syn]
        else:
            inputs = [self.image_syn, self.text_syn]

        def step_loss(theta: Tensor, phi: Tensor, j: int) -> Tensor:
            index = batches[j]
            texts = inputs[1][index]
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                torch.manual_seed(derive_seed(s.seed, "dropout", iteration, rank, j))
                with torch.autocast(self.device.type, dtype=s.autocast_dtype or torch.float32,
                                    enabled=s.autocast_dtype is not None):
                    if self.hoist:
                        image_emb, text_emb = self.functional((theta, phi), texts, image_features=inputs[0][index])
                    else:
                        g = self._generator("augment", iteration, rank, j)
                        images = differentiable_augment(inputs[0][index], self.operations, g)
                        image_emb, text_emb = self.functional((theta, phi), texts, images=images)
            # the loss runs in at least float32, also when autocast produced bfloat16 embeddings
            dtype = torch.promote_types(image_emb.dtype, torch.float32)
            return clip_loss(image_emb.to(dtype), text_emb.to(dtype), s.inner_logit_scale)

        result = matching_meta_gradient(
            step_loss, segment, inputs, self.syn_lr_image, self.syn_lr_text,
            s.syn_steps, self.weights, s.unroll,  # type: ignore[arg-type]
        )
        if self.hoist:
            (image_grad,) = torch.autograd.grad(features, self.image_syn, result.input_grads[0])
            result.input_grads[0] = image_grad
        return result

    def training_step(self, batch: int, batch_idx: int) -> None:
        iteration = int(self.iteration)
        result = self.compute_meta_gradient(iteration)
        params = [self.image_syn, self.text_syn, self.syn_lr_image, self.syn_lr_text]
        grads = [*result.input_grads, result.lr_image_grad, result.lr_text_grad]

        optimizers = self.optimizers()
        for optimizer in optimizers:
            optimizer.zero_grad()
        # backpropagating <p, g> sets p.grad = g and lets DDP average it over ranks
        surrogate = sum((p * g.detach()).sum() for p, g in zip(params, grads, strict=True))
        self.manual_backward(surrogate)

        problem = self._step_problem(result, params, optimizers)
        # a problem on any rank skips the step on all of them, so their states stay equal
        if self.trainer.strategy.reduce_boolean_decision(problem is not None, all=False):
            self._skip_step(iteration, problem or "a non-finite value on another rank")
        else:
            self.consecutive_skips.zero_()
            for optimizer in optimizers:
                optimizer.step()
            self._project_learning_rates()
        self.iteration += 1
        self._log_iteration(result, grads)

    def _step_problem(self, result: MetaGradient, params: list[nn.Parameter], optimizers: list) -> str | None:
        """Describe why this step must not be taken, or return None if it is safe.

        Unsafe: a non-finite loss or gradient, or an update that would move a synthetic
        image or text value beyond ``max_abs_value`` (a runaway outer learning rate).
        """
        if not torch.isfinite(result.loss):
            return f"the matching loss is {result.loss.item()}"
        for name, p in zip(("image", "text", "lr_image", "lr_text"), params, strict=True):
            if p.grad is None or not torch.isfinite(p.grad).all():
                return f"the {name} gradient is not finite"
        limit = self.settings.max_abs_value
        for name, optimizer in (("image", optimizers[0]), ("text", optimizers[1])):
            (candidate,) = preview_sgd_step(optimizer.optimizer)
            largest = candidate.abs().max().item()
            if not largest <= limit:  # also catches NaN
                return f"the step would move a synthetic {name} value to {largest:.3g}, beyond {limit:g}"
        return None

    def _skip_step(self, iteration: int, problem: str) -> None:
        self.skipped_steps += 1
        self.consecutive_skips += 1
        for p in (self.image_syn, self.text_syn, self.syn_lr_image, self.syn_lr_text):
            p.grad = None
        log.warning("iteration %d skipped: %s", iteration, problem)
        if int(self.consecutive_skips) >= self.settings.max_consecutive_skips:
            raise NonFiniteError(
                f"{int(self.consecutive_skips)} distillation steps in a row were skipped (iteration "
                f"{iteration}: {problem}); lower distill.lr_image (now {self.settings.lr_image}), "
                f"distill.lr_text (now {self.settings.lr_text}) or distill.syn_lr_init, or use "
                f"fewer distill.syn_steps"
            )

    @torch.no_grad()
    def _project_learning_rates(self) -> None:
        low, high = self.settings.syn_lr_min, self.settings.syn_lr_max
        for name, lr in (("syn_lr_image", self.syn_lr_image), ("syn_lr_text", self.syn_lr_text)):
            value = lr.item()
            if not low <= value <= high:
                self.lr_clamps += 1
                log.warning("%s stepped to %.4g, outside [%g, %g]; clipped (iteration %d)",
                            name, value, low, high, int(self.iteration))
                lr.clamp_(low, high)

    def _log_iteration(self, result: MetaGradient, grads: list[Tensor]) -> None:
        now = time.perf_counter()
        metrics = {
            "distill/match_loss": result.loss,
            "distill/image_term": result.image_term,
            "distill/text_term": result.text_term,
            "distill/student_loss": result.student_loss,
            "distill/syn_lr_image": self.syn_lr_image.detach(),
            "distill/syn_lr_text": self.syn_lr_text.detach(),
            "distill/grad_norm_image": grads[0].norm(),
            "distill/grad_norm_text": grads[1].norm(),
            "distill/skipped_steps": self.skipped_steps.float(),
            "distill/lr_clamps": self.lr_clamps.float(),
            "distill/iteration": self.iteration.float(),
        }
        if self._last_time is not None:
            metrics["distill/iterations_per_s"] = torch.tensor(1.0 / max(now - self._last_time, 1e-9))
        self._last_time = now
        self.log_dict({k: v.float() for k, v in metrics.items()}, prog_bar=False, on_step=True, on_epoch=False)
        self.log("match", result.loss.float(), prog_bar=True, logger=False)
