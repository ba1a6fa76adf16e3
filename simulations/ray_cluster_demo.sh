#!/usr/bin/env bash
# A two-node Ray cluster on this machine (a head and a second node joining it on loopback),
# and a sweep whose trials land on both nodes (results.csv records each trial's node).
#   bash simulations/ray_cluster_demo.sh [OUT]      (default OUT=results/ray_cluster; ~2 min)
# On a real cluster: `ray start --head --port 6379` on the head machine, `ray start --address
# HEAD_IP:6379` on each worker machine, then `fedhar sweep FILE --address HEAD_IP:6379` from
# any of them; the data and $FEDHAR_CACHE_DIR must be readable on every node (or each node
# prepares its own copy). The sweep runs on Ray Tune: Tune's files (OUT/tiny/tune/...) are
# written by the driver, each federation's run/ folder on the node that ran it; results.csv
# is still complete (every round travels to the driver as a Tune report).
set -euo pipefail
out=${1:-results/ray_cluster}
bin=$(dirname "$(command -v fedhar || echo .venv/bin/fedhar)")
ray=$bin/ray
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
tmp=$(mktemp -d /tmp/fedhar-ray-XXXXXX)   # both nodes' sessions live here: we stop exactly these
ours() {  # this cluster's processes: those naming its temp dir, and its Ray client server (names the head's port)
  { pgrep -f "$tmp" || true; pgrep -f "ray.util.client.server --address=[^ ]*:$port " || true; } | sort -u
}
cleanup() {  # every process of this cluster, by id (never `ray stop`: it stops every Ray on the machine)
  for pid in $(ours); do kill "$pid" 2>/dev/null || true; done
  sleep 3
  for pid in $(ours); do kill -9 "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM
export RAY_USAGE_STATS_ENABLED=0
"$ray" start --head --node-ip-address 127.0.0.1 --port "$port" --num-cpus 1 --include-dashboard false \
  --temp-dir "$tmp" --disable-usage-stats > "$tmp/head.log" 2>&1
"$ray" start --address "127.0.0.1:$port" --node-ip-address 127.0.0.1 --num-cpus 1 --temp-dir "$tmp" \
  > "$tmp/worker.log" 2>&1
mkdir -p "$out"
{
  echo "# two Ray nodes on loopback, head at 127.0.0.1:$port ($(date -u +%F\ %T) UTC)"
  "$bin/python" -c "
import ray; ray.init(address='127.0.0.1:$port', logging_level='ERROR')
for n in ray.nodes(): print('node', n['NodeID'][:8], 'alive' if n['Alive'] else 'dead', n['Resources'].get('CPU'), 'CPU')"
  "$bin/fedhar" sweep simulations/sweeps/tiny.toml --address "127.0.0.1:$port" --out-dir "$out/tiny"
  echo; echo "# trials per node (results.csv)"
  "$bin/python" -c "
import pandas as pd; t = pd.read_csv('$out/tiny/results.csv').drop_duplicates('trial_id')
print(t[['trial_id', 'strategy', 'status', 'node', 'node_ip', 'seconds']].to_string(index=False))
print('distinct nodes:', t['node'].nunique())"
} 2>&1 | tee "$out/demo.log"
