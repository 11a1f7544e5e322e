#!/usr/bin/env bash
# Broker scale: one real broker process (the release `causeway broker`, embedded redb store)
# and CLUSTERS simulated clusters, each a real QUIC/mTLS client, all in one load-generator
# process (examples/broker_bench.rs). The clusters export SERVICES services with ENDPOINTS
# endpoints each in total; after the first full sync, CHURN percent of all endpoints change
# per second for SECONDS seconds, one endpoint per change.
#
# Reports: time to the first full sync of every cluster, propagation of a change to every
# other cluster (p50/p99/max), the broker's CPU and peak RSS, and the QUIC bytes the clients
# received per change. The last line is
#   broker propagation_p99_ms=X peak_rss_mib=Y bytes_per_change=Z
# Loopback only, no root. Not part of CI: it measures, it does not assert.
#
# Usage: bench/broker.sh      (SECONDS_=10 CLUSTERS=20 bench/broker.sh for a quick look)
set -euo pipefail

CLUSTERS=${CLUSTERS:-100}
SERVICES=${SERVICES:-10000}
ENDPOINTS=${ENDPOINTS:-3}
CHURN=${CHURN:-1}
DURATION=${SECONDS_:-60}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

cd "$ROOT"
cargo build --release --quiet --bin causeway --example broker_bench
exec "$TARGET/release/examples/broker_bench" "$TARGET/release/causeway" \
	--clusters "$CLUSTERS" --services "$SERVICES" --endpoints "$ENDPOINTS" \
	--churn-percent "$CHURN" --seconds "$DURATION"
