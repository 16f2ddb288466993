"""Stage ``prepare``: load and check the data set, and fill the embedding caches."""

from __future__ import annotations

import logging
from typing import Any

from vldd_lightning.stages.common import RunState

log = logging.getLogger(__name__)


def run_prepare(state: RunState) -> dict[str, Any]:
    ctx = state.context
    summary: dict[str, Any] = {}
    for name, split in ctx.splits.items():
        embeddings = ctx.text_embeddings(name)
        summary[name] = {"images": split.num_images, "captions": split.num_captions, "text_dim": int(embeddings.shape[1])}
        if ctx.frozen_backbone:
            ctx.image_features(name)
    log.info("data set %s: %s", state.cfg.dataset.name, summary)
    return {"splits": summary}
