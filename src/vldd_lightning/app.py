"""The Hydra application: compose the config, run the selected stage, record the run."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

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

    validate_config(cfg)
    context = ExperimentContext(cfg)
    if cfg.stage != "report":
        _ = context.splits  # missing or bad data fails here, before Lightning is imported

    from vldd_lightning.stages.common import RunState

    run_dir.mkdir(parents=True, exist_ok=True)
    is_rank_zero = int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0
    if is_rank_zero:
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        atomic_write_json(run_dir / "run_info.json", run_info(PROJECT_ROOT))

    state = RunState(cfg=cfg, run_dir=run_dir, context=context)
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


def prepare_ddp_children() -> None:
    """Make the processes Lightning starts for DDP rerun this job alone, in this job's folder.

    Lightning restarts ``sys.argv`` with ``hydra.run.dir`` set to the run folder. In a
    multirun, that command would start the whole sweep again in another folder, so it is
    replaced by this job's own overrides and its output folder.
    """
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode.name != "MULTIRUN":
        return
    sys.argv = [sys.argv[0], *hydra_cfg.overrides.task]
    with read_write(hydra_cfg), open_dict(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir


_DDP_ENVIRONMENT = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def end_distributed_job(saved_environment: dict[str, str | None]) -> None:
    """Leave the process as before the job, so the next job of a sweep starts its own DDP.

    Lightning sets the rank variables in the launching process and keeps the process group.
    Without this reset, the next job would reuse a group whose other processes have exited.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for key, value in saved_environment.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def hydra_entry(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    quiet_library_logs()
    prepare_ddp_children()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    multirun = HydraConfig.get().mode.name == "MULTIRUN"
    saved_environment = {key: os.environ.get(key) for key in _DDP_ENVIRONMENT}
    try:
        run(cfg, run_dir)
    except VlddError as error:
        log.error("%s", error)  # Hydra's handlers print it and write it to the run's log file
        if multirun:
            raise
        sys.exit(2)
    finally:
        if multirun:
            end_distributed_job(saved_environment)
