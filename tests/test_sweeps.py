"""Sweeps: the W&B sweep template, Hydra launchers for SLURM and local jobs, and reports."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from vldd_lightning.app import PROJECT_ROOT
from vldd_lightning.report import main as report_main
from vldd_lightning.report import write_report

from .conftest import DATA_DIR, TINY, compose_config


def composed_job(args: list[str]) -> dict:
    result = subprocess.run([sys.executable, "-m", "vldd_lightning", *args, "--cfg", "job", "--resolve"],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_wandb_sweep_template_drives_hydra_overrides():
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    template = yaml.safe_load((PROJECT_ROOT / "experiments" / "wandb_sweep.yaml").read_text())
    # one run of the sweep as the agent would start it, with values holding '/' and spaces
    run_args = {"num_pairs": {"value": 10}, "distill.lr_text": {"value": 300},
                "logger.tags": {"value": "[tuxpaint, lr sweep]"},
                "dataset.stamps_dir": {"value": "/srv/my stamps/tuxpaint"},
                "logger.group": {"value": "team a/sweep 1"}}
    arguments = create_sweep_command_args({"args": run_args})["args_no_hyphens"]
    command = []
    for part in create_sweep_command(template["command"]):
        command += arguments if part == "${args_no_hyphens}" else [part]
    assert command[1:4] == ["python", "-m", "vldd_lightning"]
    start = command.index("vldd_lightning") + 1
    job = composed_job(command[start:])
    assert job["num_pairs"] == 10
    assert job["distill"]["lr_text"] == 300
    assert job["dataset"]["stamps_dir"] == "/srv/my stamps/tuxpaint"
    assert job["logger"]["group"] == "team a/sweep 1"
    assert job["logger"]["tags"] == ["tuxpaint", "lr sweep"]
    assert job["logger"]["mode"] == "online"
    assert job["stage"] == "all"


def test_slurm_launcher_composes():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from vldd_lightning.app import CONFIG_DIR

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "trainer=ddp",
                                           "trainer.num_nodes=2", "+experiment=flickr_100"], return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher["partition"] == "gpu"
    assert launcher["nodes"] == 2


@pytest.mark.slow
@pytest.mark.usefixtures("tuxpaint_root")
@pytest.mark.parametrize("launcher", ["submitit_local", "joblib"])
def test_launcher_runs_jobs(tmp_path, shared_cache, launcher):
    sweep = tmp_path / "sweep"
    overrides = ["-m", *(o for o in TINY if not o.startswith("num_pairs")),
        f"hydra/launcher={launcher}", "stage=prepare", "num_pairs=3,5",
        f"paths.data_dir={DATA_DIR}", f"paths.artifacts_dir={tmp_path / 'artifacts'}",
        f"paths.cache_dir={shared_cache}", f"hydra.sweep.dir={sweep}",
    ]
    if launcher == "joblib":
        overrides.append("hydra.launcher.n_jobs=2")
    result = subprocess.run([sys.executable, "-m", "vldd_lightning", *overrides], cwd=PROJECT_ROOT,
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "src")})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    budgets = sorted(json.loads((sweep / job / "results.json").read_text())["num_pairs"] for job in ("0", "1"))
    assert budgets == [3, 5]


def fake_results(folder, budget, method, values, dataset="tuxpaint", val_values=None, seeds=None, num_pairs=None):
    folder.mkdir(parents=True, exist_ok=True)
    per_seed = [{key: value for key in ("tr@1", "tr@5", "tr@10", "ir@1", "ir@5", "ir@10", "r_mean")} for value in values]
    record = {"kind": "evaluation", "method": method, "num_pairs": num_pairs or budget, "budget": budget,
              "dataset": dataset, "per_seed": per_seed}
    if seeds is not None:
        record["seeds"] = seeds
    if val_values is not None:
        record["val_r_mean"] = val_values
    (folder / "results.json").write_text(json.dumps({"stage": "evaluate", "evaluations": [record]}))


def test_report_pools_seeds_and_writes_table(tmp_path):
    fake_results(tmp_path / "sweep" / "0", 10, "random", [1.0, 3.0])
    fake_results(tmp_path / "sweep" / "1", 10, "distilled", [6.0, 8.0, 10.0])
    fake_results(tmp_path / "sweep" / "2", 20, "random", [4.0])
    fake_results(tmp_path / "other", 10, "random", [5.0])  # a second run of the same cell
    result = write_report([tmp_path / "sweep", tmp_path / "other"], tmp_path / "report")
    table = (tmp_path / "report" / "report.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| pairs"))
    assert header == "| pairs | random | distilled |"
    row10 = next(line for line in table.splitlines() if line.startswith("| 10 |"))
    assert "3.0/3.0/3.0 ; 3.0/3.0/3.0 (mean 3.0 ± 2.0, n=3)" in row10  # random: seeds 1, 3 and 5
    assert "8.0/8.0/8.0 ; 8.0/8.0/8.0 (mean 8.0 ± 2.0, n=3)" in row10
    row20 = next(line for line in table.splitlines() if line.startswith("| 20 |"))
    assert row20.endswith("| – |")
    rows = (tmp_path / "report" / "report.csv").read_text().splitlines()
    assert rows[0].startswith("dataset,budget,method,num_pairs,seeds,tr@1_mean")
    assert len(rows) == 4
    assert (tmp_path / "report" / "recall_vs_pairs.png").stat().st_size > 1000
    assert result["records"] == 4


def test_report_counts_repeated_run_once(tmp_path):
    # a rerun of the same command reads back the same three students
    for run in ("first", "rerun"):
        fake_results(tmp_path / run, 20, "random", [1.0, 3.0, 5.0], seeds=[11, 12, 13])
    fake_results(tmp_path / "new_seeds", 20, "random", [7.0], seeds=[14])
    write_report([tmp_path], tmp_path / "report")
    row = next(line for line in (tmp_path / "report" / "report.md").read_text().splitlines() if line.startswith("| 20 |"))
    assert "(mean 4.0 ± 2.6, n=4)" in row


def test_report_names_pairs_beside_budget(tmp_path):
    fake_results(tmp_path / "run", 20, "random", [1.0])
    fake_results(tmp_path / "run" / "x5", 20, "random_x5", [2.0], num_pairs=100)
    write_report([tmp_path / "run"], tmp_path / "report")
    row = next(line for line in (tmp_path / "report" / "report.md").read_text().splitlines() if line.startswith("| 20 |"))
    assert row.endswith("(mean 1.0 ± 0.0, n=1) | 2.0/2.0/2.0 ; 2.0/2.0/2.0 (mean 2.0 ± 0.0, n=1, 100 pairs) |")


def test_report_ranks_sweep_by_validation(tmp_path, capsys):
    # three settings of one method: the best test recall belongs to the worst validation score
    for job, lr, test, val in [("0", 30, [20.0, 22.0], [18.0, 18.0]), ("1", 100, [21.0, 21.0], [25.0, 27.0]),
                               ("2", 300, [30.0, 30.0], [10.0, 12.0])]:
        fake_results(tmp_path / "sweep" / job, 20, "distilled", test, val_values=val)
        (tmp_path / "sweep" / job / ".hydra").mkdir()
        (tmp_path / "sweep" / job / ".hydra" / "overrides.yaml").write_text(
            f"- +experiment=tuxpaint_tune\n- distill.lr_image={lr}\n- paths.artifacts_dir=/tmp/a\n")
    fake_results(tmp_path / "sweep" / "3", 20, "random", [5.0, 6.0], val_values=[4.0, 4.0])  # alone in its group
    assert report_main([str(tmp_path / "sweep"), "--output", str(tmp_path / "report")]) == 0

    lines = (tmp_path / "report" / "selection.md").read_text().splitlines()
    assert lines[0] == "### tuxpaint, distilled, 20 pairs"
    rows = [line for line in lines if line.startswith("| ") and line[2].isdigit()]
    assert rows == [
        "| 1 | `distill.lr_image=100` | 26.0 ± 1.4 | 21.0 ± 0.0 | 2 |",
        "| 2 | `distill.lr_image=30` | 18.0 ± 0.0 | 21.0 ± 1.4 | 2 |",
        "| 3 | `distill.lr_image=300` | 11.0 ± 1.4 | 30.0 ± 0.0 | 2 |",
    ]
    assert "random" not in "\n".join(lines)
    assert "runs ranked by validation mean recall" in capsys.readouterr().out


def test_report_without_validation_writes_no_selection(tmp_path):
    fake_results(tmp_path / "sweep" / "0", 20, "distilled", [20.0])
    fake_results(tmp_path / "sweep" / "1", 20, "distilled", [22.0], val_values=[None])
    result = write_report([tmp_path / "sweep"], tmp_path / "report")
    assert "selection" not in result
    assert not (tmp_path / "report" / "selection.md").exists()


def test_report_without_results_fails_clearly(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert report_main([str(tmp_path / "empty"), "--output", str(tmp_path / "out")]) == 2
    assert "no evaluation records" in capsys.readouterr().err


def test_table_experiment_sweeps_all_methods():
    cfg = compose_config(["+experiment=tuxpaint_table"])
    assert cfg.stage == "evaluate"
    assert list(cfg.evaluate.methods) == ["random", "herding", "k_center", "forgetting", "distilled"]


@pytest.mark.slow
@pytest.mark.usefixtures("tuxpaint_root")
def test_tune_sweep_ranks_jobs_by_validation(tmp_path, shared_cache, shared_buffer):
    sweep = tmp_path / "sweep"
    # the command line narrows the experiment's 3 x 3 grid of rates to 2 jobs
    overrides = ["-m", "+experiment=tuxpaint_tune", *TINY, "distill.lr_image=10,1000", "distill.lr_text=30",
                 f"buffer.dir={shared_buffer}",
                 f"paths.data_dir={DATA_DIR}", f"paths.artifacts_dir={tmp_path / 'artifacts'}",
                 f"paths.cache_dir={shared_cache}", f"hydra.sweep.dir={sweep}"]
    result = subprocess.run([sys.executable, "-m", "vldd_lightning", *overrides], cwd=PROJECT_ROOT,
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "src")})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert len(list((tmp_path / "artifacts").glob("distilled/*/distilled.safetensors"))) == 2

    assert report_main([str(sweep), "--output", str(tmp_path / "report")]) == 0
    lines = (tmp_path / "report" / "selection.md").read_text().splitlines()
    assert lines[0] == "### tuxpaint, distilled, 6 pairs"
    rows = [line.split(" | ") for line in lines if line.startswith("| ") and line[2].isdigit()]
    assert [row[0] for row in rows] == ["| 1", "| 2"]
    assert {row[1] for row in rows} == {"`distill.lr_image=10`", "`distill.lr_image=1000`"}
    val_means = [float(row[2].split(" ± ")[0]) for row in rows]
    assert val_means[0] >= val_means[1] > 0

