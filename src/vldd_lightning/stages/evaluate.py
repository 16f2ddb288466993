"""Stage ``evaluate``: train fresh students on pair sets and report retrieval on the test split.

Methods: ``distilled`` (this configuration's distilled set, distilled first if missing),
the coreset methods (one selection per evaluation seed), and ``full`` (the whole training
split under the ``train_full`` protocol). A suffix ``_xK`` multiplies the pair budget.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vldd_lightning.context import absolute_path
from vldd_lightning.data.pairs import TensorPairs
from vldd_lightning.errors import ArtifactError, ConfigError
from vldd_lightning.stages.buffer import buffer_augment
from vldd_lightning.stages.common import RunState, format_metrics, global_rank, summarise
from vldd_lightning.stages.coreset import CORESET_METHODS, make_coreset
from vldd_lightning.stages.distill import DISTILLED_NAME, distill_folder, run_distill
from vldd_lightning.stages.training import Protocol, real_train_pairs, train_and_test
from vldd_lightning.storage.pairset import check_pairset_identity, load_pairset
from vldd_lightning.utils.atomic import atomic_write_json, read_json
from vldd_lightning.utils.hashing import derive_seed, file_sha256, stable_hash

log = logging.getLogger(__name__)

METHODS = ("distilled", *CORESET_METHODS, "full")
_METHOD = re.compile(r"^(?P<name>[a-z_]+?)(?:_x(?P<multiple>\d+))?$")


def parse_method(spec: str) -> tuple[str, int]:
    match = _METHOD.match(spec)
    if not match or match["name"] not in METHODS:
        raise ConfigError(f"evaluation method {spec!r} is invalid; choose from {METHODS}, optionally with a suffix _xK (random_x5)")
    multiple = int(match["multiple"] or 1)
    if multiple < 1 or (multiple > 1 and match["name"] in ("distilled", "full")):
        raise ConfigError(f"evaluation method {spec!r}: only coreset methods take a multiple _xK with K >= 1")
    return match["name"], multiple


def eval_seeds(state: RunState) -> list[int]:
    count = state.cfg.evaluate.num_eval
    if count < 1:
        raise ConfigError(f"evaluate.num_eval={count} must be at least 1")
    return [derive_seed(state.cfg.seed, "eval", i) % (2**31) for i in range(count)]


def _pair_dataset(state: RunState, path: Path) -> tuple[TensorPairs, Protocol, int]:
    ctx = state.context
    pairs = load_pairset(path)
    check_pairset_identity(pairs, ctx.identity(), path)
    inputs = ctx.backbone_features(pairs.images) if ctx.frozen_backbone else pairs.images
    protocol = Protocol(**pairs.metadata["protocol"])
    protocol = Protocol(**{**protocol.as_dict(), "lr_image": pairs.lr_image, "lr_text": pairs.lr_text})
    return TensorPairs(inputs, pairs.text_embeddings), protocol, pairs.num_pairs


def ensure_distilled(state: RunState) -> Path:
    path = distill_folder(state) / DISTILLED_NAME
    if not path.is_file():
        log.info("no distilled set for this configuration yet: running the distillation")
        run_distill(state)
    return path


def cached_student(state: RunState, parts: dict[str, Any], train: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``train`` once per ``parts``: finished students are read back on a rerun.

    A killed evaluation thus resumes with the next student, and repeats nothing it finished.
    """
    ctx = state.context
    key = stable_hash({"identity": ctx.identity(), **parts}, 20)
    path = ctx.paths["artifacts_dir"] / "evaluations" / f"{key}.json"
    if path.is_file():
        try:
            return read_json(path, "evaluation record")
        except ArtifactError as error:
            log.warning("%s; training this student again", error)
    result = train()
    atomic_write_json(path, result)
    return result


def _train_on_pairs(state: RunState, path: Path, dataset: TensorPairs, protocol: Protocol, seed: int) -> dict[str, Any]:
    parts = {"pairs": file_sha256(path), "protocol": protocol.as_dict(), "seed": seed}
    return cached_student(state, parts, lambda: train_and_test(state, dataset, protocol, seed))


def evaluate_pairset_file(state: RunState, path: Path, label: str) -> dict[str, Any]:
    dataset, protocol, num_pairs = _pair_dataset(state, path)
    runs = [_train_on_pairs(state, path, dataset, protocol, seed) for seed in eval_seeds(state)]
    return _record(state, label, num_pairs, runs, protocol, [str(path)])


def evaluate_method(state: RunState, spec: str) -> dict[str, Any]:
    cfg, ctx = state.cfg, state.context
    name, multiple = parse_method(spec)
    if name == "distilled":
        return evaluate_pairset_file(state, ensure_distilled(state), spec)
    if name == "full":
        protocol = Protocol.from_config(cfg.train_full)
        augment = buffer_augment(cfg) if cfg.train_full.augment else None
        runs = []
        for seed in eval_seeds(state):
            parts = {"full": True, "protocol": protocol.as_dict(), "augment": augment, "view_seed": cfg.seed, "seed": seed}
            runs.append(cached_student(state, parts, lambda seed=seed: train_and_test(
                state, real_train_pairs(ctx, augment, seed, view_seed=cfg.seed), protocol, seed)))
        return _record(state, spec, ctx.splits["train"].num_captions, runs, protocol, [])

    num_pairs = cfg.num_pairs * multiple
    runs, files = [], []
    for i, seed in enumerate(eval_seeds(state)):
        # each evaluation seed gets its own selection, so the spread includes selection noise
        path = make_coreset(state, name, num_pairs, derive_seed(cfg.seed, "coreset", i) % (2**31))
        dataset, protocol, _ = _pair_dataset(state, path)
        runs.append(_train_on_pairs(state, path, dataset, protocol, seed))
        files.append(str(path))
    return _record(state, spec, num_pairs, runs, protocol, files)


def _record(state: RunState, method: str, num_pairs: int, runs: list[dict[str, Any]],
            protocol: Protocol, files: list[str]) -> dict[str, Any]:
    per_seed = [run["metrics"] for run in runs]
    summary = summarise(per_seed)
    record = {
        "kind": "evaluation",
        "method": method,
        "num_pairs": num_pairs,
        "budget": state.cfg.num_pairs,
        "dataset": state.cfg.dataset.name,
        "encoder": state.cfg.encoder.name,
        "experiment": state.cfg.experiment_name,
        "seeds": eval_seeds(state),
        "per_seed": per_seed,
        "best_epochs": [run["best_epoch"] for run in runs],
        # validation mean recall of each selected epoch, or None without select_on_val.
        # Sweeps compare settings by this score so that the test split selects nothing.
        "val_r_mean": [run.get("best_val_r_mean") for run in runs],
        "protocol": protocol.as_dict(),
        "pair_files": files,
        **summary,
    }
    log.info("%s (%d pairs): %s", method, num_pairs, format_metrics(summary))
    if state.wandb is not None:
        metrics = {f"eval/{method}/{key}": value for key, value in summary["mean"].items()}
        metrics |= {f"eval/{method}/{key}_std": value for key, value in summary["std"].items()}
        state.wandb.log_metrics(metrics)
    return record


def run_evaluate(state: RunState, methods: list[str] | None = None) -> dict[str, Any]:
    cfg = state.cfg
    if global_rank() != 0:
        # students train on one device; in a DDP job rank zero evaluates for everyone
        return {"evaluations": []}
    if cfg.evaluate.pairs:
        path = absolute_path(cfg.evaluate.pairs)
        evaluations = [evaluate_pairset_file(state, path, load_pairset(path).metadata.get("method", "pairs"))]
    else:
        specs = list(methods if methods is not None else cfg.evaluate.methods)
        for spec in specs:
            parse_method(spec)  # reject a bad name before any training
        evaluations = [evaluate_method(state, spec) for spec in specs]
    log_table(state, evaluations)
    return {"evaluations": evaluations}


def results_table(evaluations: list[dict[str, Any]]) -> str:
    header = f"{'method':<14}{'pairs':>7}{'TR@1':>7}{'TR@5':>7}{'TR@10':>7}{'IR@1':>7}{'IR@5':>7}{'IR@10':>7}   mean ± std"
    lines = [header, "-" * len(header)]
    for record in evaluations:
        mean, std = record["mean"], record["std"]
        cells = "".join(f"{mean[key]:>7.1f}" for key in ("tr@1", "tr@5", "tr@10", "ir@1", "ir@5", "ir@10"))
        lines.append(f"{record['method']:<14}{record['num_pairs']:>7}{cells}   {mean['r_mean']:.1f} ± {std['r_mean']:.1f}")
    return "\n".join(lines)


def log_table(state: RunState, evaluations: list[dict[str, Any]]) -> None:
    if state.wandb is None:
        return
    columns = ["method", "pairs", "tr@1", "tr@5", "tr@10", "ir@1", "ir@5", "ir@10", "r_mean", "r_mean_std"]
    rows = [
        [r["method"], r["num_pairs"], *(r["mean"][k] for k in columns[2:9]), r["std"]["r_mean"]]
        for r in evaluations
    ]
    state.wandb.log_table("eval/recall_table", columns=columns, data=rows)



