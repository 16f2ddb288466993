"""Projection heads that map encoder outputs into the shared embedding space."""

from __future__ import annotations

from torch import Tensor, nn


class ProjectionHead(nn.Module):
    """Linear, GELU, Linear, dropout, residual from the first Linear, then LayerNorm.

    The text head of the method; the image head reuses it when the backbone is frozen.
    """

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.projection = nn.Linear(in_dim, out_dim)
        self.fc = nn.Linear(out_dim, out_dim)
        self.activation = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: Tensor) -> Tensor:
        projected = self.projection(x)
        x = self.dropout(self.fc(self.activation(projected)))
        return self.norm(x + projected)


def build_head(kind: str, in_dim: int, out_dim: int, dropout: float) -> nn.Module:
    if kind == "mlp":
        return ProjectionHead(in_dim, out_dim, dropout)
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "none":
        if in_dim != out_dim:
            raise ValueError(f"image_head=none needs embed_dim == feature dim ({in_dim}), got {out_dim}")
        return nn.Identity()
    raise ValueError(f"unknown head kind {kind!r}; choose mlp, linear or none")
