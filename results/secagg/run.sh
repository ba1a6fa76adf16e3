#!/usr/bin/env bash
# SecAgg+ precision (README "Privacy"): the new global with --secagg against the same run
# without it, on the inline engine; the toy protocol test (4 clients, known updates) and
# tiny synthetic federations (3 clients, one dropping out mid-round) for fedavg, ffa, fedsa.
# Writes results/secagg/precision.txt (a minute of CPU). Stochastic rounding draws from
# numpy's global generator: the largest differences vary from run to run, the bound does not.
set -euo pipefail
cd "$(dirname "$0")/../.."
OMP_NUM_THREADS=1 python -m pytest tests/test_secure_aggregation.py -q -s -p no:logging -k plain 2>&1 \
    | grep -E "largest|^[0-9]+ (passed|failed)" > results/secagg/precision.txt
cat results/secagg/precision.txt
