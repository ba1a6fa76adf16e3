#!/usr/bin/env bash
# README's by-hand `flwr run .` ("Running with flwr run"), run exactly as written there, from an
# empty cache, with checks: the run finished:completed (`flwr list`), rounds.csv has every round,
# the SuperLink `flwr run` left behind is stopped by its pid, and no process this started is left.
#
#   bash results/flwr_by_hand/run.sh [PROJECT]   (default: this checkout; PROJECT/.venv is used)
#
# What the README does not show, and why: FEDHAR_CACHE_DIR is a new empty folder (the backbone is
# pretrained inside the ServerApp, the cold-cache case); FLWR_HOME is a new folder and the local
# SuperLink's ports are free ones (Flower's own FLWR_LOCAL_* variables), so `flwr run` starts a
# SuperLink of its own instead of reusing one already running. Every process of the run inherits
# that FLWR_HOME: it is how the end finds what is left. Output: results/flwr_by_hand/output.txt, made by
#   bash results/flwr_by_hand/run.sh 2>&1 | sed 's/\x1b\[[0-9;]*m//g' > results/flwr_by_hand/output.txt
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
cd "${1:-$HERE/../..}"
[ ! -e runs/flwr ] || { echo "run.sh: $PWD/runs/flwr exists: move it away first" >&2; exit 2; }
TMP=$(mktemp -d)
PY=$PWD/.venv/bin/python
export FEDHAR_CACHE_DIR=$TMP/cache FLWR_HOME=$TMP/flwr-home
mkdir -p "$FEDHAR_CACHE_DIR" "$FLWR_HOME"
export FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export FLWR_LOCAL_CONTROL_API_PORT=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

# the processes whose environment has this FLWR_HOME (this run's, wherever they were re-parented),
# but this script and this check; "ours pids": their pids only, "ours superlink": the SuperLink's pid
ours() {
    $PY - "$@" <<'EOF'
import os, sys, psutil
me = psutil.Process()
mine = {me.pid, *(a.pid for a in me.parents())}
for p in psutil.process_iter(["pid", "cmdline"]):
    try:
        if p.pid in mine or p.environ().get("FLWR_HOME") != os.environ["FLWR_HOME"]:
            continue
        command = p.info["cmdline"] or []
        if sys.argv[1:] == ["superlink"]:
            if any(c.endswith("flower-superlink") for c in command[:2]):
                print(p.pid)
        elif sys.argv[1:] == ["pids"]:
            print(p.pid)
        else:
            print(p.pid, " ".join(command)[:150])
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        pass
EOF
}
# stop by pid: the SuperLink and every process it started (TERM, then KILL after 15 s)
stop() {
    $PY - "$@" <<'EOF'
import sys, psutil
family = []
for pid in map(int, sys.argv[1:]):
    try:
        family += [root := psutil.Process(pid), *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        pass
for p in family:
    try: p.terminate()
    except psutil.NoSuchProcess: pass
_, alive = psutil.wait_procs(family, timeout=15)
for p in alive:
    try: p.kill()
    except psutil.NoSuchProcess: pass
psutil.wait_procs(alive, timeout=15)
print(f"stopped {len(family)} processes ({len(alive)} needed SIGKILL)")
EOF
}
# a run that hangs fails after RUN_LIMIT s instead: this watchdog (no FLWR_HOME: not one of ours)
# stops every process of the run but this script
env -u FLWR_HOME $PY - "$FLWR_HOME" "$$" "${RUN_LIMIT:-1800}" <<'EOF' &
import sys, time, psutil
home, script, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
time.sleep(limit)
print(f"run.sh: FAILED: the run did not end within {limit:.0f} s (RUN_LIMIT); stopping it", file=sys.stderr)
procs = []
for p in psutil.process_iter():
    try:
        if p.pid != script and p.environ().get("FLWR_HOME") == home:
            procs.append(p)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        pass
for p in procs:
    try:
        p.kill()
    except psutil.NoSuchProcess:
        pass
EOF
WATCHDOG=$!
cleanup() { kill "$WATCHDOG" 2>/dev/null || true; pids=$(ours pids); [ -z "$pids" ] || stop $pids; rm -rf "$TMP"; }
trap cleanup EXIT

echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null || echo no-git) on $(nproc) CPUs, load average $(cut -d" " -f1-3 /proc/loadavg); cache $FEDHAR_CACHE_DIR ($(ls -A "$FEDHAR_CACHE_DIR" | wc -l) entries)"
START=$(date +%s)
# --- README, "Running with flwr run", verbatim ---
export PATH=$PWD/.venv/bin:$PATH FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 FLWR_TELEMETRY_ENABLED=0
flwr run . local --stream --federation-config "num-supernodes=3 client-resources-num-cpus=1" \
  --run-config "num-server-rounds=2 out-dir='$PWD/runs/flwr'"
flwr list --format json      # "status": "finished:completed", or the ServerApp's error
# --- end of README ---
echo "# flwr run returned after $(( $(date +%s) - START )) s"

status=$(flwr list --format json | $PY -c 'import json, sys; r = json.load(sys.stdin)["runs"][-1]; print(r["status"], round(r["elapsed"]))')
echo "# run status, elapsed s: $status"
[ "${status% *}" = finished:completed ] || { echo "run.sh: FAILED: the run ended ${status% *}" >&2; exit 1; }
$PY - <<'EOF'
import pandas as pd
rounds = pd.read_csv("runs/flwr/rounds.csv")
print(rounds[["round", "clients_trained", "failed", "accuracy", "macro_f1", "train_loss"]].to_string(index=False))
assert list(rounds["round"]) == [1, 2] and (rounds["clients_trained"] == 3).all() and (rounds["failed"] == 0).all(), rounds
EOF
echo "# left running after the run (flwr run's SuperLink and what it started):"; ours
pid=$(ours superlink)
[ -n "$pid" ] || { echo "run.sh: FAILED: no SuperLink of this run found" >&2; exit 1; }
stop "$pid"
kill "$WATCHDOG"; wait "$WATCHDOG" 2>/dev/null || true
for _ in $(seq 20); do left=$(ours); [ -n "$left" ] || break; sleep 1; done  # Ray's workers notice late
[ -z "$left" ] || { echo "run.sh: FAILED: processes left behind:"; echo "$left"; exit 1; } >&2
echo "# no process of this run left; total $(( $(date +%s) - START )) s"
