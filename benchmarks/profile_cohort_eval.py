"""Where the cohort engine's all-evaluate round spends its time: cProfile of the evaluate
``send_and_receive`` of one round (every client evaluates FedAvg's global adapters),
the settings of bench_fl_scaling's ``cohort-10000`` row at a smaller N.

    FEDHAR_CACHE_DIR=/tmp/cache OMP_NUM_THREADS=1 python benchmarks/profile_cohort_eval.py --clients 1000 \\
        --out results/bench/cohort/scale10000/profile_eval_1000.txt
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--cohort-size", type=int, default=32)
    ap.add_argument("--out", required=True, help="text file: the profile's top functions")
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args(argv)

    import torch
    from flwr.app import MessageType

    import simulations.cohort as cohort
    from benchmarks.bench_fl_scaling import fl_config
    from simulations.run import run_inprocess
    from simulations.task import ensure_backbone

    torch.set_num_threads(1)
    profiler, seconds = cProfile.Profile(), []
    inner = cohort.CohortGrid.send_and_receive

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        if not messages or messages[0].metadata.message_type != MessageType.EVALUATE:
            return inner(self, messages, timeout=timeout)
        t0, c0 = time.perf_counter(), time.process_time()
        profiler.enable()
        try:
            return inner(self, messages, timeout=timeout)
        finally:
            profiler.disable()
            seconds.append((len(messages), time.perf_counter() - t0, time.process_time() - c0))

    cohort.CohortGrid.send_and_receive = send_and_receive
    backbone = str(ensure_backbone(fl_config(10, 1, "")).resolve())
    cfg = fl_config(args.clients, 1, tempfile.mkdtemp(prefix="profile-cohort-"), backbone)
    run_inprocess(cfg, engine="cohort", cohort_size=args.cohort_size)
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("tottime").print_stats(args.top)
    stats.sort_stats("cumulative").print_stats(args.top)
    head = "".join(f"evaluate round: {n} messages, {wall:.1f} s wall, {cpu:.1f} CPU s "
                   f"({1000 * cpu / n:.1f} ms CPU per client)\n" for n, wall, cpu in seconds)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(f"{' '.join(sys.argv)}\n{head}\n{text.getvalue()}")
    print(head, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
