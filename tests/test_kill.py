"""Each stage killed with SIGKILL mid-way and rerun ends as an uninterrupted run does.

The killed run is a real subprocess of `python -m vldd_lightning`; the uninterrupted
reference and the rerun go through the same entry point in this process, which saves the
import time of two more interpreters per test.
"""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vldd_lightning.app import PROJECT_ROOT, run

from .conftest import DATA_DIR, TINY

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("tuxpaint_root")]


@pytest.fixture
def stage(tmp_path: Path, shared_cache: Path, make_config):
    """``stage(artifacts, *overrides)``: the overrides of a tiny run writing to tmp_path/artifacts."""

    def overrides(artifacts: str, *extra: str) -> list[str]:
        return [f"paths.artifacts_dir={tmp_path / artifacts}", *extra]

    def in_process(artifacts: str, *extra: str) -> dict:
        return run(make_config(*overrides(artifacts, *extra)), tmp_path / f"run-{artifacts}-{time.monotonic_ns()}")

    def command(artifacts: str, *extra: str) -> list[str]:
        base = [*TINY, f"paths.data_dir={DATA_DIR}", f"paths.cache_dir={shared_cache}",
                f"hydra.run.dir={tmp_path / 'killed-run'}"]
        return [sys.executable, "-m", "vldd_lightning", *base, *overrides(artifacts, *extra)]

    in_process.command = command  # type: ignore[attr-defined]
    return in_process


def kill_when(args: list[str], ready, timeout: float = 600) -> None:
    """Start ``args`` and SIGKILL it as soon as ``ready()`` is true; the run must not finish first."""
    process = subprocess.Popen(args, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert process.poll() is None, "the run ended before the point where it should be killed"
            assert time.monotonic() < deadline, "timed out waiting for the kill point"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL


def one(folder: Path, pattern: str) -> Path:
    (path,) = folder.glob(pattern)
    return path


def assert_same_tensors(a: Path, b: Path) -> None:
    first, second = load_file(a), load_file(b)
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


def test_prepare_killed_and_rerun(tmp_path, stage):
    from vldd_lightning.data.tuxpaint import TuxpaintSettings, locate_stamps

    stamps = locate_stamps(TuxpaintSettings(root=DATA_DIR / "tuxpaint", stamps_dir=None))
    fresh = tmp_path / "data"
    extra = ("stage=prepare", f"paths.data_dir={fresh}", f"dataset.stamps_dir={stamps}")
    images = fresh / "tuxpaint" / "images"
    kill_when(stage.command("artifacts", *extra), lambda: images.is_dir() and sum(1 for _ in images.rglob("*.png")) >= 100)
    assert not (fresh / "tuxpaint" / "prepared.json").exists()
    stage("artifacts", *extra)
    for name in ("tuxpaint_train.json", "tuxpaint_val.json", "tuxpaint_test.json"):
        assert (fresh / "tuxpaint" / name).read_text() == (DATA_DIR / "tuxpaint" / name).read_text()
    for path in (DATA_DIR / "tuxpaint" / "images").rglob("*.png"):
        assert (fresh / "tuxpaint" / path.relative_to(DATA_DIR / "tuxpaint")).read_bytes() == path.read_bytes()


def test_buffer_killed_mid_expert_and_rerun(tmp_path, stage):
    extra = ("stage=buffer", "buffer.epochs=3")
    stage("reference", *extra)
    kill_when(stage.command("killed", *extra), lambda: any((tmp_path / "killed").glob("buffers/*/expert_001.work/last.ckpt")))
    assert not any((tmp_path / "killed").glob("buffers/*/expert_001.safetensors"))
    stage("killed", *extra)
    for name in ("expert_000.safetensors", "expert_001.safetensors"):
        assert_same_tensors(one(tmp_path / "reference", f"buffers/*/{name}"), one(tmp_path / "killed", f"buffers/*/{name}"))


def test_distill_killed_after_checkpoint_and_rerun(tmp_path, stage):
    extra = ("stage=distill", "distill.iterations=8", "distill.checkpoint_every=2")
    stage("reference", *extra)
    kill_when(stage.command("killed", *extra), lambda: any((tmp_path / "killed").glob("distilled/*/last.ckpt")))
    assert not any((tmp_path / "killed").glob("distilled/*/distilled.safetensors"))
    stage("killed", *extra)
    assert_same_tensors(one(tmp_path / "reference", "distilled/*/distilled.safetensors"),
                        one(tmp_path / "killed", "distilled/*/distilled.safetensors"))


def test_coreset_killed_and_rerun(tmp_path, stage):
    extra = ("stage=coreset", "coreset=k_center", "num_pairs=40")
    stage("reference", *extra)
    kill_when(stage.command("killed", *extra), lambda: (tmp_path / "killed-run" / "config.yaml").exists())
    assert not any((tmp_path / "killed").glob("coresets/*/coreset.safetensors"))
    stage("killed", *extra)
    assert_same_tensors(one(tmp_path / "reference", "coresets/*/coreset.safetensors"),
                        one(tmp_path / "killed", "coresets/*/coreset.safetensors"))


def test_evaluate_killed_between_students_and_rerun(tmp_path, stage):
    extra = ("stage=evaluate", "evaluate.methods=[random,herding]", "evaluate.num_eval=2")
    reference = stage("reference", *extra)["evaluations"]
    kill_when(stage.command("killed", *extra), lambda: len(list((tmp_path / "killed").glob("evaluations/*.json"))) >= 2)
    finished = {p.name: p.read_text() for p in (tmp_path / "killed").glob("evaluations/*.json")}
    assert 2 <= len(finished) < 4
    resumed = stage("killed", *extra)["evaluations"]
    for name, text in finished.items():  # finished students were read back, not trained again
        assert (tmp_path / "killed" / "evaluations" / name).read_text() == text
    assert [r["per_seed"] for r in resumed] == [r["per_seed"] for r in reference]
    assert json.loads(json.dumps(resumed[0]["mean"])) == reference[0]["mean"]
