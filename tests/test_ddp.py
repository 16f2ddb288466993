"""Distributed distillation with real processes (DDP over gloo on the CPU)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vldd_lightning.app import PROJECT_ROOT

from .conftest import DATA_DIR, TINY

WORKER = Path(__file__).with_name("ddp_worker.py")


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_ranks_hold_identical_state_and_resume_on_one_device(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "src")}
    subprocess.run([sys.executable, str(WORKER), str(tmp_path), "train"], check=True, env=env, timeout=600)
    rank0 = [r for r in read_lines(tmp_path / "rank_0.jsonl") if "iteration" in r]
    rank1 = [r for r in read_lines(tmp_path / "rank_1.jsonl") if "iteration" in r]
    assert [r["iteration"] for r in rank0] == [1, 2, 3, 4]
    assert [r["iteration"] for r in rank1] == [1, 2, 3, 4]
    assert {r["world_size"] for r in rank0 + rank1} == {2}
    # every step leaves the same synthetic images, texts and learning rates on both ranks ...
    for a, b in zip(rank0, rank1, strict=True):
        assert a["digest"] == b["digest"], a["iteration"]
    # ... although each rank drew its own expert for the step
    assert any(a["draw"] != b["draw"] for a, b in zip(rank0, rank1, strict=True))
    # and the state changed from step to step
    assert len({r["digest"] for r in rank0}) == 4

    # the checkpoint of the 2-process run (iteration 3) resumes on a single device, here
    sys.path.insert(0, str(WORKER.parent))
    try:
        from ddp_worker import main as worker_main
    finally:
        sys.path.remove(str(WORKER.parent))
    threads = torch.get_num_threads()
    try:
        worker_main(tmp_path, "resume")
    finally:
        torch.set_num_threads(threads)  # the worker runs on one thread; later tests expect the default
    start, *resumed = read_lines(tmp_path / "rank_0.jsonl")[len(rank0) + 1:]
    assert start["start"] == 3
    assert start["digest"] == rank0[2]["digest"]  # the state the two processes held after iteration 3
    assert [r["iteration"] for r in resumed] == [4, 5, 6]
    assert {r["world_size"] for r in resumed} == {1}
    final = json.loads((tmp_path / "final_resume.json").read_text())
    assert final["iteration"] == 6


@pytest.mark.slow
@pytest.mark.usefixtures("tuxpaint_root")
def test_multirun_with_ddp_gives_one_folder_per_job(tmp_path, shared_cache):
    sweep = tmp_path / "sweep"
    overrides = [o for o in TINY if not o.startswith("buffer.")] + [
        "stage=buffer", "trainer=ddp_cpu", "buffer.num_experts=1", "buffer.epochs=1", "buffer.batch_size=16,32",
        f"paths.data_dir={DATA_DIR}", f"paths.artifacts_dir={tmp_path / 'artifacts'}",
        f"paths.cache_dir={shared_cache}", f"hydra.sweep.dir={sweep}",
    ]
    result = subprocess.run([sys.executable, "-m", "vldd_lightning", "-m", *overrides], cwd=PROJECT_ROOT,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1", "multirun.yaml"]
    for job in ("0", "1"):
        folder = sweep / job
        assert (folder / "results.json").is_file()
        assert (folder / "train_ddp_process_1.log").is_file()  # rank 1 ran in the same folder
        assert not list(folder.glob("*/results.json"))
    # the two jobs differ in batch size, so each trained its own expert
    assert len(list((tmp_path / "artifacts").glob("buffers/*/expert_000.safetensors"))) == 2
