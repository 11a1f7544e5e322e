#!/usr/bin/env bash
# bench/dns.sh: causeway-dns against Knot DNS on loopback, same data, same queries.
#
# Serves a zone of $SERVICES services across $CLUSTERS clusters from our server
# (dns/examples/bench_server.rs) and the equivalent static zone from knotd, each pinned to
# CPU $SERVER_CPU with dnsperf pinned to CPU $CLIENT_CPU, and reports for both:
#   - QPS at saturation (dnsperf, $DURATION s),
#   - server CPU seconds per 100k answers (utime+stime deltas from /proc/<pid>/stat),
#   - the latency distribution at a fixed $RATE QPS (dnsperf -Q, per-query latencies from -v),
#   - RSS for the zone (names counted by our server),
# and our QPS again while the table takes $UPDATES updates/s (each moving every address of one
# service), then, still under churn, checks $TORN_SECONDS s of answers for torn ones (each must
# be exactly one version the updater published: bench_server --check-torn), then fuzzes the query path for
# $FUZZ_SECONDS s (tests/fuzz target dns_query; needs the nightly toolchain; 0 skips).
# Last line: `dns qps_ratio_vs_knot=X cpu_ratio_vs_knot=Y` (ours / Knot's).
#
# Needs: apt-get install -y --no-install-recommends dnsperf knot. Not part of CI: it measures
# this machine. Results go in bench/RESULTS.md with the command that produced them.
set -euo pipefail

SERVICES=${SERVICES:-12500}   # 12,500 services x 8 names = 100,100 names
CLUSTERS=${CLUSTERS:-5}
DURATION=${DURATION:-10}
RATE=${RATE:-20000}
LATENCY_SECONDS=${LATENCY_SECONDS:-5}
UPDATES=${UPDATES:-1000}
TORN_SECONDS=${TORN_SECONDS:-5}
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
OURS_PORT=${OURS_PORT:-5300}
KNOT_PORT=${KNOT_PORT:-5301}

cd "$(dirname "$0")/.."
for tool in dnsperf knotd taskset dig; do
	command -v "$tool" >/dev/null || { echo "bench/dns.sh: $tool not found (apt-get install dnsperf knot dnsutils util-linux)" >&2; exit 1; }
done

work=$(mktemp -d)
pids=()
cleanup() {
	for pid in "${pids[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
	for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
	rm -rf "$work"
}
trap cleanup EXIT

target=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p causeway-dns --example bench_server
bin=$target/release/examples/bench_server
clk=$(getconf CLK_TCK)

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

# Waits until the server on port $1 answers the apex SOA (deadline 30 s).
wait_ready() {
	for _ in $(seq 300); do
		if dig +short +time=1 +tries=1 -p "$1" @127.0.0.1 svc.global SOA >/dev/null 2>&1 &&
			[ -n "$(dig +short +time=1 +tries=1 -p "$1" @127.0.0.1 svc.global SOA)" ]; then
			return 0
		fi
		sleep 0.1
	done
	echo "server on port $1 did not come up" >&2
	exit 1
}

# start_ours UPDATES_PER_SEC: runs the harness, sets $ours_pid.
start_ours() {
	taskset -c "$SERVER_CPU" "$bin" --listen "127.0.0.1:$OURS_PORT" --services "$SERVICES" \
		--clusters "$CLUSTERS" --updates-per-sec "$1" \
		--zone-file "$work/svc.global.zone" --query-file "$work/queries" \
		>"$work/ours.out" 2>"$work/ours.err" &
	ours_pid=$!
	pids+=("$ours_pid")
	# The empty zone answers from the start; the table is served once "ready" is printed.
	for _ in $(seq 1200); do
		grep -q '^ready' "$work/ours.out" && break
		sleep 0.1
	done
	grep -q '^ready' "$work/ours.out" || { echo "bench_server did not come up" >&2; cat "$work/ours.err" >&2; exit 1; }
	wait_ready "$OURS_PORT"
}

stop() {
	kill -INT "$1"
	wait "$1" 2>/dev/null || true
}

# saturate NAME PORT PID: prints "qps cpu_s_per_100k" and keeps dnsperf's output.
saturate() {
	local before after
	before=$(cpu_ticks "$3")
	taskset -c "$CLIENT_CPU" dnsperf -s 127.0.0.1 -p "$2" -d "$work/queries" -l "$DURATION" \
		-c 8 -T 1 -q 1000 -t 2 >"$work/$1.saturate" 2>&1
	after=$(cpu_ticks "$3")
	awk -v ticks=$((after - before)) -v clk="$clk" '
		/Queries completed:/ {done = $3}
		/Queries per second:/ {qps = $4}
		END {printf "%.0f %.3f\n", qps, ticks / clk * 100000 / done}' "$work/$1.saturate"
}

# latency NAME PORT: per-query latencies at $RATE QPS; prints "avg p50 p90 p99 p99.9 max" in ms.
latency() {
	taskset -c "$CLIENT_CPU" dnsperf -s 127.0.0.1 -p "$2" -d "$work/queries" -l "$LATENCY_SECONDS" \
		-Q "$RATE" -c 8 -T 1 -q 1000 -t 2 -v >"$work/$1.latency" 2>&1
	awk '$1 == ">" {print $NF * 1000}' "$work/$1.latency" | sort -g >"$work/$1.sorted"
	awk '{v[NR] = $1; s += $1} END {
		if (NR == 0) {print "no samples"; exit}
		q = "%.3f";
		printf q " " q " " q " " q " " q " " q " (n=%d)\n", s / NR, v[int(NR * 0.5) + 1], v[int(NR * 0.9) + 1],
			v[int(NR * 0.99) + 1], v[int(NR * 0.999) + 1], v[NR], NR}' "$work/$1.sorted"
}

echo "# causeway-dns vs Knot DNS: $SERVICES services x $CLUSTERS clusters; server on CPU $SERVER_CPU, dnsperf on CPU $CLIENT_CPU"

# Ours, static table.
start_ours 0
names=$(sed -n 's/.*names=\([0-9]*\).*/\1/p' "$work/ours.out")
build_ms=$(sed -n 's/.*build_ms=\([0-9]*\).*/\1/p' "$work/ours.out")
ours_rss=$(rss_kib "$ours_pid")
read -r ours_qps ours_cpu < <(saturate ours "$OURS_PORT" "$ours_pid")
ours_latency=$(latency ours "$OURS_PORT")
stop "$ours_pid"

# Ours, churning.
start_ours "$UPDATES"
read -r churn_qps churn_cpu < <(saturate churn "$OURS_PORT" "$ours_pid")
if torn_result=$(taskset -c "$CLIENT_CPU" "$bin" --check-torn "127.0.0.1:$OURS_PORT" \
	--services "$SERVICES" --clusters "$CLUSTERS" --seconds "$TORN_SECONDS" 2>"$work/torn.err"); then
	torn_result="$torn_result (none torn)"
else
	torn_result="FAILED: $torn_result $(head -5 "$work/torn.err")"
fi
stop "$ours_pid"
churn_stats=$(cat "$work/ours.err")

# Knot, the same zone, one worker per kind so that it runs on the one CPU it is pinned to.
mkdir -p "$work/knot"
cat >"$work/knot.conf" <<EOF
server:
    rundir: "$work/knot"
    listen: 127.0.0.1@$KNOT_PORT
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
database:
    storage: "$work/knot"
log:
  - target: stderr
    any: warning
zone:
  - domain: svc.global
    file: "$work/svc.global.zone"
    journal-content: none
    zonefile-sync: -1
EOF
taskset -c "$SERVER_CPU" knotd -c "$work/knot.conf" >"$work/knot.out" 2>&1 &
knot_pid=$!
pids+=("$knot_pid")
wait_ready "$KNOT_PORT"
knot_rss=$(rss_kib "$knot_pid")
read -r knot_qps knot_cpu < <(saturate knot "$KNOT_PORT" "$knot_pid")
knot_latency=$(latency knot "$KNOT_PORT")
stop "$knot_pid"

echo "names served: $names (snapshot built in $build_ms ms)"
printf "%-28s %12s %12s\n" "" "causeway-dns" "knot"
printf "%-28s %12s %12s\n" "QPS (saturated)" "$ours_qps" "$knot_qps"
printf "%-28s %12s %12s\n" "CPU s per 100k answers" "$ours_cpu" "$knot_cpu"
printf "%-28s %12s %12s\n" "RSS MiB" "$((ours_rss / 1024))" "$((knot_rss / 1024))"
echo "latency at $RATE QPS, ms: avg p50 p90 p99 p99.9 max"
echo "  causeway-dns: $ours_latency"
echo "  knot:         $knot_latency"
echo "while taking $UPDATES updates/s ($churn_stats): QPS $churn_qps, CPU s per 100k $churn_cpu," \
	"drop $(awk -v a="$ours_qps" -v b="$churn_qps" 'BEGIN {printf "%.1f%%", (a - b) / a * 100}')"
echo "torn-answer check under churn, $TORN_SECONDS s: $torn_result"
fuzz_result="skipped (FUZZ_SECONDS=0)"
if [ "$FUZZ_SECONDS" -gt 0 ]; then
	# Flags as cargo-fuzz passes them (see tests/fuzz/Cargo.toml); new inputs go to a scratch
	# copy of the corpus, so the committed one stays small.
	(cd tests/fuzz && CARGO_TARGET_DIR="$PWD/target" RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table -Cllvm-args=-sanitizer-coverage-trace-compares \
-Cdebug-assertions -Coverflow-checks" \
		cargo +nightly build -q --release --target x86_64-unknown-linux-gnu --bin dns_query)
	mkdir -p "$work/fuzz-corpus"
	cp tests/fuzz/corpus/dns_query/* "$work/fuzz-corpus/"
	if tests/fuzz/target/x86_64-unknown-linux-gnu/release/dns_query -max_total_time="$FUZZ_SECONDS" \
		-artifact_prefix="$work/" "$work/fuzz-corpus" >"$work/fuzz.log" 2>&1; then
		fuzz_result="no crash: $(grep -o 'Done [0-9]* runs in [0-9]* second(s)' "$work/fuzz.log")"
	else
		fuzz_result="CRASH, see the artifact named in:"$'\n'"$(tail -20 "$work/fuzz.log")"
		cp "$work"/crash-* . 2>/dev/null || true
	fi
fi
echo "fuzz dns_query for $FUZZ_SECONDS s: $fuzz_result"
for name in ours churn knot; do
	grep -E "Queries (sent|completed|lost)|Response codes" "$work/$name.saturate" | sed "s/^/  $name: /"
done
awk -v oq="$ours_qps" -v kq="$knot_qps" -v oc="$ours_cpu" -v kc="$knot_cpu" \
	'BEGIN {printf "dns qps_ratio_vs_knot=%.2f cpu_ratio_vs_knot=%.2f\n", oq / kq, oc / kc}'
