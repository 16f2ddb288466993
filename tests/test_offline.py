"""The default job's path reaches no network: a stage runs with W&B in a namespace without one."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vldd_lightning.app import PROJECT_ROOT

from .conftest import DATA_DIR, TINY

# Loaded into the child interpreter: refuse and record every connection or name lookup that
# leaves the machine (unix sockets and loopback stay allowed: W&B's local service uses them).
SOCKET_GUARD = r'''
import os, socket
_log = os.environ["VLDD_SOCKET_LOG"]
_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex
_getaddrinfo = socket.getaddrinfo

def _local(address):
    if isinstance(address, (str, bytes)):
        return True  # unix socket
    host = str(address[0])
    return host in ("localhost", "::1") or host.startswith("127.")

def _refuse(what):
    with open(_log, "a") as handle:
        handle.write(what + "\n")
    raise OSError(101, "network access blocked by the test: " + what)

def connect(self, address):
    if not _local(address):
        _refuse(f"connect {address}")
    return _connect(self, address)

def connect_ex(self, address):
    if not _local(address):
        _refuse(f"connect_ex {address}")
    return _connect_ex(self, address)

def getaddrinfo(host, *args, **kwargs):
    if host not in (None, "localhost", "127.0.0.1", "::1", "") and not str(host).startswith("127."):
        _refuse(f"getaddrinfo {host}")
    return _getaddrinfo(host, *args, **kwargs)

socket.socket.connect = connect
socket.socket.connect_ex = connect_ex
socket.getaddrinfo = getaddrinfo
'''


@pytest.mark.slow
@pytest.mark.usefixtures("tuxpaint_root")
def test_stage_with_wandb_runs_without_network(tmp_path, shared_cache):
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(SOCKET_GUARD)
    log = tmp_path / "network.log"
    run_dir = tmp_path / "run"
    overrides = [o for o in TINY if not o.startswith("logger=")] + [
        "stage=all", "logger=wandb", "logger.log_images_every=2", "all.methods=[distilled]", "evaluate.num_eval=1",
        f"paths.data_dir={DATA_DIR}", f"paths.artifacts_dir={tmp_path / 'artifacts'}",
        f"paths.cache_dir={shared_cache}", f"hydra.run.dir={run_dir}",
    ]
    env = {key: value for key, value in os.environ.items() if not key.startswith("WANDB_")}
    env |= {"PYTHONPATH": f"{guard}{os.pathsep}{env.get('PYTHONPATH', '')}", "VLDD_SOCKET_LOG": str(log)}
    # a fresh network namespace has only a loopback device: nothing can leave the machine
    command = ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
               sys.executable, "-m", "vldd_lightning", *overrides]
    result = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert not log.exists(), log.read_text()

    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1
    assert list(offline_runs[0].glob("run-*.wandb"))
    # the periodic table of synthetic images, captioned with their nearest real captions
    assert len(list(offline_runs[0].glob("files/media/images/distill/synthetic_pairs_*.png"))) >= 6
    results = json.loads((run_dir / "results.json").read_text())
    assert results["evaluations"][0]["method"] == "distilled"
    assert Path(results["distill"]["distilled"]).is_file()
