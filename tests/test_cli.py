"""The command line as users run it: exit codes and one-line errors, no tracebacks."""

import os
import subprocess
import sys

import pytest

from vldd_lightning.app import PROJECT_ROOT


def vldd(*args: str, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vldd_lightning", *args],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_missing_dataset_root_names_path_and_key(tmp_path):
    result = vldd("stage=train_full", "dataset=flickr30k", "dataset.root=/missing", "logger=none",
                  f"hydra.run.dir={tmp_path}")
    output = result.stdout + result.stderr
    assert result.returncode == 2
    assert "dataset.root=/missing does not exist; set dataset.root" in output
    assert "Traceback" not in output


def test_unset_dataset_root_names_key(tmp_path):
    result = vldd("stage=prepare", "dataset=coco", "logger=none", f"hydra.run.dir={tmp_path}",
                  env={"COCO_ROOT": ""})
    assert result.returncode == 2
    assert "dataset.root is not set" in result.stdout + result.stderr


def test_paper_experiment_without_data_stops_clearly(tmp_path):
    result = vldd("+experiment=flickr_100", "logger=none", f"hydra.run.dir={tmp_path}", env={"FLICKR30K_ROOT": ""})
    output = result.stdout + result.stderr
    assert result.returncode == 2
    assert "dataset.root is not set; point it to the folder with the flickr30k annotation files" in output
    assert "Traceback" not in output


@pytest.mark.parametrize(("override", "message"), [
    ("distill.syn_stepz=2", "Key 'syn_stepz' not in 'DistillConfig'"),
    ("encoder=nfnet_l9", "Available options in 'encoder'"),
    ("num_pairs=ten", "Value 'ten' of type 'str' could not be converted to Integer"),
])
def test_bad_configuration_is_reported(tmp_path, override, message):
    result = vldd(override, f"hydra.run.dir={tmp_path}")
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
