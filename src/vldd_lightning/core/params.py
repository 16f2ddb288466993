"""Flat parameter vectors and functional evaluation of a module at given parameters.

A trajectory snapshot, a student's state during the unroll and the expert targets are all
flat vectors. :class:`ParamLayout` maps between a flat vector and a module's named
parameters, and :class:`FunctionalModel` runs the module at such a vector with
``torch.func.functional_call``, so that the unrolled student never mutates the module.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call


@dataclass(frozen=True)
class ParamLayout:
    """The ordered names and shapes of the parameters stored in one flat vector."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def from_named(cls, named: Iterable[tuple[str, Tensor]]) -> ParamLayout:
        pairs = list(named)
        return cls(tuple(name for name, _ in pairs), tuple(tuple(t.shape) for _, t in pairs))

    @classmethod
    def from_description(cls, description: Iterable[Iterable[Any]]) -> ParamLayout:
        pairs = [(str(name), tuple(int(d) for d in shape)) for name, shape in description]
        return cls(tuple(name for name, _ in pairs), tuple(shape for _, shape in pairs))

    @property
    def numels(self) -> tuple[int, ...]:
        return tuple(math.prod(shape) for shape in self.shapes)

    @property
    def numel(self) -> int:
        return sum(self.numels)

    def describe(self) -> list[list[Any]]:
        """Return a JSON-friendly description, stored in trajectory metadata."""
        return [[name, list(shape)] for name, shape in zip(self.names, self.shapes, strict=True)]

    def flatten(self, tensors: Mapping[str, Tensor]) -> Tensor:
        missing = [name for name in self.names if name not in tensors]
        if missing:
            raise KeyError(f"parameters missing from the mapping: {missing[:5]}")
        if not self.names:
            return torch.zeros(0)
        return torch.cat([tensors[name].reshape(-1) for name in self.names])

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """Split a flat vector into views shaped like the parameters (gradients flow through)."""
        if flat.shape != (self.numel,):
            raise ValueError(f"expected a flat vector of {self.numel} values, got {tuple(flat.shape)}")
        pieces = torch.split(flat, self.numels)
        return {
            name: piece.view(shape)
            for name, piece, shape in zip(self.names, pieces, self.shapes, strict=True)
        }


class FunctionalModel:
    """Evaluate ``module`` with some parameters replaced by flat vectors.

    The parameters not covered by the layouts, and all buffers, are taken from the module
    as constants. The module itself is never modified.
    """

    def __init__(self, module: nn.Module, layouts: tuple[ParamLayout, ...]) -> None:
        self.module = module
        self.layouts = layouts
        replaced = {name for layout in layouts for name in layout.names}
        self.constants: dict[str, Tensor] = {
            name: param.detach() for name, param in module.named_parameters() if name not in replaced
        }
        self.constants.update(dict(module.named_buffers()))

    def __call__(self, flats: tuple[Tensor, ...], *args: Any, **kwargs: Any) -> Any:
        params = dict(self.constants)
        for layout, flat in zip(self.layouts, flats, strict=True):
            params.update(layout.unflatten(flat))
        return functional_call(self.module, params, args, kwargs, strict=False)
