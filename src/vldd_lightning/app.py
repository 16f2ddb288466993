"""The Hydra application: compose the config, run the selected stage, record the run."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vldd_lightning.errors import VlddError
from vldd_lightning.utils.atomic import atomic_write_json, atomic_write_text
from vldd_lightning.utils.runinfo import run_info
from vldd_lightning.validation import validate_config

log = logging.getLogger("vldd_lightning")

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = PROJECT_ROOT / "conf"


def _stage_runner(stage: str):
    from vldd_lightning.stages.buffer import run_buffer
    from vldd_lightning.stages.coreset import run_coreset
    from vldd_lightning.stages.distill import run_distill
    from vldd_lightning.stages.evaluate import run_evaluate
    from vldd_lightning.stages.pipeline import run_all
    from vldd_lightning.stages.prepare import run_prepare

    def run_train_full(state):
        from vldd_lightning.stages.evaluate import run_evaluate as evaluate

        return evaluate(state, ["full"])

    def run_report(state):
        from vldd_lightning.report import report_from_config

        return report_from_config(state)

    return {
        "prepare": run_prepare, "train_full": run_train_full, "buffer": run_buffer,
        "distill": run_distill, "coreset": run_coreset, "evaluate": run_evaluate,
        "all": run_all, "report": run_report,
    }[stage]


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Run ``cfg.stage`` with outputs in ``run_dir`` and return its results record."""
    from vldd_lightning.context import ExperimentContext
    from vldd_lightning.stages.common import RunState

    validate_config(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    is_rank_zero = int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0
    if is_rank_zero:
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        atomic_write_json(run_dir / "run_info.json", run_info(PROJECT_ROOT))

    state = RunState(cfg=cfg, run_dir=run_dir, context=ExperimentContext(cfg))
    try:
        results = _stage_runner(cfg.stage)(state)
    finally:
        state.close()
    record = {"stage": cfg.stage, "experiment": cfg.experiment_name, "dataset": cfg.dataset.name,
              "num_pairs": cfg.num_pairs, "seed": cfg.seed, **results}
    if is_rank_zero:
        atomic_write_json(run_dir / "results.json", record)
    return record


def quiet_library_logs() -> None:
    """Keep Lightning's per-trainer banners out of the log; its warnings still show."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda",
                 "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Lightning adds its own console handler; Hydra's root handlers already print and file them
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).handlers.clear()


def hydra_entry(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    quiet_library_logs()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        run(cfg, run_dir)
    except VlddError as error:
        log.error("%s", error)  # Hydra's handlers print it and write it to the run's log file
        if HydraConfig.get().mode.name == "MULTIRUN":
            raise
        sys.exit(2)
