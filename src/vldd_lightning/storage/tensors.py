"""Safetensors files with a JSON metadata record, written atomically and checked on load."""

from __future__ import annotations

import errno
import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from vldd_lightning.errors import ArtifactError
from vldd_lightning.utils.atomic import atomic_path

METADATA_KEY = "vldd"


def save_tensors(path: str | Path, tensors: dict[str, Tensor], metadata: dict[str, Any]) -> Path:
    """Write ``tensors`` and ``metadata`` to a safetensors file atomically."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ArtifactError(f"refusing to save {path}: tensor {name!r} contains NaN or infinite values")
    contiguous = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
    header = {METADATA_KEY: json.dumps(metadata, sort_keys=True, allow_nan=False)}
    with atomic_path(path) as tmp:
        try:
            save_file(contiguous, str(tmp), metadata=header)
        except SafetensorError as error:
            # safetensors reports I/O failures as "... (os error N)"; re-raise them as OSError
            # so that the atomic writer explains them (disk full, read-only) like any other
            found = re.search(r"os error (\d+)", str(error))
            raise OSError(int(found[1]) if found else errno.EIO, str(error)) from error
    return Path(path)


def read_metadata(path: str | Path, what: str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{what} not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise ArtifactError(
            f"{what} at {path} is corrupt or truncated ({error}); delete it and rerun the stage that writes it"
        ) from error
    if METADATA_KEY not in header:
        raise ArtifactError(f"{what} at {path} has no vldd metadata; it was not written by vldd_lightning")
    try:
        return json.loads(header[METADATA_KEY])
    except json.JSONDecodeError as error:
        raise ArtifactError(f"{what} at {path} has corrupt metadata ({error})") from error


def load_tensors(path: str | Path, what: str, names: list[str] | None = None) -> dict[str, Tensor]:
    """Load tensors (all, or ``names``) and check that floating-point ones are finite."""
    path = Path(path)
    read_metadata(path, what)
    try:
        with safe_open(str(path), framework="pt") as handle:
            available = set(handle.keys())
            keys = sorted(available) if names is None else names
            missing = [name for name in keys if name not in available]
            if missing:
                raise ArtifactError(f"{what} at {path} lacks the tensors {missing}")
            tensors = {name: handle.get_tensor(name) for name in keys}
    except (SafetensorError, OSError, ValueError) as error:
        raise ArtifactError(
            f"{what} at {path} is corrupt or truncated ({error}); delete it and rerun the stage that writes it"
        ) from error
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ArtifactError(f"{what} at {path}: tensor {name!r} contains NaN or infinite values")
    return tensors


def describe_mismatch(expected: dict[str, Any], found: dict[str, Any]) -> list[str]:
    """List the keys whose values differ, as 'key: expected X, found Y'."""
    lines = []
    for key in sorted(set(expected) | set(found)):
        if expected.get(key) != found.get(key):
            lines.append(f"{key}: this run has {expected.get(key)!r}, the file has {found.get(key)!r}")
    return lines
