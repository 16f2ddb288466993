"""Gather the ``results.json`` of many runs into the method's results table.

Usage: ``python -m vldd_lightning.report RUN_OR_SWEEP_DIR... [--output DIR]``

Rows are pair budgets, columns methods (random, herding, k_center, forgetting, distilled,
then any others found, such as random_x5 or full). A cell reads "TR@1/5/10 ; IR@1/5/10"
as means over all evaluation seeds, with the standard deviation of the mean recall.
Writes ``report.md``, ``report.csv`` and ``recall_vs_pairs.png`` to the output folder.
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

from vldd_lightning.errors import VlddError
from vldd_lightning.stages.common import METRIC_KEYS, summarise
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


def merge(records: list[dict[str, Any]]) -> dict[tuple[str, int, str], dict[str, Any]]:
    """Pool the seeds of records with the same (dataset, budget, method)."""
    cells: dict[tuple[str, int, str], dict[str, Any]] = {}
    pooled: dict[tuple[str, int, str], list[dict[str, float]]] = defaultdict(list)
    for record in records:
        key = (record["dataset"], int(record.get("budget", record["num_pairs"])), record["method"])
        pooled[key].extend(record["per_seed"])
        cells.setdefault(key, {"num_pairs": record["num_pairs"]})
    for key, per_seed in pooled.items():
        cells[key] |= summarise(per_seed) | {"seeds": len(per_seed)}
    return cells


def _methods(cells: dict[tuple[str, int, str], Any]) -> list[str]:
    found = {method for _, _, method in cells}
    return [m for m in METHOD_ORDER if m in found] + sorted(found - set(METHOD_ORDER))


def format_cell(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return "–"
    mean, std = cell["mean"], cell["std"]
    tr = "/".join(f"{mean[k]:.1f}" for k in ("tr@1", "tr@5", "tr@10"))
    ir = "/".join(f"{mean[k]:.1f}" for k in ("ir@1", "ir@5", "ir@10"))
    return f"{tr} ; {ir} (mean {mean['r_mean']:.1f} ± {std['r_mean']:.1f}, n={cell['seeds']})"


def markdown_table(cells: dict[tuple[str, int, str], dict[str, Any]]) -> str:
    methods = _methods(cells)
    lines = []
    for dataset in sorted({d for d, _, _ in cells}):
        budgets = sorted({b for d, b, _ in cells if d == dataset})
        lines += [f"### {dataset}", "", "TR@1/5/10 ; IR@1/5/10 in percent, mean over seeds (mean recall ± std).", ""]
        lines.append("| pairs | " + " | ".join(methods) + " |")
        lines.append("|---" * (len(methods) + 1) + "|")
        for budget in budgets:
            row = [format_cell(cells.get((dataset, budget, m))) for m in methods]
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


def write_report(folders: list[Path], output: Path) -> dict[str, Any]:
    records = find_evaluations(folders)
    if not records:
        raise VlddError(f"no evaluation records in results.json files under {', '.join(map(str, folders))}")
    cells = merge(records)
    table = markdown_table(cells)
    atomic_write_text(output / "report.md", table + "\n")
    atomic_write_text(output / "report.csv", csv_text(cells))
    plot(cells, output / "recall_vs_pairs.png")
    return {"report": str(output / "report.md"), "records": len(records), "table": table}


def report_from_config(state: Any) -> dict[str, Any]:
    from vldd_lightning.context import absolute_path

    cfg = state.cfg
    folders = [absolute_path(folder) for folder in cfg.report.runs]
    if not folders:
        raise VlddError("report.runs is empty; list run or sweep folders, e.g. report.runs=[multirun/tuxpaint_table]")
    output = absolute_path(cfg.report.output) if cfg.report.output else state.run_dir / "report"
    result = write_report(folders, output)
    print(result["table"])
    return {"report": result["report"], "records": result["records"]}


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
    return 0


if __name__ == "__main__":
    sys.exit(main())
