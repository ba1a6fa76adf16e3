#!/usr/bin/env bash
# Two real datasets in one federation (issue 10, experiment 4). Resumable: a finished run is
# skipped, a cut one continues. Run from the repository root:
#   bash results/fl/two_datasets/run_all.sh     (FEDHAR=.venv/bin/fedhar PYTHON=.venv/bin/python outside the venv)
#
# Clients: UCI-HAR (from HAPT's raw recordings, 30 people, waist phone) and USC-HAD (14 other
# people, hip MotionNode): either one client per dataset (2 clients) or one per subject of both
# (44 clients). The server holds 30% of each dataset's subjects out (the LODO split of the same
# seed) and scores the global model on them. Labels: the union label space (12 classes; UCI-HAR's
# 6 are a subset of USC-HAD's, same names) with ONE shared head (--head shared), so the global
# model is one classifier for both datasets; a UCI-HAR client never sees USC-HAD-only classes.
# Backbone: the frozen MAE at its seeded random initialisation (never trained): no real dataset
# outside the federation is left to pretrain on without seeing its people (HAPT = UCI-HAR's
# volunteers), and the synthetic backbone was measured no better than random (results/lodo).
# LoRA r16 / alpha 32, no dropout, AdamW lr 1e-3, batch 64, 10 rounds x 2 local epochs,
# per-dataset z-normalisation from the clients' training windows, every client every round.
set -euo pipefail
fedhar=${FEDHAR:-fedhar}
runs=${RUNS:-results/fl/two_datasets/runs}
mkdir -p "$runs"
backbone=$(${PYTHON:-python} -c "from fedhar.pretrain import PretrainConfig, random_init_backbone as r; print(r(PretrainConfig(epochs=30, seed=0)))")
common="--data uci-har,usc-had --server-test-fraction 0.3 --normalise dataset --backbone $backbone --head shared
        --mode lora --rank 16 --lora-alpha 32 --lr 1e-3 --rounds 10 --local-epochs 2 --engine inline"

run() {  # run NAME OPTIONS...: one run into $runs/NAME, resumed if it was cut short
  local name=$1; shift
  if [[ -n ${ONLY:-} && ! $name =~ $ONLY ]]; then return; fi  # ONLY=REGEX: just those runs (parallel chains)
  if [[ -f $runs/$name/done ]]; then echo "skip $name (done)"; return; fi
  local resume=""; [[ -f $runs/$name/config.json ]] && resume="--resume"
  OMP_NUM_THREADS=1 $fedhar fl $common "$@" --out-dir "$runs/$name" $resume > "$runs/$name.log" 2>&1 \
    && touch "$runs/$name/done" && echo "done $name" || { echo "FAILED $name: see $runs/$name.log"; return 1; }
}

# priority order: each partition once with FedAvg, its like-for-like controls (one client holding
# both datasets' training windows; each dataset alone), then seeds, then the other rules
run datasets-fedavg-s0 --partition dataset --strategy fedavg --seed 0
run subjects-fedavg-s0 --partition subject --strategy fedavg --seed 0
run datasets-centralised-s0 --partition dataset --arm centralised --seed 0
run datasets-local-s0 --partition dataset --arm local --seed 0
for seed in 1 2; do
  run datasets-fedavg-s$seed --partition dataset --strategy fedavg --seed $seed
done
for rule in ffa fedsa fedprox fedex flora hetlora fedavgm fedadam fedyogi fedadagrad; do
  run datasets-$rule-s0 --partition dataset --strategy $rule --seed 0
done
# then the controls at 3 seeds, and the best two rules of seed 0 (comparison.md) at 3 seeds
for seed in 1 2; do
  run datasets-centralised-s$seed --partition dataset --arm centralised --seed $seed
  run datasets-local-s$seed --partition dataset --arm local --seed $seed
done
for rule in hetlora fedex; do  # the two best rules at seed 0 (comparison.md, session 7); pick yours from its table
  for seed in 1 2; do run datasets-$rule-s$seed --partition dataset --strategy $rule --seed $seed; done
done
${PYTHON:-python} -m simulations.two_datasets_report "$runs"
