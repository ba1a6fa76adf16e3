#!/usr/bin/env bash
# Accuracy against the user-level privacy budget (README "Privacy"). Resumable: a finished run
# is skipped, a cut one continues (--resume). Run from the repository root:
#   bash results/fl/privacy/run_all.sh            the real sweep (below; hours of CPU)
#   DEMO=1 bash results/fl/privacy/run_all.sh     the same pipeline on tiny synthetic data (minutes)
#   JOBS=2 ...                                    runs two at a time (each on one thread)
#   SEEDS="0 1 2" EPSILONS="8 inf" STRATEGIES=fedavg FRACTIONS=1.0 ...   a part of the grid
# (FEDHAR=.venv/bin/fedhar PYTHON=.venv/bin/python outside the venv)
#
# Real sweep: UCI-HAR, one client per training subject (21); the server holds the 9 test
# subjects of the LODO split (same seed) and scores the global model on them. The backbone of
# the LODO main table (MAE pretrained 30 epochs on USC-HAD), LoRA rank 16 / alpha 32, AdamW lr
# 1e-3, batch 64, 10 rounds x 2 local epochs: the settings of results/fl/like_for_like.
# Central DP (DP-FedAvg): epsilon in {1, 2, 4, 8} at delta 1e-5 over the 10 rounds, and no DP
# (inf); clip norm $CLIP (default 1.0, not tuned); fedavg, ffa and fedsa; seeds 0, 1, 2; every
# client each round (q = 1) and, for a realistic participation, half of them (q = 0.5).
set -euo pipefail
fedhar=${FEDHAR:-fedhar}
here=results/fl/privacy
clip=${CLIP:-1.0}
if [[ -n ${DEMO:-} ]]; then
  runs=${RUNS:-$here/demo}
  common="--data synthetic --partition subject --synthetic-domains 2 --synthetic-subjects 5 --pretrain-epochs 2
          --mode lora --rounds 3 --batch-size 32 --engine inline"
  epsilons="inf 8 2"; strategies="fedavg ffa"; seeds="0"; fractions="1.0"
else
  runs=${RUNS:-$here/runs}
  backbone=$($fedhar pretrain --data usc-had --epochs 30 | tail -n 1)
  common="--data uci-har --partition subject --server-test-fraction 0.3 --normalise dataset --backbone $backbone
          --mode lora --rank 16 --lora-alpha 32 --lr 1e-3 --rounds 10 --local-epochs 2 --engine inline"
  epsilons="inf 8 4 2 1"; strategies="fedavg ffa fedsa"; seeds="0 1 2"; fractions="1.0 0.5"
fi
epsilons=${EPSILONS:-$epsilons}; strategies=${STRATEGIES:-$strategies}; seeds=${SEEDS:-$seeds}
fractions=${FRACTIONS:-$fractions}; jobs=${JOBS:-1}; failed=0
mkdir -p "$runs"

run() {  # run NAME OPTIONS...: one run into $runs/NAME, resumed if it was cut short
  local name=$1; shift
  if [[ -f $runs/$name/done ]]; then echo "skip $name (done)"; return; fi
  local resume=""; [[ -f $runs/$name/checkpoint.pkl ]] && resume="--resume"
  # shellcheck disable=SC2086
  OMP_NUM_THREADS=1 $fedhar fl $common "$@" --out-dir "$runs/$name" $resume > "$runs/$name.log" 2>&1 \
    && touch "$runs/$name/done" && echo "done $name" || { echo "FAILED $name: see $runs/$name.log"; return 1; }
}

# no DP and epsilon 8 first (the issue's question), then the smaller budgets
for fraction in $fractions; do
  for eps in $epsilons; do
    for seed in $seeds; do
      for strategy in $strategies; do
        dp=""; [[ $eps != inf ]] && dp="--dp-epsilon $eps --dp-clip $clip"
        # shellcheck disable=SC2086
        run "$strategy-eps$eps-q$fraction-s$seed" --strategy "$strategy" --fraction-train "$fraction" --seed "$seed" $dp &
        while (( $(jobs -rp | wc -l) >= jobs )); do wait -n || failed=1; done
      done
    done
  done
done
while (( $(jobs -rp | wc -l) > 0 )); do wait -n || failed=1; done
(( failed == 0 )) || { echo "some runs failed (above); the table holds the finished ones" >&2; }
${PYTHON:-python} -m simulations.privacy_report "$runs" "$here/$(basename "$runs")-table"
