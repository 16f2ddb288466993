#!/usr/bin/env bash
# Fill the coreset/distillation table for the embedded tuxpaint data set on the CPU and
# write it to docs/tuxpaint_table/ (about 15 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
sweep=multirun/tuxpaint_table/$(date +%Y-%m-%d_%H-%M-%S)
"$python" -m vldd_lightning -m +experiment=tuxpaint_table num_pairs=10,20,50 logger=csv hydra.sweep.dir="$sweep"
"$python" -m vldd_lightning.report "$sweep" --output docs/tuxpaint_table
