#!/usr/bin/env bash
# Every federated number in results/fl/ comes from these commands. Resumable: a finished run
# is skipped, a half-finished one continues from its last round checkpoint (--resume), so a
# later session extends the table by adding lines here. Run from the repository root:
#   bash results/fl/run_all.sh            (FEDHAR=.venv/bin/fedhar PYTHON=.venv/bin/python outside the venv)
# JOBS=2 runs two federations at once (one torch thread each); the default is one.
set -euo pipefail
fedhar=${FEDHAR:-fedhar}
runs=results/fl/runs
mkdir -p "$runs"

# UCI-HAR, one client per subject. The server holds the 9 test subjects of the centralised
# LODO run with the same seed (--server-test-fraction 0.3); the 21 training subjects are the
# clients. Same backbone as LODO (MAE pretrained 30 epochs on the synthetic population, seed
# 1000), same rank (16, alpha 32) and learning rate (LoRA 1e-3, full 3e-4) as LODO; rounds x
# local epochs = 20 passes over the data, as LODO's 20 epochs.
uci="--data uci-har --partition subject --server-test-fraction 0.3 --normalise dataset
     --pretrain-data synthetic --synthetic-domains 4 --synthetic-subjects 8 --pretrain-epochs 30
     --rank 16 --lora-alpha 32 --rounds 10 --local-epochs 2 --seed 0 --engine inline"

run() {  # run NAME OPTIONS...: one federation into $runs/NAME, resumed if it was cut short
  local name=$1; shift
  if [[ -f $runs/$name/rounds.csv && -f $runs/$name/done ]]; then echo "skip $name (done)"; return; fi
  OMP_NUM_THREADS=1 $fedhar fl "$@" --out-dir "$runs/$name" --resume > "$runs/$name.log" 2>&1 \
    && touch "$runs/$name/done" && echo "done $name" || { echo "FAILED $name: see $runs/$name.log"; return 1; }
}

jobs_running() { jobs -rp | wc -l; }
queue() {  # run in the background, at most JOBS at once
  while (( $(jobs_running) >= ${JOBS:-1} )); do sleep 5; done
  run "$@" &
}

for strategy in fedavg ffa fedsa fedex fedprox fedavgm fedadam fedyogi fedadagrad; do
  queue uci-har-subject-lora-$strategy $uci --mode lora --lr 1e-3 --strategy $strategy
done
# heterogeneous-rank rules: every client at rank 16 here, so they are comparable with the rest
queue uci-har-subject-lora-flora $uci --mode lora --lr 1e-3 --strategy flora
queue uci-har-subject-lora-hetlora $uci --mode lora --lr 1e-3 --strategy hetlora
queue uci-har-subject-qlora-fedavg $uci --mode qlora --lr 1e-3 --strategy fedavg
queue uci-har-subject-full-fedavg $uci --mode full --lr 3e-4 --strategy fedavg
wait

# Synthetic, one client per domain (4 domains x 8 subjects): a pipeline check of clients =
# datasets. Caveat in README: LODO's synthetic backbones were pretrained on the other three
# domains, this one on a separate population, so the central column is not the same backbone.
syn="--data synthetic --partition dataset --synthetic-domains 4 --synthetic-subjects 8
     --server-test-fraction 0.3 --pretrain-epochs 30 --rank 16 --lora-alpha 32 --lr 1e-3
     --rounds 10 --local-epochs 2 --seed 0 --engine inline"
for strategy in fedavg ffa fedsa fedex flora; do
  queue synthetic-dataset-lora-$strategy $syn --mode lora --strategy $strategy
done
wait

${PYTHON:-python} -m simulations.fl_report results/fl
