"""Differentiable augmentation of synthetic images.

The operations follow "Dataset Condensation with Differentiable Siamese Augmentation"
(Zhao & Bilen, ICML 2021): colour jitter, translation ("crop"), horizontal flip, scaling,
rotation and cutout, each with parameters drawn per image. The magnitudes below are those
of the public DSA code that trajectory-matching implementations reuse. Every operation is
differentiable in the pixels, so the matching loss reaches the synthetic images through
it. All draws come from the given generator, so a step can be recomputed exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

OPERATIONS = ("color", "crop", "flip", "scale", "rotate", "cutout")

BRIGHTNESS = 1.0  # additive shift in [-0.5, 0.5]
SATURATION = 2.0  # factor in [0, 2]
CONTRAST = 0.5  # factor in [0.5, 1.5]
TRANSLATION = 0.125  # fraction of the image size
SCALE = 1.2  # factor in [1/1.2, 1.2] per axis
ROTATION_DEGREES = 15.0
CUTOUT = 0.5  # side of the erased square, as a fraction of the image size


def parse_strategy(strategy: str) -> tuple[str, ...]:
    """Split a strategy such as ``color_crop_flip`` and check every operation name."""
    if strategy in ("", "none"):
        return ()
    operations = tuple(strategy.split("_"))
    unknown = [op for op in operations if op not in OPERATIONS]
    if unknown:
        raise ValueError(f"unknown augmentation {unknown} in {strategy!r}; valid operations: {OPERATIONS}")
    return operations


def _uniform(n: int, low: float, high: float, generator: torch.Generator, like: Tensor) -> Tensor:
    values = torch.rand(n, generator=generator, device=generator.device)
    return (low + (high - low) * values).to(device=like.device, dtype=like.dtype)


def _color(x: Tensor, g: torch.Generator) -> Tensor:
    n = x.shape[0]
    x = x + _uniform(n, -0.5, 0.5, g, x).mul(BRIGHTNESS).view(n, 1, 1, 1)
    channel_mean = x.mean(dim=1, keepdim=True)
    x = (x - channel_mean) * _uniform(n, 0.0, SATURATION, g, x).view(n, 1, 1, 1) + channel_mean
    image_mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - image_mean) * _uniform(n, 1 - CONTRAST, 1 + CONTRAST, g, x).view(n, 1, 1, 1) + image_mean


def _affine(x: Tensor, operations: tuple[str, ...], g: torch.Generator) -> Tensor:
    n = x.shape[0]
    eye = torch.eye(2, device=x.device, dtype=x.dtype).expand(n, 2, 2)
    matrix = eye.clone()
    shift = x.new_zeros(n, 2)
    if "scale" in operations:
        scales = torch.stack([_uniform(n, 1 / SCALE, SCALE, g, x), _uniform(n, 1 / SCALE, SCALE, g, x)], dim=1)
        matrix = matrix * scales[:, None, :]
    if "rotate" in operations:
        angle = _uniform(n, -ROTATION_DEGREES, ROTATION_DEGREES, g, x) * math.pi / 180
        cos, sin = torch.cos(angle), torch.sin(angle)
        rotation = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
        matrix = rotation @ matrix
    if "flip" in operations:
        sign = torch.where(_uniform(n, 0, 1, g, x) < 0.5, -1.0, 1.0).to(x.dtype)
        matrix = matrix * torch.stack([sign, torch.ones_like(sign)], 1)[:, None, :]
    if "crop" in operations:
        shift = torch.stack([_uniform(n, -TRANSLATION, TRANSLATION, g, x), _uniform(n, -TRANSLATION, TRANSLATION, g, x)], 1) * 2
    theta = torch.cat([matrix, shift[:, :, None]], dim=2)  # (n, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _cutout(x: Tensor, g: torch.Generator) -> Tensor:
    n, _, h, w = x.shape
    centre_y = _uniform(n, 0, 1, g, x) * h
    centre_x = _uniform(n, 0, 1, g, x) * w
    half_h, half_w = CUTOUT * h / 2, CUTOUT * w / 2
    ys = torch.arange(h, device=x.device, dtype=x.dtype).view(1, h, 1)
    xs = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, w)
    inside = ((ys - centre_y.view(n, 1, 1)).abs() < half_h) & ((xs - centre_x.view(n, 1, 1)).abs() < half_w)
    return x * (~inside).unsqueeze(1).to(x.dtype)


def differentiable_augment(x: Tensor, operations: tuple[str, ...], generator: torch.Generator) -> Tensor:
    """Augment a batch (N, C, H, W) with parameters drawn per image from ``generator``."""
    if not operations:
        return x
    if "color" in operations:
        x = _color(x, generator)
    if any(op in operations for op in ("crop", "flip", "scale", "rotate")):
        x = _affine(x, operations, generator)
    if "cutout" in operations:
        x = _cutout(x, generator)
    return x
