"""Gather the ``results.json`` of many runs into the method's results table.

Usage: ``python -m vldd_lightning.report RUN_OR_SWEEP_DIR... [--output DIR]``

Rows are pair budgets, columns methods (random, herding, k_center, forgetting, distilled,
then any others found, such as random_x5 or full). A cell reads "TR@1/5/10 ; IR@1/5/10"
as means over all evaluation seeds, with the standard deviation of the mean recall. Runs
of one method and budget are pooled whatever their other settings, so give the report the
folders of one configuration. A student that several runs read back from the same cache
is counted once.
Writes ``report.md``, ``report.csv`` and ``recall_vs_pairs.png`` to the output folder.

Where several runs evaluated the same method at the same budget with different settings (a
hyperparameter sweep), ``selection.md`` ranks them by validation mean recall and shows the
Hydra overrides in which they differ next to their test recall, so that settings are chosen
on the validation split.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from vldd_lightning.errors import VlddError
from vldd_lightning.stages.common import METRIC_KEYS, mean_and_std, summarise
from vldd_lightning.utils.atomic import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

METHOD_ORDER = ("random", "herding", "k_center", "forgetting", "distilled")


def find_evaluations(folders: list[Path]) -> list[dict[str, Any]]:
    """Collect the evaluation records of the ``results.json`` files at or below the given folders."""
    records = []
    for folder in folders:
        if not folder.exists():
            raise VlddError(f"run folder not found: {folder}")
        files = [folder] if folder.is_file() else sorted(folder.rglob("results.json"))
        for path in files:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as error:
                log.warning("skipping unreadable %s: %s", path, error)
                continue
            for record in data.get("evaluations", []):
                records.append({**record, "source": str(path)})
    return records


def cell_key(record: dict[str, Any]) -> tuple[str, int, str]:
    """Return the (dataset, budget, method) cell that an evaluation record belongs to."""
    return record["dataset"], int(record.get("budget", record["num_pairs"])), record["method"]


def merge(records: list[dict[str, Any]]) -> dict[tuple[str, int, str], dict[str, Any]]:
    """Pool the seeds of records with the same (dataset, budget, method).

    A rerun of the same command reads back the same students, so a seed whose metrics are
    already pooled in its cell is counted once. Counting it again would inflate the number
    of seeds and shrink the standard deviation.
    """
    cells: dict[tuple[str, int, str], dict[str, Any]] = {}
    pooled: dict[tuple[str, int, str], list[dict[str, float]]] = defaultdict(list)
    seen: set[tuple[Any, ...]] = set()
    repeats = 0
    for record in records:
        key = cell_key(record)
        seeds = record.get("seeds") or [None] * len(record["per_seed"])
        for seed, metrics in zip(seeds, record["per_seed"], strict=True):
            student = (key, seed, tuple(sorted(metrics.items())))
            if seed is not None and student in seen:
                repeats += 1
                continue
            seen.add(student)
            pooled[key].append(metrics)
        cells.setdefault(key, {"num_pairs": record["num_pairs"]})
    if repeats:
        log.info("counted %d repeated students (same cell, seed and metrics) once", repeats)
    for key, per_seed in pooled.items():
        cells[key] |= summarise(per_seed) | {"seeds": len(per_seed)}
    return cells


def _methods(cells: dict[tuple[str, int, str], Any]) -> list[str]:
    found = {method for _, _, method in cells}
    return [m for m in METHOD_ORDER if m in found] + sorted(found - set(METHOD_ORDER))


def format_cell(cell: dict[str, Any] | None, budget: int) -> str:
    if cell is None:
        return "–"
    mean, std = cell["mean"], cell["std"]
    tr = "/".join(f"{mean[k]:.1f}" for k in ("tr@1", "tr@5", "tr@10"))
    ir = "/".join(f"{mean[k]:.1f}" for k in ("ir@1", "ir@5", "ir@10"))
    # methods such as random_x5 or full train on another number of pairs than the row's budget
    pairs = f", {cell['num_pairs']} pairs" if cell["num_pairs"] != budget else ""
    return f"{tr} ; {ir} (mean {mean['r_mean']:.1f} ± {std['r_mean']:.1f}, n={cell['seeds']}{pairs})"


def markdown_table(cells: dict[tuple[str, int, str], dict[str, Any]]) -> str:
    methods = _methods(cells)
    lines = []
    for dataset in sorted({d for d, _, _ in cells}):
        budgets = sorted({b for d, b, _ in cells if d == dataset})
        lines += [f"### {dataset}", "", "TR@1/5/10 ; IR@1/5/10 in percent, mean over seeds (mean recall ± std).", ""]
        lines.append("| pairs | " + " | ".join(methods) + " |")
        lines.append("|---" * (len(methods) + 1) + "|")
        for budget in budgets:
            row = [format_cell(cells.get((dataset, budget, m)), budget) for m in methods]
            lines.append(f"| {budget} | " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)


def csv_text(cells: dict[tuple[str, int, str], dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["dataset", "budget", "method", "num_pairs", "seeds",
                     *[f"{k}_mean" for k in METRIC_KEYS], *[f"{k}_std" for k in METRIC_KEYS]])
    for (dataset, budget, method), cell in sorted(cells.items()):
        writer.writerow([dataset, budget, method, cell["num_pairs"], cell["seeds"],
                         *[f"{cell['mean'][k]:.4f}" for k in METRIC_KEYS],
                         *[f"{cell['std'][k]:.4f}" for k in METRIC_KEYS]])
    return buffer.getvalue()


def plot(cells: dict[tuple[str, int, str], dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({d for d, _, _ in cells})
    figure, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4), squeeze=False)
    for axis, dataset in zip(axes[0], datasets, strict=True):
        for method in _methods(cells):
            points = sorted((cell["num_pairs"], cell["mean"]["r_mean"], cell["std"]["r_mean"])
                            for (d, _, m), cell in cells.items() if d == dataset and m == method)
            if points:
                xs, ys, errors = zip(*points, strict=True)
                axis.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label=method)
        axis.set_xscale("log")
        ticks = sorted({cell["num_pairs"] for (d, _, _), cell in cells.items() if d == dataset})
        axis.set_xticks(ticks, [str(t) for t in ticks])
        axis.minorticks_off()
        axis.set_xlabel("number of training pairs")
        axis.set_ylabel("mean recall (%)")
        axis.set_title(dataset)
        axis.legend(fontsize=8)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)


def run_overrides(results_file: str) -> list[str]:
    """Return the Hydra overrides of the run that wrote ``results_file``, or [] when unknown."""
    path = Path(results_file).parent / ".hydra" / "overrides.yaml"
    try:
        overrides = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        log.warning("no overrides for %s: %s", results_file, error)
        return []
    if not isinstance(overrides, list):
        log.warning("no overrides for %s: %s is not a list", results_file, path)
        return []
    return [str(item) for item in overrides if not str(item).startswith(("hydra.", "paths."))]


def selection_table(records: list[dict[str, Any]]) -> str:
    """Rank runs of the same (dataset, budget, method) by validation mean recall.

    Only groups with at least two runs that all carry validation scores are listed. The
    test column is for reading and never sets the order. Returns "" when no group
    qualifies.
    """
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        scores = record.get("val_r_mean") or []
        if scores and all(score is not None for score in scores):
            groups[cell_key(record)].append(record)
    lines = []
    for (dataset, budget, method), group in sorted(groups.items()):
        if len(group) < 2:
            continue
        # the settings column shows only the overrides in which the runs differ
        overrides = [run_overrides(record["source"]) for record in group]
        shared = set.intersection(*(set(items) for items in overrides))
        rows = []
        for record, items in zip(group, overrides, strict=True):
            val_mean, val_std = mean_and_std(record["val_r_mean"])
            settings = " ".join(item for item in items if item not in shared) or record["source"]
            rows.append((val_mean, val_std, settings, record))
        rows.sort(key=lambda row: -row[0])
        lines += [f"### {dataset}, {method}, {budget} pairs", "",
                  "| rank | settings | val mean recall | test mean recall | seeds |", "|---|---|---|---|---|"]
        for rank, (val_mean, val_std, settings, record) in enumerate(rows, start=1):
            test_mean, test_std = mean_and_std([run["r_mean"] for run in record["per_seed"]])
            test = f"{test_mean:.1f} ± {test_std:.1f}"
            lines.append(f"| {rank} | `{settings}` | {val_mean:.1f} ± {val_std:.1f} | {test} | {len(record['val_r_mean'])} |")
        lines.append("")
    return "\n".join(lines)


def write_report(folders: list[Path], output: Path) -> dict[str, Any]:
    records = find_evaluations(folders)
    if not records:
        raise VlddError(f"no evaluation records in results.json files under {', '.join(map(str, folders))}")
    cells = merge(records)
    table = markdown_table(cells)
    atomic_write_text(output / "report.md", table + "\n")
    atomic_write_text(output / "report.csv", csv_text(cells))
    plot(cells, output / "recall_vs_pairs.png")
    result = {"report": str(output / "report.md"), "records": len(records), "table": table}
    selection = selection_table(records)
    if selection:
        atomic_write_text(output / "selection.md", selection)
        result |= {"selection": str(output / "selection.md"), "selection_table": selection}
    return result


def report_from_config(state: Any) -> dict[str, Any]:
    from vldd_lightning.context import absolute_path

    cfg = state.cfg
    folders = [absolute_path(folder) for folder in cfg.report.runs]
    if not folders:
        raise VlddError("report.runs is empty; list run or sweep folders, e.g. report.runs=[multirun/tuxpaint_table]")
    output = absolute_path(cfg.report.output) if cfg.report.output else state.run_dir / "report"
    result = write_report(folders, output)
    print(result["table"])
    if "selection" in result:
        print("runs ranked by validation mean recall:\n" + result["selection_table"])
    return {key: result[key] for key in ("report", "records", "selection") if key in result}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders, sweep folders or results.json files")
    parser.add_argument("--output", type=Path, default=Path("report"), help="folder for report.md, report.csv and the plot")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        result = write_report(args.runs, args.output)
    except VlddError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(result["table"])
    print(f"wrote {args.output}/report.md, report.csv and recall_vs_pairs.png")
    if "selection" in result:
        print("runs ranked by validation mean recall:\n" + result["selection_table"])
        print(f"wrote {result['selection']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
