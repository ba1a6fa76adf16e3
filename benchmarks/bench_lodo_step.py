"""LODO's fine-tuning step: full against LoRA / QLoRA with LODO's own settings (issue 12).

``fedhar lodo`` fine-tunes with ``FinetuneConfig``'s defaults: LoRA rank 16, alpha 32,
dropout 0.05, batch 64, AdamW. Its LoRA epochs were slower than full fine-tuning's (UCI-HAR:
13.0 against 9.6 s per epoch) while the federated setting (dropout 0, rank 8) was not. The
difference is peft's LoRA dropout: it is applied to each adapted layer's input, so every step
draws a Bernoulli mask as large as the input of all 36 adapted layers (forward), and
multiplies by it again in backward. On the CPU those draws cost about as much as the whole
frozen-layer matmuls LoRA saves. ``fused_lora`` (fedhar.model.fused_lora) draws the mask
4x more cheaply and fuses the adapter's sum.

Each variant is built by ``fedhar.finetune.build_classifier`` (what LODO runs) on a random
backbone and trained on one fixed batch; rounds interleave the variants (order rotated)
so machine load falls on all alike. Per-step medians pooled over rounds; ratios to full.

    python benchmarks/bench_lodo_step.py                     # 2 threads -> results/bench/issue12/lodo_step.{csv,md}
    python benchmarks/bench_lodo_step.py --threads 1 --quick # prints only
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fedhar.finetune import FinetuneConfig, build_classifier  # noqa: E402
from fedhar.model import MAEConfig, MaskedAutoencoder  # noqa: E402

VARIANTS = {  # name -> FinetuneConfig changes (LODO's defaults otherwise)
    "full": dict(mode="full"),
    "lora r16 (LODO: dropout 0.05)": dict(mode="lora"),
    "lora r16 dropout 0": dict(mode="lora", dropout=0.0),
    "lora r16 fused (dropout 0.05)": dict(mode="lora", fused_lora=True),
    "qlora r16 (LODO: dropout 0.05)": dict(mode="qlora"),
    "qlora r16 fused (dropout 0.05)": dict(mode="qlora", fused_lora=True),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="1 round of 3 steps, prints only")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "bench" / "issue12")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.steps = 1, 3
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    torch.manual_seed(0)
    mae = MaskedAutoencoder(MAEConfig())
    x, y = torch.randn(64, 6, 128), torch.randint(0, 12, (64,))
    built = {}
    for name, changes in VARIANTS.items():
        model = build_classifier(mae, 12, FinetuneConfig(**changes))
        params = [p for p in model.parameters() if p.requires_grad]
        built[name] = (model, torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01))
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}

    def step(model, optimizer):
        model.train()
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    names = list(VARIANTS)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            model, optimizer = built[name]
            for _ in range(2):
                step(model, optimizer)
            for _ in range(args.steps):
                t0 = time.perf_counter()
                step(model, optimizer)
                times[name].append(time.perf_counter() - t0)
    full = float(np.median(times["full"]))
    rows = [{"variant": n, "ms_median": round(1000 * float(np.median(t)), 2),
             "ms_q1": round(1000 * float(np.quantile(t, 0.25)), 2), "ms_q3": round(1000 * float(np.quantile(t, 0.75)), 2),
             "ratio_to_full": round(float(np.median(t)) / full, 3)} for n, t in times.items()]
    load = f"{load_start:.2f} .. {os.getloadavg()[0]:.2f}"
    lines = [f"# LODO fine-tuning step (batch 64, rank 16, alpha 32): {args.threads} thread(s)", "",
             f"Command: `python benchmarks/bench_lodo_step.py {' '.join(argv if argv is not None else sys.argv[1:])}`; "
             f"{args.rounds} interleaved rounds x {args.steps} steps; torch {torch.__version__}; "
             f"1-minute load average {load} on {os.cpu_count()} cores.", "",
             "| variant | ms / step (median) | IQR | / full |", "|---|---:|---|---:|"]
    lines += [f"| {r['variant']} | {r['ms_median']} | {r['ms_q1']}..{r['ms_q3']} | {r['ratio_to_full']} |" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.quick:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = "lodo_step" + ("" if args.threads == 2 else f"_{args.threads}thread")
        with open(args.out / f"{stem}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]) + ["threads", "load_average"])
            w.writeheader()
            w.writerows([{**r, "threads": args.threads, "load_average": load} for r in rows])
        (args.out / f"{stem}.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
