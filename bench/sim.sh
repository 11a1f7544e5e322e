#!/usr/bin/env bash
# The deterministic clusterset simulation (src/sim.rs) over many seeds: every seed runs
# gateways' sync sessions and the broker's state over lossy, delaying, partitioning links and
# broker restarts, checking the invariants after every step. Prints each failing seed with
# its replay command, then a last line `sim seeds=N violations=V seconds=T`.
#
#   bench/sim.sh                 # SEEDS=10000 (default), FIRST=0
#   SEEDS=200 FIRST=5000 bench/sim.sh
#
# Built in release mode (the first run compiles the crate's tests optimised). No root needed.
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS="${SEEDS:-10000}"
FIRST="${FIRST:-0}"
CAUSEWAY_SIM_SEEDS="$SEEDS" CAUSEWAY_SIM_FIRST_SEED="$FIRST" \
  cargo test --release --locked -p causeway --lib -- sim::tests::many_seeds --ignored \
  --nocapture --test-threads=1 2>&1 \
  | grep -E '^(seed |sim seeds=)'
