"""Frozen sentence encoders whose outputs are computed once and cached.

Poolings: ``mean`` (masked mean of the last hidden states, as sentence-transformers
models such as all-MiniLM-L6-v2 are trained), ``cls`` (the [CLS] vector, as in the
paper's BERT-base setting) and ``clip`` (the projected end-of-text embedding of a CLIP
text tower).
"""

from __future__ import annotations

import hashlib
import importlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from vldd_lightning.errors import ConfigError

log = logging.getLogger(__name__)

POOLINGS = ("mean", "cls", "clip")


@dataclass(frozen=True)
class TextEncoderSpec:
    model: str  # hub id, local folder, or "package:<module>" (a module with get_model_path())
    pooling: str = "mean"
    max_length: int = 64
    local_files_only: bool = False


def resolve_model_path(model: str) -> str:
    if model.startswith("package:"):
        module_name = model.removeprefix("package:")
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise ConfigError(
                f"text_encoder.model={model} needs the Python package {module_name!r}; "
                "install the project with 'pip install -e .'"
            ) from error
        return str(module.get_model_path())
    return model


def model_fingerprint(model: str) -> str:
    """Identify a model's files cheaply: its config files' content and its weight files' sizes."""
    path = Path(resolve_model_path(model))
    if not path.is_dir():
        return model  # a hub id: its name is the identity
    digest = hashlib.sha256()
    for file in sorted(path.rglob("*")):
        if not file.is_file():
            continue
        digest.update(file.relative_to(path).as_posix().encode())
        if file.suffix == ".json" or file.name == "vocab.txt":
            digest.update(file.read_bytes())
        else:
            digest.update(str(file.stat().st_size).encode())
    return digest.hexdigest()[:16]


class FrozenTextEncoder:
    """A pretrained text encoder in eval mode; ``encode`` returns one vector per caption."""

    def __init__(self, spec: TextEncoderSpec, device: str | torch.device = "cpu") -> None:
        if spec.pooling not in POOLINGS:
            raise ConfigError(f"text_encoder.pooling={spec.pooling!r} is invalid; choose one of {POOLINGS}")
        from transformers import AutoModel, AutoTokenizer, CLIPTextModelWithProjection

        self.spec = spec
        self.device = torch.device(device)
        path = resolve_model_path(spec.model)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=spec.local_files_only)
            model_class = CLIPTextModelWithProjection if spec.pooling == "clip" else AutoModel
            self.model = model_class.from_pretrained(path, local_files_only=spec.local_files_only)
        except OSError as error:
            raise ConfigError(
                f"loading the text encoder {spec.model!r} failed ({error}); download it once with "
                "network access, or set text_encoder.model to a local folder"
            ) from error
        self.model.to(self.device).eval().requires_grad_(False)

    @property
    def dim(self) -> int:
        config = self.model.config
        if self.spec.pooling == "clip":
            return int(config.projection_dim)
        return int(config.hidden_size)

    @torch.no_grad()
    def encode(self, captions: list[str], batch_size: int = 128, progress: bool = True) -> Tensor:
        """Return a (len(captions), dim) float32 tensor on the CPU."""
        outputs = []
        batches = range(0, len(captions), batch_size)
        for start in tqdm(batches, desc="embed captions", unit="batch", disable=not progress):
            tokens = self.tokenizer(
                captions[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=self.spec.max_length,
                return_tensors="pt",
            ).to(self.device)
            result = self.model(**tokens)
            if self.spec.pooling == "clip":
                pooled = result.text_embeds
            elif self.spec.pooling == "cls":
                pooled = result.last_hidden_state[:, 0]
            else:
                mask = tokens["attention_mask"].unsqueeze(-1).to(result.last_hidden_state.dtype)
                pooled = (result.last_hidden_state * mask).sum(1) / mask.sum(1).clamp_min(1.0)
            outputs.append(pooled.float().cpu())
        return torch.cat(outputs) if outputs else torch.zeros(0, self.dim)
