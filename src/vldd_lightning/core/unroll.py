"""Unrolled student training and the meta-gradient of the trajectory matching loss.

The student starts at an expert snapshot (theta_0, phi_0) and takes ``syn_steps`` SGD
steps on the synthetic pairs:

    theta_{j+1} = theta_j - lr_img * grad_theta l_j(theta_j, phi_j)
    phi_{j+1}   = phi_j   - lr_txt * grad_phi   l_j(theta_j, phi_j)

where l_j is the contrastive loss of step j's mini-batch. The matching loss L compares
(theta_S, phi_S) with the expert target. This module returns L and its gradient with
respect to the synthetic inputs and both learning rates, by one of three schemes:

``plain``
    Keep the graph of every step and backpropagate once (exact). Memory grows linearly with
    ``syn_steps``: every step's activations and their double-backward graph are kept.
``checkpointed``
    Exact reverse-mode differentiation with recomputation. The forward pass keeps only the
    parameter vectors theta_j, phi_j (syn_steps x P floats); the reverse pass recomputes one
    step at a time and propagates the adjoint a_j = a_{j+1} - lr * H_j a_{j+1} with a
    Hessian-vector product. Activation memory is that of a single step.
``tesla``
    The first-order scheme of "Scaling Up Dataset Distillation to ImageNet-1K with Constant
    Memory" (Cui et al., ICML 2023). Each step's contribution uses the final adjoint a_S in
    place of a_{j+1}, i.e. it drops every term that flows through a later step's Hessian.
    Memory is constant in ``syn_steps``: nothing per step is stored. The gradient is exact
    for ``syn_steps == 1``; otherwise its error is first order in lr * ||H|| * syn_steps
    and vanishes as the learning rates go to zero.

All three call ``step_loss(theta, phi, j)`` for step j. The two recomputing schemes call it
more than once per step, so it must be deterministic for a given j (fixed mini-batch,
augmentation and dropout draws): seed any randomness from j.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from vldd_lightning.core.matching import MatchingWeights, TrajectorySegment, matching_loss

UnrollMode = Literal["plain", "checkpointed", "tesla"]
UNROLL_MODES: tuple[str, ...] = ("plain", "checkpointed", "tesla")

StepLoss = Callable[[Tensor, Tensor, int], Tensor]


@dataclass
class MetaGradient:
    """The matching loss and its gradients with respect to the distilled state."""

    loss: Tensor
    image_term: Tensor
    text_term: Tensor
    input_grads: list[Tensor]
    lr_image_grad: Tensor
    lr_text_grad: Tensor
    student_loss: Tensor  # mean contrastive loss of the unrolled steps, for logging


def _grad(output: Tensor, inputs: Sequence[Tensor], **kwargs: bool) -> list[Tensor]:
    grads = torch.autograd.grad(output, inputs, allow_unused=True, **kwargs)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads, strict=True)]


def _sgd_step(
    theta: Tensor, phi: Tensor, loss: Tensor, lr_image: Tensor, lr_text: Tensor, create_graph: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    grad_theta, grad_phi = _grad(loss, (theta, phi), create_graph=create_graph)
    return theta - lr_image * grad_theta, phi - lr_text * grad_phi, grad_theta, grad_phi


def _leaf(x: Tensor) -> Tensor:
    return x.detach().requires_grad_(True)


def _unroll_plain(
    step_loss: StepLoss,
    segment: TrajectorySegment,
    inputs: Sequence[Tensor],
    lr_image: Tensor,
    lr_text: Tensor,
    syn_steps: int,
    weights: MatchingWeights,
) -> MetaGradient:
    theta, phi = _leaf(segment.image_start), _leaf(segment.text_start)
    student_losses = []
    for j in range(syn_steps):
        loss_j = step_loss(theta, phi, j)
        theta, phi, _, _ = _sgd_step(theta, phi, loss_j, lr_image, lr_text, create_graph=True)
        student_losses.append(loss_j.detach())

    loss, image_term, text_term = matching_loss(theta, phi, segment, weights)
    grads = _grad(loss, [*inputs, lr_image, lr_text])
    return MetaGradient(
        loss.detach(), image_term.detach(), text_term.detach(),
        grads[:-2], grads[-2], grads[-1], torch.stack(student_losses).mean(),
    )


def _final_adjoint(
    theta_end: Tensor, phi_end: Tensor, segment: TrajectorySegment, weights: MatchingWeights
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    theta_end, phi_end = _leaf(theta_end), _leaf(phi_end)
    loss, image_term, text_term = matching_loss(theta_end, phi_end, segment, weights)
    adjoint_theta, adjoint_phi = _grad(loss, (theta_end, phi_end))
    return loss.detach(), image_term.detach(), text_term.detach(), adjoint_theta, adjoint_phi


def _backprop_step(
    step_loss: StepLoss,
    theta_j: Tensor,
    phi_j: Tensor,
    j: int,
    adjoint_theta: Tensor,
    adjoint_phi: Tensor,
    inputs: Sequence[Tensor],
    lr_image: Tensor,
    lr_text: Tensor,
    need_param_adjoint: bool,
) -> tuple[list[Tensor], Tensor, Tensor, Tensor, Tensor]:
    """Pull the adjoint of (theta_{j+1}, phi_{j+1}) back through step j.

    Returns the gradient contributions to the inputs, to both learning rates, and the
    adjoint of (theta_j, phi_j) (zeros when ``need_param_adjoint`` is false).
    """
    theta_j, phi_j = _leaf(theta_j), _leaf(phi_j)
    loss_j = step_loss(theta_j, phi_j, j)
    grad_theta, grad_phi = _grad(loss_j, (theta_j, phi_j), create_graph=True)

    # d theta_{j+1} / d lr = -grad, so dL/dlr = -<adjoint, grad>
    lr_image_grad = -(adjoint_theta * grad_theta.detach()).sum()
    lr_text_grad = -(adjoint_phi * grad_phi.detach()).sum()

    # vector-Jacobian product of the update with the adjoint, the learning rates held fixed
    pulled = -(lr_image.detach() * (adjoint_theta * grad_theta).sum()) - (
        lr_text.detach() * (adjoint_phi * grad_phi).sum()
    )
    targets = [*inputs, theta_j, phi_j] if need_param_adjoint else list(inputs)
    grads = _grad(pulled, targets)
    if need_param_adjoint:
        input_grads, hvp_theta, hvp_phi = grads[:-2], grads[-2], grads[-1]
        return input_grads, lr_image_grad, lr_text_grad, adjoint_theta + hvp_theta, adjoint_phi + hvp_phi
    return grads, lr_image_grad, lr_text_grad, adjoint_theta, adjoint_phi


def _accumulate(total: list[Tensor] | None, new: list[Tensor]) -> list[Tensor]:
    if total is None:
        return list(new)
    return [a + b for a, b in zip(total, new, strict=True)]


def _unroll_checkpointed(
    step_loss: StepLoss,
    segment: TrajectorySegment,
    inputs: Sequence[Tensor],
    lr_image: Tensor,
    lr_text: Tensor,
    syn_steps: int,
    weights: MatchingWeights,
) -> MetaGradient:
    # forward: keep only the parameter vectors of every step
    thetas, phis, student_losses = [segment.image_start.detach()], [segment.text_start.detach()], []
    for j in range(syn_steps):
        theta, phi = _leaf(thetas[-1]), _leaf(phis[-1])
        loss_j = step_loss(theta, phi, j)
        theta, phi, _, _ = _sgd_step(theta, phi, loss_j, lr_image.detach(), lr_text.detach(), False)
        thetas.append(theta.detach())
        phis.append(phi.detach())
        student_losses.append(loss_j.detach())

    loss, image_term, text_term, adjoint_theta, adjoint_phi = _final_adjoint(
        thetas[-1], phis[-1], segment, weights
    )

    # reverse: recompute one step at a time and propagate the adjoint through it
    input_grads: list[Tensor] | None = None
    lr_image_grad = torch.zeros_like(lr_image)
    lr_text_grad = torch.zeros_like(lr_text)
    for j in reversed(range(syn_steps)):
        step_grads, d_lr_image, d_lr_text, adjoint_theta, adjoint_phi = _backprop_step(
            step_loss, thetas[j], phis[j], j, adjoint_theta, adjoint_phi,
            inputs, lr_image, lr_text, need_param_adjoint=j > 0,
        )
        input_grads = _accumulate(input_grads, step_grads)
        lr_image_grad = lr_image_grad + d_lr_image
        lr_text_grad = lr_text_grad + d_lr_text

    assert input_grads is not None
    return MetaGradient(
        loss, image_term, text_term, input_grads, lr_image_grad, lr_text_grad,
        torch.stack(student_losses).mean(),
    )


def _unroll_tesla(
    step_loss: StepLoss,
    segment: TrajectorySegment,
    inputs: Sequence[Tensor],
    lr_image: Tensor,
    lr_text: Tensor,
    syn_steps: int,
    weights: MatchingWeights,
) -> MetaGradient:
    # first pass: find theta_S without a graph and without storing the path
    theta, phi = segment.image_start.detach(), segment.text_start.detach()
    student_losses = []
    for j in range(syn_steps):
        theta, phi = _leaf(theta), _leaf(phi)
        loss_j = step_loss(theta, phi, j)
        theta, phi, _, _ = _sgd_step(theta, phi, loss_j, lr_image.detach(), lr_text.detach(), False)
        theta, phi = theta.detach(), phi.detach()
        student_losses.append(loss_j.detach())

    loss, image_term, text_term, adjoint_theta, adjoint_phi = _final_adjoint(theta, phi, segment, weights)

    # second pass: replay the steps, pulling the final adjoint back through each one
    theta, phi = segment.image_start.detach(), segment.text_start.detach()
    input_grads: list[Tensor] | None = None
    lr_image_grad = torch.zeros_like(lr_image)
    lr_text_grad = torch.zeros_like(lr_text)
    for j in range(syn_steps):
        theta_j, phi_j = _leaf(theta), _leaf(phi)
        loss_j = step_loss(theta_j, phi_j, j)
        grad_theta, grad_phi = _grad(loss_j, (theta_j, phi_j), create_graph=True)
        lr_image_grad = lr_image_grad - (adjoint_theta * grad_theta.detach()).sum()
        lr_text_grad = lr_text_grad - (adjoint_phi * grad_phi.detach()).sum()
        pulled = -(lr_image.detach() * (adjoint_theta * grad_theta).sum()) - (
            lr_text.detach() * (adjoint_phi * grad_phi).sum()
        )
        input_grads = _accumulate(input_grads, _grad(pulled, list(inputs)))
        theta = theta - lr_image.detach() * grad_theta.detach()
        phi = phi - lr_text.detach() * grad_phi.detach()

    assert input_grads is not None
    return MetaGradient(
        loss, image_term, text_term, input_grads, lr_image_grad, lr_text_grad,
        torch.stack(student_losses).mean(),
    )


_SCHEMES = {"plain": _unroll_plain, "checkpointed": _unroll_checkpointed, "tesla": _unroll_tesla}


def matching_meta_gradient(
    step_loss: StepLoss,
    segment: TrajectorySegment,
    inputs: Sequence[Tensor],
    lr_image: Tensor,
    lr_text: Tensor,
    syn_steps: int,
    weights: MatchingWeights | None = None,
    mode: UnrollMode = "plain",
) -> MetaGradient:
    """Unroll the student from ``segment`` and differentiate the matching loss.

    Args:
        step_loss: ``step_loss(theta, phi, j)`` returns the student's contrastive loss of
            step j at flat parameters (theta, phi); it may depend on ``inputs``.
        segment: the expert's start and target snapshots.
        inputs: the tensors to differentiate with respect to (synthetic images or their
            features, synthetic text embeddings), in the order of ``input_grads``.
        lr_image, lr_text: scalar tensors, the inner learning rates.
        syn_steps: number of unrolled SGD steps, at least 1.
        mode: ``plain``, ``checkpointed`` or ``tesla`` (see the module docstring).
    """
    if syn_steps < 1:
        raise ValueError(f"syn_steps must be at least 1, got {syn_steps}")
    if mode not in _SCHEMES:
        raise ValueError(f"unknown unroll mode {mode!r}; choose one of {UNROLL_MODES}")
    return _SCHEMES[mode](step_loss, segment, inputs, lr_image, lr_text, syn_steps, weights or MatchingWeights())
