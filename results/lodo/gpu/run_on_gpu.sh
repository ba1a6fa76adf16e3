#!/usr/bin/env bash
# LODO main table (other backbone; full / LoRA / QLoRA; 5 paired seeds) on a CUDA machine that
# has neither the raw recordings nor the pretraining data: the exact prepared windows and the
# exact pretrained checkpoints travel (checksums checked), so splits and backbones are those of
# the CPU rows in results/lodo/<held-out>/runs.csv. Seeds run in parallel, one process each.
#
#   bash results/lodo/gpu/run_on_gpu.sh HELD_OUT WINDOWS.npz BACKBONE.safetensors OUT_DIR [SECONDS]
#
# Rows go to OUT_DIR/seed<N>/runs.csv as runs finish (resumable); merged into OUT_DIR/runs.csv.
set -u
held=$1 windows=$2 backbone=$3 out=$4 budget=${5:-600}
seeds=(0 1 2 3 4)
threads=${THREADS:-$(( $(nproc) / ${#seeds[@]} ))}; [ "$threads" -ge 1 ] || threads=1  # CPU threads per seed
for s in "${seeds[@]}"; do
  timeout "$budget" python3 "$(dirname "$0")/lodo_gpu.py" "$held" "$windows" "$backbone" "$out/seed$s" "$s" "$threads" &
done
wait
python3 - "$out" <<'PY'
import sys
from pathlib import Path
import pandas as pd
out = Path(sys.argv[1])
parts = [pd.read_csv(p) for p in sorted(out.glob("seed*/runs.csv"))]
if parts:
    rows = pd.concat(parts, ignore_index=True).sort_values(["seed", "mode"])
    rows.to_csv(out / "runs.csv", index=False)
    print(rows.groupby("mode")[["accuracy", "macro_f1", "sec_per_epoch"]].agg(["mean", "std", "count"]).round(4))
PY
