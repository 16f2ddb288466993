"""Entry point: ``python -m vldd_lightning [overrides]``."""

from __future__ import annotations

import os

# nothing in the default run may reach the network; users opt in with logger.mode=online
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import hydra
from omegaconf import DictConfig

from vldd_lightning.app import CONFIG_DIR, hydra_entry
from vldd_lightning.config.schema import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> None:
    hydra_entry(cfg)


if __name__ == "__main__":
    main()
