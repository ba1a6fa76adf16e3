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
# inexactness vs local epochs (headline) and vs clients aggregated per round (headline_clients)
$fedhar plot inexactness results/sweeps/headline --out-dir "$out" --name inexactness_vs_local_epochs
$fedhar plot inexactness results/sweeps/headline_clients --out-dir "$out" --name inexactness_vs_clients
# accuracy per client and round: one real federation (UCI-HAR, 21 subject clients, FedAvg)
$fedhar plot clients results/fl/runs/uci-har-subject-lora-fedavg --out-dir "$out" --name accuracy_per_client_uci_har_fedavg
# accuracy vs communicated bytes across the rules and modes on UCI-HAR (results/fl), and the sweep
$fedhar plot pareto results/fl/runs --where data=uci-har --metric server_accuracy --out-dir "$out" --name pareto_uci_har
$fedhar plot pareto results/sweeps/headline --metric server_accuracy --out-dir "$out" --name pareto_headline
# rank ablation and LoRA vs QLoRA memory/accuracy: the precision sweep and centralised LODO (UCI-HAR)
# (two figures: federated synthetic runs and centralised UCI-HAR runs are different experiments)
$fedhar plot rank results/sweeps/headline_precision --out-dir "$out" --name rank_ablation_federated_synthetic
$fedhar plot rank results/lodo/uci-har/runs.csv --out-dir "$out" --name rank_ablation_lodo_uci_har
$fedhar plot memory results/lodo/uci-har/runs.csv results/sweeps/headline_precision --out-dir "$out"
