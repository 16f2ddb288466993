"""The dual encoder: image backbone and head, and a text head over frozen text embeddings."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vldd_lightning.core.params import ParamLayout
from vldd_lightning.models.heads import build_head
from vldd_lightning.models.image import BackboneSpec, build_backbone, trainable_backbone_names


@dataclass(frozen=True)
class DualEncoderSpec:
    backbone: BackboneSpec
    text_dim: int
    trainable: str = "none"  # all | last_blocks | none
    last_blocks: int = 1
    image_head: str = "mlp"  # mlp | linear | none
    embed_dim: int | None = 256  # None: the backbone's feature size (needs image_head=none)
    head_dropout: float = 0.1


class DualEncoder(nn.Module):
    """Image encoder f_theta and text head g_phi, both ending in the same embedding space.

    The backbone always runs in eval mode: its BatchNorm layers use their pretrained
    running statistics and are never updated, so the network is a fixed function of its
    parameters. This matters for the unrolled student, which must see the same function
    as the experts. Only the text head's dropout follows ``train()``/``eval()``.
    """

    IMAGE_PREFIXES = ("image_backbone.", "image_head.")
    TEXT_PREFIX = "text_head."

    def __init__(self, spec: DualEncoderSpec) -> None:
        super().__init__()
        self.spec = spec
        self.image_backbone = build_backbone(spec.backbone)
        feature_dim = int(self.image_backbone.num_features)
        embed_dim = spec.embed_dim or feature_dim
        self.feature_dim = feature_dim
        self.embed_dim = embed_dim
        self.image_head = build_head(spec.image_head, feature_dim, embed_dim, spec.head_dropout)
        self.text_head = build_head("mlp", spec.text_dim, embed_dim, spec.head_dropout)

        trainable_backbone = trainable_backbone_names(self.image_backbone, spec.trainable, spec.last_blocks)
        for name, param in self.image_backbone.named_parameters():
            param.requires_grad_(name in trainable_backbone)
        self.backbone_trainable = bool(trainable_backbone)
        self.image_backbone.eval()

    def train(self, mode: bool = True) -> DualEncoder:
        super().train(mode)
        self.image_backbone.eval()
        return self

    @property
    def image_layout(self) -> ParamLayout:
        """Trainable image-side parameters (backbone part and image head), in module order."""
        return ParamLayout.from_named(
            (name, p) for name, p in self.named_parameters()
            if name.startswith(self.IMAGE_PREFIXES) and p.requires_grad
        )

    @property
    def text_layout(self) -> ParamLayout:
        return ParamLayout.from_named(
            (name, p) for name, p in self.named_parameters()
            if name.startswith(self.TEXT_PREFIX) and p.requires_grad
        )

    def image_features(self, images: Tensor) -> Tensor:
        """Pooled backbone features (B, F); no graph is built for a frozen backbone's own use."""
        needs_graph = self.backbone_trainable or images.requires_grad
        with torch.set_grad_enabled(needs_graph and torch.is_grad_enabled()):
            return self.image_backbone(images)

    def forward(
        self, text_embeddings: Tensor, images: Tensor | None = None, image_features: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Return (image embeddings, text embeddings), unnormalised, each (B, embed_dim).

        Pass either ``images`` (B, 3, H, W) in the backbone's normalised input space, or
        their precomputed ``image_features`` (B, F) when the backbone is frozen.
        """
        if image_features is None:
            if images is None:
                raise ValueError("pass images or image_features")
            image_features = self.image_features(images)
        return self.image_head(image_features), self.text_head(text_embeddings)

    def describe(self) -> dict[str, object]:
        """Identity of the architecture and of the trainable parameters, for metadata checks."""
        return {
            "arch": self.spec.backbone.arch,
            "weights": self.spec.backbone.weights,
            "trainable": self.spec.trainable,
            "last_blocks": self.spec.last_blocks if self.spec.trainable == "last_blocks" else None,
            "image_head": self.spec.image_head,
            "embed_dim": self.embed_dim,
            "text_dim": self.spec.text_dim,
            "image_params": self.image_layout.numel,
            "text_params": self.text_layout.numel,
        }
