#!/usr/bin/env bash
# The paper's Flickr30K and COCO experiments on a SLURM cluster, 8 GPUs per job under DDP.
# Usage: experiments/slurm_paper.sh PARTITION FLICKR_ROOT COCO_ROOT
set -euo pipefail
cd "$(dirname "$0")/.."
partition=$1 flickr=$2 coco=$3
python -m vldd_lightning -m hydra/launcher=slurm hydra.launcher.partition="$partition" \
  hydra.launcher.gpus_per_node=8 hydra.launcher.tasks_per_node=8 trainer=ddp trainer.devices=8 \
  +experiment=flickr_100,flickr_200,flickr_500,flickr_1000 dataset.root="$flickr"
python -m vldd_lightning -m hydra/launcher=slurm hydra.launcher.partition="$partition" \
  hydra.launcher.gpus_per_node=8 hydra.launcher.tasks_per_node=8 trainer=ddp trainer.devices=8 \
  +experiment=coco_100,coco_200,coco_500,coco_1000 dataset.root="$coco"
