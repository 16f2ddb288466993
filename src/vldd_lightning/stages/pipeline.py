"""Stage ``all``: prepare, buffer, distill, then evaluate the comparison methods."""

from __future__ import annotations

import logging
from typing import Any

from vldd_lightning.stages.buffer import run_buffer
from vldd_lightning.stages.common import RunState
from vldd_lightning.stages.distill import run_distill
from vldd_lightning.stages.evaluate import results_table, run_evaluate
from vldd_lightning.stages.prepare import run_prepare

log = logging.getLogger(__name__)


def run_all(state: RunState) -> dict[str, Any]:
    results: dict[str, Any] = {"prepare": run_prepare(state)}
    results["buffer"] = run_buffer(state)
    results["distill"] = run_distill(state)
    results |= run_evaluate(state, list(state.cfg.all.methods))
    if results["evaluations"]:  # empty on the other ranks of a DDP job
        print("\n" + results_table(results["evaluations"]) + "\n", flush=True)
    return results
