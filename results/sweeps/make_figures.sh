#!/usr/bin/env bash
# Every figure in results/sweeps/figures/, from the committed tables alone (no training):
#   bash results/sweeps/make_figures.sh        (FEDHAR=.venv/bin/fedhar outside the venv; ~1 min)
# The sweeps themselves: fedhar sweep simulations/sweeps/<name>.toml --out-dir results/sweeps/<name>
set -euo pipefail
fedhar=${FEDHAR:-fedhar}
out=results/sweeps/figures
rm -f "$out"/*.png "$out"/*.json  # every figure here comes from the commands below
mkdir -p "$out"
# drift vs round, one line per strategy (headline sweep: 5 strategies x 1/3 local epochs)
$fedhar plot drift results/sweeps/headline --out-dir "$out"
# each rule's own aggregation error vs local epochs (headline; exact rules at 0). Not against the
# clients per round: headline_clients has one trial at each of two values, no evidence of a trend
$fedhar plot inexactness results/sweeps/headline --out-dir "$out" --name inexactness_vs_local_epochs
# accuracy per client and round: one real federation (UCI-HAR, 21 subject clients, FedAvg)
$fedhar plot clients results/fl/runs/uci-har-subject-lora-fedavg --out-dir "$out" --name accuracy_per_client_uci_har_fedavg
# accuracy vs communicated bytes across the rules and modes on UCI-HAR (results/fl), and the sweep
# (the default score, as `fedhar plot all`: the global model on the server's test subjects)
$fedhar plot pareto results/fl/runs --where data=uci-har --out-dir "$out" --name pareto_uci_har
$fedhar plot pareto results/sweeps/headline --out-dir "$out" --name pareto_headline
# No rank ablation: the federated one (headline_precision) has one trial per rank and mode, and
# results/lodo/uci-har/runs.csv now holds rank 16 only; single runs per rank are no evidence
# LoRA vs QLoRA: frozen-weight bytes and accuracy, the README's 5 paired seeds (UCI-HAR held out,
# the other-data backbone, rank 16, H200)
$fedhar plot memory results/lodo/gpu/uci-har/runs.csv --where backbone_kind=other --out-dir "$out"
