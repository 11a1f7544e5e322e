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
#        bench/broker.sh --store etcd   (or STORE=etcd): the broker on a local one-member etcd
#        (Debian's etcd-server) instead of redb; etcd's own CPU and peak RSS are printed too.
set -euo pipefail

STORE=${STORE:-redb}
while [ $# -gt 0 ]; do
	case "$1" in
	--store) STORE=$2; shift 2 ;;
	*) echo "unknown argument $1 (usage: bench/broker.sh [--store redb|etcd])" >&2; exit 2 ;;
	esac
done

CLUSTERS=${CLUSTERS:-100}
SERVICES=${SERVICES:-10000}
ENDPOINTS=${ENDPOINTS:-3}
CHURN=${CHURN:-1}
DURATION=${SECONDS_:-60}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

cd "$ROOT"
cargo build --release --quiet --bin causeway --example broker_bench
STORE_ARGS=()
case "$STORE" in
redb) ;;
etcd)
	ETCD_DIR=$(mktemp -d)
	ETCD_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
	PEER_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
	# A publish is one transaction: allow the broker's largest (see src/broker/etcd.rs).
	etcd --name bench --data-dir "$ETCD_DIR/data" \
		--listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
		--listen-peer-urls "http://127.0.0.1:$PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$PEER_PORT" \
		--initial-cluster "bench=http://127.0.0.1:$PEER_PORT" \
		--max-txn-ops 32768 --max-request-bytes 16777216 --quota-backend-bytes 4294967296 \
		>"$ETCD_DIR/etcd.log" 2>&1 &
	ETCD_PID=$!
	trap 'status=$?; kill $ETCD_PID 2>/dev/null; wait $ETCD_PID 2>/dev/null; rm -rf "$ETCD_DIR"; exit $status' EXIT
	for _ in $(seq 100); do
		curl -fs "http://127.0.0.1:$ETCD_PORT/health" >/dev/null && break
		sleep 0.1
	done
	curl -fs "http://127.0.0.1:$ETCD_PORT/health" >/dev/null || { cat "$ETCD_DIR/etcd.log" >&2; exit 1; }
	STORE_ARGS=(--store "etcd://127.0.0.1:$ETCD_PORT")
	;;
*) echo "unknown store $STORE (redb or etcd)" >&2; exit 2 ;;
esac
"$TARGET/release/examples/broker_bench" "$TARGET/release/causeway" \
	--clusters "$CLUSTERS" --services "$SERVICES" --endpoints "$ENDPOINTS" \
	--churn-percent "$CHURN" --seconds "$DURATION" "${STORE_ARGS[@]}" | tee "${TMPDIR:-/tmp}/broker-bench.$$.out"
if [ "$STORE" = etcd ]; then
	ticks=$(getconf CLK_TCK)
	cpu=$(awk -v t="$ticks" '{ printf "%.1f", ($14 + $15) / t }' "/proc/$ETCD_PID/stat")
	rss=$(awk '/VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$ETCD_PID/status")
	echo "etcd cpu_s=$cpu (whole run) peak_rss_mib=$rss"
	# The bench's last line stays last.
	tail -n 1 "${TMPDIR:-/tmp}/broker-bench.$$.out"
fi
rm -f "${TMPDIR:-/tmp}/broker-bench.$$.out"
