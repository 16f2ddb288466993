"""Shared fixtures: offline settings, the real tuxpaint data set, composed configs."""

from __future__ import annotations

import os

# tests never reach a model hub or W&B's servers
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from vldd_lightning.app import CONFIG_DIR, PROJECT_ROOT
from vldd_lightning.config.schema import register_configs

register_configs()

# The prepared data set is shared by the whole suite and by `make run` (data/ is ignored by git).
DATA_DIR = Path(os.environ.get("VLDD_DATA_DIR", PROJECT_ROOT / "data"))

# A complete but tiny run of every stage: seconds instead of minutes.
TINY = [
    "logger=none",
    "trainer.enable_progress_bar=false",
    "num_pairs=6",
    "buffer.num_experts=2",
    "buffer.epochs=2",
    "buffer.augment_views=2",
    "distill.iterations=4",
    "distill.syn_steps=2",
    "distill.mini_batch_size=4",
    "distill.max_start_epoch=1",
    "distill.checkpoint_every=2",
    "evaluate.num_eval=2",
    "evaluate.protocol.epochs=4",
    "evaluate.protocol.val_every=2",
    "train_full.epochs=2",
    "train_full.val_every=1",
]


def compose_config(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=overrides)


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Text and feature caches shared by all tests of a session."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def make_config(tmp_path: Path, shared_cache: Path) -> Callable[..., DictConfig]:
    """Compose the default config with tiny settings, writing artifacts under tmp_path."""

    def make(*overrides: str, tiny: bool = True) -> DictConfig:
        base = [
            f"paths.data_dir={DATA_DIR}",
            f"paths.artifacts_dir={tmp_path / 'artifacts'}",
            f"paths.cache_dir={shared_cache}",
        ]
        return compose_config(base + (TINY if tiny else []) + list(overrides))

    return make


@pytest.fixture(scope="session")
def shared_buffer(tmp_path_factory: pytest.TempPathFactory, shared_cache: Path, tuxpaint_root: Path) -> Path:
    """Tiny expert trajectories trained once, for tests about the distillation only."""
    from vldd_lightning.app import run

    folder = tmp_path_factory.mktemp("shared_buffer")
    cfg = compose_config([f"paths.data_dir={DATA_DIR}", f"paths.artifacts_dir={folder}",
                          f"paths.cache_dir={shared_cache}", *TINY, "stage=buffer"])
    return Path(run(cfg, folder / "run")["buffer_dir"])


@pytest.fixture(scope="session")
def tuxpaint_root() -> Path:
    """The real tuxpaint data set, prepared once (downloads the Debian package if needed)."""
    from vldd_lightning.data.tuxpaint import TuxpaintSettings, prepare_tuxpaint

    return prepare_tuxpaint(TuxpaintSettings(root=DATA_DIR / "tuxpaint", stamps_dir=None))


@dataclass
class TinyDisk:
    path: Path

    def make_read_only(self) -> None:
        subprocess.run(["mount", "-o", "remount,ro", str(self.path)], check=True)


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A 256 KiB tmpfs mounted under tmp_path: a real disk that fills up or turns read-only.

    Mounting needs root (as on the CI machines); without it this fixture errors out.
    """
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)], check=True)
    try:
        yield TinyDisk(mount_point)
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
