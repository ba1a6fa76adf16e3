#!/usr/bin/env bash
# Every LODO number in results/lodo/ comes from these commands, in priority order. Resumable:
# re-running skips finished rows (runs.csv), so a later session extends the tables by running
# it again; cut a line short with Ctrl-C and nothing finished is lost.
# Run from the repository root:  bash results/lodo/run_all.sh   (FEDHAR=.venv/bin/fedhar outside the venv)
#
# The study: two real datasets with different people, devices, placements and rates:
# UCI-HAR (derived from the shared HAPT raw recordings) and USC-HAD. HAPT is in the
# pretraining pool only: it holds UCI-HAR's recordings, so it is never pretrained on when
# UCI-HAR is held out, and it is what USC-HAD's "other" backbone is pretrained on.
# Backbones: none (random init, the control), synthetic, other (the other real data),
# other+synthetic. Mode probe = the head alone on the frozen backbone (a cheap diagnostic).
set -euo pipefail
fedhar=${FEDHAR:-fedhar}
common="--data uci-har,usc-had --pretrain-pool hapt --epochs 20 --pretrain-epochs 30 --threads 1 --synthetic-domains 4 --synthetic-subjects 8"

for held in uci-har usc-had; do
  # 1. pretraining, tested: probe on every backbone (5 seeds), LoRA and full on none vs other (3 seeds)
  $fedhar lodo $common --heldout-data $held --backbones none,other --modes probe --seeds 0,1,2,3,4 --out-dir results/lodo/$held
  $fedhar lodo $common --heldout-data $held --backbones none,other --modes lora,full --seeds 0,1,2 --out-dir results/lodo/$held
done
for held in uci-har usc-had; do
  # 2. main table: the other-data backbone, full / LoRA / QLoRA, 5 paired seeds
  $fedhar lodo $common --heldout-data $held --backbones other --modes full,lora,qlora --seeds 0,1,2,3,4 --out-dir results/lodo/$held
done
for held in uci-har usc-had; do
  # 1b. the synthetic backbones (probe: 5 seeds; LoRA: 3 seeds)
  $fedhar lodo $common --heldout-data $held --backbones synthetic,other+synthetic --modes probe --seeds 0,1,2,3,4 --out-dir results/lodo/$held
  $fedhar lodo $common --heldout-data $held --backbones synthetic,other+synthetic --modes lora --seeds 0,1,2 --out-dir results/lodo/$held
done
for held in uci-har usc-had; do
  # 1c. few labels: the probe with 10-15% and 30% of the subjects labelled
  fractions=$([[ $held == uci-har ]] && echo 0.1,0.3 || echo 0.15,0.3)
  $fedhar lodo $common --heldout-data $held --backbones none,synthetic,other --modes probe --train-fractions $fractions \
    --seeds 0,1,2,3,4 --out-dir results/lodo/$held
done
# the tables: pretraining vs control, main table beside the paper, paired differences
${PYTHON:-python} -m fedhar.lodo_report results/lodo
