#!/usr/bin/env bash
# The checks README's test command skips (over 2 minutes each, @pytest.mark.long), run and
# recorded: output.txt is this script's last output (with the commit, CPU and load it ran at).
#   bash results/long_tests/run.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
out=results/long_tests/output.txt
{
  echo "commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- fedhar strategies simulations tests || echo ' (uncommitted changes)')"
  echo "cpu $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ)"
  FEDHAR_LONG_TESTS=1 FLWR_TELEMETRY_ENABLED=0 .venv/bin/python -m pytest -m long -v -p no:cacheprovider --durations=0 2>&1 \
    | grep -v -e "DeprecationWarning" -e "from click.utils"
} > "$out"
tail -n 8 "$out"
