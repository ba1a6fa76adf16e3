#!/usr/bin/env bash
# Centralised vs federated vs local-only on exactly the same windows (the only difference is
# federation). Resumable: a finished run is skipped, a cut one continues (--resume; the local
# arm continues with its next client). Run from the repository root:
#   bash results/fl/like_for_like/run_all.sh     (FEDHAR=.venv/bin/fedhar PYTHON=.venv/bin/python outside the venv)
#
# UCI-HAR, one client per training subject (21); the server holds the 9 test subjects of the
# LODO split with the same seed. All arms: the backbone of the LODO main table (MAE pretrained
# 30 epochs on USC-HAD, the other real dataset), LoRA rank 16 / alpha 32, no LoRA dropout,
# AdamW lr 1e-3 (constant, fresh each round), batch 64, 10 rounds x 2 local epochs = 20 passes,
# per-dataset z-normalisation from the clients' training windows.
#   centralised: one client holding the union of the 21 clients' training windows
#   federated:   the 21 clients, every one each round, the server aggregating (strategy)
#   local:       each client alone for the same 20 passes, never aggregated
set -euo pipefail
fedhar=${FEDHAR:-fedhar}
runs=${RUNS:-results/fl/like_for_like/runs}
mkdir -p "$runs"
backbone=$($fedhar pretrain --data usc-had --epochs 30 | tail -n 1)
common="--data uci-har --partition subject --server-test-fraction 0.3 --normalise dataset --backbone $backbone
        --mode lora --rank 16 --lora-alpha 32 --lr 1e-3 --rounds 10 --local-epochs 2 --engine inline"

run() {  # run NAME OPTIONS...: one run into $runs/NAME, resumed if it was cut short
  local name=$1; shift
  if [[ -f $runs/$name/done ]]; then echo "skip $name (done)"; return; fi
  local resume=""; [[ -f $runs/$name/config.json ]] && resume="--resume"
  OMP_NUM_THREADS=1 $fedhar fl $common "$@" --out-dir "$runs/$name" $resume > "$runs/$name.log" 2>&1 \
    && touch "$runs/$name/done" && echo "done $name" || { echo "FAILED $name: see $runs/$name.log"; return 1; }
}

for seed in 0 1 2; do
  run uci-har-centralised-s$seed --arm centralised --seed $seed
  run uci-har-fedavg-s$seed --arm federated --strategy fedavg --seed $seed
  run uci-har-local-s$seed --arm local --seed $seed
done
for seed in 0 1 2; do
  run uci-har-ffa-s$seed --arm federated --strategy ffa --seed $seed
done
${PYTHON:-python} -m fedhar.arms_report results/fl/like_for_like
