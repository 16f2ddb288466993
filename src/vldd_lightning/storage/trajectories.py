"""Expert trajectories: one safetensors file per expert.

``expert_XXX.safetensors`` contains ``image_params`` (E+1, P_img) and ``text_params``
(E+1, P_txt), row e being the trainable parameters after e epochs (row 0: the pretrained
start), in the storage dtype, plus the expert's per-pair forgetting statistics. The
metadata identifies the data set, the models and the parameter layouts, so that a
distillation run can refuse trajectories that do not match its own configuration.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from vldd_lightning.core.matching import TrajectorySegment
from vldd_lightning.core.params import ParamLayout
from vldd_lightning.errors import ArtifactError
from vldd_lightning.storage.tensors import describe_mismatch, read_metadata, save_tensors

FORMAT = "vldd.trajectory"
VERSION = 1
STORAGE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_EXPERT_FILE = re.compile(r"^expert_(\d{3,})\.safetensors$")


def expert_path(folder: Path, index: int) -> Path:
    return folder / f"expert_{index:03d}.safetensors"


def save_expert(
    path: Path,
    image_snapshots: list[Tensor],
    text_snapshots: list[Tensor],
    identity: dict[str, Any],
    image_layout: ParamLayout,
    text_layout: ParamLayout,
    storage_dtype: str,
    extra: dict[str, Any],
    forgetting: dict[str, Tensor] | None = None,
) -> Path:
    dtype = STORAGE_DTYPES[storage_dtype]
    tensors = {
        "image_params": torch.stack(image_snapshots).to(dtype),
        "text_params": torch.stack(text_snapshots).to(dtype),
    }
    tensors |= forgetting or {}
    metadata = {
        "format": FORMAT,
        "version": VERSION,
        "identity": identity,
        "image_layout": image_layout.describe(),
        "text_layout": text_layout.describe(),
        "snapshots": len(image_snapshots),
        "storage_dtype": storage_dtype,
        **extra,
    }
    return save_tensors(path, tensors, metadata)


@dataclass
class ExpertRecord:
    path: Path
    metadata: dict[str, Any]

    @property
    def snapshots(self) -> int:
        return int(self.metadata["snapshots"])


def _check_compatible(path: Path, metadata: dict[str, Any], identity: dict[str, Any],
                      image_layout: ParamLayout, text_layout: ParamLayout) -> None:
    if metadata.get("format") != FORMAT or metadata.get("version") != VERSION:
        raise ArtifactError(f"{path} is not a version-{VERSION} vldd trajectory file")
    problems = describe_mismatch(identity, metadata.get("identity", {}))
    if metadata.get("image_layout") != image_layout.describe():
        problems.append("image parameter layout: the trainable image parameters differ")
    if metadata.get("text_layout") != text_layout.describe():
        problems.append("text parameter layout: the text head differs")
    if problems:
        raise ArtifactError(
            f"the trajectories in {path.parent} were recorded for another configuration:\n  "
            + "\n  ".join(problems)
            + "\nrun stage=buffer with this configuration, or select the matching dataset/encoder"
        )


class TrajectoryBuffer:
    """Read access to the expert files of one buffer folder, checked against a configuration."""

    def __init__(self, folder: Path, identity: dict[str, Any], image_layout: ParamLayout,
                 text_layout: ParamLayout) -> None:
        files = sorted(p for p in folder.glob("expert_*.safetensors") if _EXPERT_FILE.match(p.name))
        if not files:
            raise ArtifactError(f"no expert trajectories in {folder}; run stage=buffer first")
        self.experts = []
        for path in files:
            metadata = read_metadata(path, "expert trajectory")
            _check_compatible(path, metadata, identity, image_layout, text_layout)
            self.experts.append(ExpertRecord(path, metadata))
        self.image_layout, self.text_layout = image_layout, text_layout

    def __len__(self) -> int:
        return len(self.experts)

    @property
    def min_snapshots(self) -> int:
        return min(record.snapshots for record in self.experts)

    def segment(self, expert: int, start: int, span: int, device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32) -> TrajectorySegment:
        """Return snapshots ``start`` and ``start + span`` of an expert as flat vectors."""
        record = self.experts[expert]
        if start < 0 or start + span >= record.snapshots:
            raise ArtifactError(
                f"{record.path} has {record.snapshots} snapshots; start epoch {start} plus "
                f"expert_epochs {span} is beyond its end"
            )
        try:
            with safe_open(str(record.path), framework="pt") as handle:
                image = handle.get_slice("image_params")
                text = handle.get_slice("text_params")
                rows = [image[start], image[start + span], text[start], text[start + span]]
        except (SafetensorError, OSError, ValueError) as error:
            raise ArtifactError(f"{record.path} is corrupt or truncated ({error}); delete it and rerun stage=buffer") from error
        image_start, image_target, text_start, text_target = (
            row.reshape(-1).to(device=device, dtype=dtype) for row in rows
        )
        for name, row in (("image", image_start), ("image", image_target), ("text", text_start), ("text", text_target)):
            if not torch.isfinite(row).all():
                raise ArtifactError(f"{record.path}: the {name} snapshots contain NaN or infinite values; retrain this expert")
        return TrajectorySegment(image_start, image_target, text_start, text_target)

    def forgetting_statistics(self) -> tuple[Tensor, Tensor]:
        """Sum the forgetting events and OR the ever-learned flags over all experts."""
        events, learned = None, None
        for record in self.experts:
            try:
                with safe_open(str(record.path), framework="pt") as handle:
                    if "forgetting_events" not in set(handle.keys()):
                        raise ArtifactError(
                            f"{record.path} has no forgetting statistics; rerun stage=buffer with "
                            "buffer.record_forgetting=true"
                        )
                    expert_events = handle.get_tensor("forgetting_events").long()
                    expert_learned = handle.get_tensor("ever_correct").bool()
            except (SafetensorError, OSError) as error:
                raise ArtifactError(f"{record.path} is corrupt ({error})") from error
            events = expert_events if events is None else events + expert_events
            learned = expert_learned if learned is None else learned | expert_learned
        assert events is not None and learned is not None
        return events, learned
