#!/usr/bin/env bash
# Every LODO number in results/lodo/ comes from these commands (resumable: re-running skips
# finished rows; a later session extends a table by adding seeds, ranks or datasets).
# Run from the repository root: bash results/lodo/run_all.sh   (about 70 min on 2 cores)
set -euo pipefail
fedhar=${FEDHAR:-fedhar}
common="--epochs 20 --pretrain-epochs 30 --threads 1"

# UCI-HAR (derived from the shared HAPT raw recordings): the three modes, two seeds.
# No other real dataset is on this machine (HAPT has the same 30 people), so its backbone is
# pretrained on a separate synthetic population (the pretrained_on column says so).
$fedhar lodo --datasets uci-har --modes full,lora,qlora --ranks 16 --seeds 0,1 $common --out results/lodo/uci-har
# synthetic domains: each held out in turn, the backbone pretrained on the other three
$fedhar lodo --datasets synthetic --synthetic-domains 4 --synthetic-subjects 8 \
  --modes full,lora,qlora --ranks 16 --seeds 0 $common --out results/lodo/synthetic
# rank ablation (paper Table VI)
$fedhar lodo --datasets uci-har --modes lora --ranks 8,16,32,64 --seeds 0 $common --out results/lodo/uci-har
# training share (paper Table VII: 70/30 ... 30/70)
$fedhar lodo --datasets uci-har --modes full,lora --ranks 16 --train-fractions 0.7,0.5,0.3 \
  --seeds 0 $common --out results/lodo/uci-har
# the comparison with the paper, from all the runs above
${PYTHON:-python} -m fedhar.lodo_report results/lodo  # PYTHON=.venv/bin/python where the venv is not active
