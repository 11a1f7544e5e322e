#!/usr/bin/env bash
# Tunnel throughput and latency between two network namespaces joined by one veth pair:
# the bare veth (segmentation offloads off), wireguard-go, boringtun-cli and causeway's data
# plane (gateway/examples/tunnel.rs), each side pinned to its own core with taskset; causeway
# twice, right after each other: plain, and with the prefix translation on (causeway-nat: both
# sides translate their local /24 to a global one, as clusters with the same pod CIDR do).
#
# Per setup: iperf3 TCP with 1 and 4 streams (DUR seconds each, default 10), ping RTT, and a
# 1-byte TCP request/response rate (python3, so a relative figure). Reports Gbit/s and the
# tunnel processes' CPU seconds per GB moved; the last line is
#   tunnel ratio_vs_wireguard_go=X ratio_vs_boringtun_cli=Y fraction_of_veth=Z translated_fraction=T
# (single stream; T is causeway-nat's Gbit/s over causeway's). Needs root, iproute2, ethtool, iperf3, wireguard-go, wg, python3, and
# optionally boringtun-cli (`cargo install boringtun-cli`); a setup whose tool is missing is
# reported as skipped. Not part of CI: it measures, it does not assert.
#
# Usage: sudo bench/tunnel.sh            (DUR=3 bench/tunnel.sh for a quick look)
#        sudo SOAK=200 bench/tunnel.sh   causeway only: a rate-limited TCP stream for SOAK
#                                        seconds (> 120 s crosses WireGuard's re-key time),
#                                        then checks the tunnel still carries traffic and that
#                                        the session was re-keyed.
set -euo pipefail

DUR=${DUR:-10}
SOAK=${SOAK:-0}
RR_SECS=${RR_SECS:-3}
MTU=1420
P="cwbt$$"
A="$P-a"
B="$P-b"
CPU_A=0
CPU_B=1
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PIDS=()
LOGS=$(mktemp -d)

log() { printf '%s\n' "$*" >&2; }

cleanup() {
	for pid in "${PIDS[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	for pid in "${PIDS[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	ip netns del "$A" 2>/dev/null || true
	ip netns del "$B" 2>/dev/null || true
	rm -f /var/run/wireguard/"$P"*.sock
	rm -rf "$LOGS"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

inA() { ip netns exec "$A" "$@"; }
inB() { ip netns exec "$B" "$@"; }

# --- namespaces and the veth pair ---
ip netns add "$A"
ip netns add "$B"
ip link add veth-a netns "$A" type veth peer name veth-b netns "$B"
inA ip addr add 10.77.0.1/24 dev veth-a
inB ip addr add 10.77.0.2/24 dev veth-b
for ns in "$A" "$B"; do
	ip -n "$ns" link set lo up
	dev=veth-a
	[ "$ns" = "$B" ] && dev=veth-b
	ip -n "$ns" link set "$dev" up
	# Offloads off, so the bare veth moves real MTU-sized packets like the tunnels do.
	ip netns exec "$ns" ethtool -K "$dev" tso off gso off gro off >/dev/null 2>&1 || log "ethtool -K failed on $dev"
done

# --- tools ---
log "building the causeway tunnel example (release)"
(cd "$ROOT" && cargo build --quiet --release -p causeway-gateway --example tunnel)
CAUSEWAY="${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/tunnel"
BORINGTUN=$(command -v boringtun-cli || true)
[ -z "$BORINGTUN" ] && [ -x "$HOME/.cargo/bin/boringtun-cli" ] && BORINGTUN="$HOME/.cargo/bin/boringtun-cli"

KEY_A=$(wg genkey)
KEY_B=$(wg genkey)
PUB_A=$(printf '%s' "$KEY_A" | wg pubkey)
PUB_B=$(printf '%s' "$KEY_B" | wg pubkey)

# The iperf3 server lives in B for the whole run.
ip netns exec "$B" taskset -c "$CPU_B" iperf3 -s -p 5201 >/dev/null 2>&1 &
PIDS+=($!)
# A 1-byte echo server for the request/response rate.
ip netns exec "$B" taskset -c "$CPU_B" python3 -c '
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 5202)); s.listen(8)
while True:
    c, _ = s.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        b = c.recv(1)
        if not b: break
        c.sendall(b)
    c.close()
' &
PIDS+=($!)
sleep 0.5 # servers binding; iperf3 retries below cover a slow start anyway

cpu_ticks() { # summed utime+stime of the given pids
	local total=0 pid
	for pid in "$@"; do
		[ -r "/proc/$pid/stat" ] || continue
		total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
	done
	echo "$total"
}
HZ=$(getconf CLK_TCK)

RESULTS=()
# measure NAME DST PIDS...: prints and records one row per stream count.
measure() {
	local name=$1 dst=$2
	shift 2
	local pids=("$@") streams
	for streams in 1 4; do
		local before after json gbit bytes cpu_per_gb
		before=$(cpu_ticks "${pids[@]}")
		json=""
		for _ in 1 2 3; do
			json=$(inA taskset -c "$CPU_A" iperf3 -c "$dst" -p 5201 -t "$DUR" -P "$streams" -J 2>/dev/null) && break
			sleep 1
		done
		after=$(cpu_ticks "${pids[@]}")
		read -r gbit bytes < <(printf '%s' "$json" | python3 -c '
import json, sys
e = json.load(sys.stdin)["end"]["sum_received"]
print("%.3f %d" % (e["bits_per_second"] / 1e9, e["bytes"]))')
		if [ "${#pids[@]}" -eq 0 ]; then
			cpu_per_gb="-"
		else
			cpu_per_gb=$(python3 -c "print('%.2f' % ((($after - $before) / $HZ) / ($bytes / 1e9)))")
		fi
		RESULTS+=("$name $streams $gbit $cpu_per_gb")
		printf '%-14s streams=%d  %7s Gbit/s  %6s CPU s/GB (tunnel processes)\n' "$name" "$streams" "$gbit" "$cpu_per_gb"
	done
	local rtt rr
	rtt=$(inA ping -c 50 -i 0.01 -q "$dst" | awk -F/ '/^rtt|^round-trip/ {print $5}')
	rr=$(inA taskset -c "$CPU_A" python3 -c '
import socket, sys, time
s = socket.create_connection((sys.argv[1], 5202)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
n, end = 0, time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    s.sendall(b"x"); s.recv(1); n += 1
print(int(n / float(sys.argv[2])))' "$dst" "$RR_SECS")
	printf '%-14s ping_rtt_ms=%s  tcp_rr_per_s=%s\n' "$name" "$rtt" "$rr"
}

wait_ping() { # wait_ping DST: until one ping gets through, at most 20 tries
	local i
	for i in $(seq 20); do
		inA ping -c 1 -W 1 "$1" >/dev/null 2>&1 && return 0
	done
	log "no ping through to $1"
	return 1
}

# --- bare veth ---
[ "$SOAK" -eq 0 ] && measure veth 10.77.0.2

# --- a standard WireGuard userspace device in each namespace (wireguard-go, boringtun-cli) ---
wg_pair() { # wg_pair NAME CMD...: starts CMD IFACE in both namespaces, configures with wg
	local name=$1
	shift
	local dev_a="${P}a" dev_b="${P}b" pa pb keyfile
	WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1 ip netns exec "$A" taskset -c "$CPU_A" "$@" "$dev_a" >/dev/null 2>&1 &
	pa=$!
	WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1 ip netns exec "$B" taskset -c "$CPU_B" "$@" "$dev_b" >/dev/null 2>&1 &
	pb=$!
	PIDS+=("$pa" "$pb")
	for _ in $(seq 50); do
		[ -S "/var/run/wireguard/$dev_a.sock" ] && [ -S "/var/run/wireguard/$dev_b.sock" ] && break
		sleep 0.1
	done
	keyfile=$(mktemp)
	printf '%s' "$KEY_A" >"$keyfile"
	inA wg set "$dev_a" private-key "$keyfile" listen-port 51820 peer "$PUB_B" endpoint 10.77.0.2:51820 allowed-ips 10.78.0.2/32
	printf '%s' "$KEY_B" >"$keyfile"
	inB wg set "$dev_b" private-key "$keyfile" listen-port 51820 peer "$PUB_A" endpoint 10.77.0.1:51820 allowed-ips 10.78.0.1/32
	rm -f "$keyfile"
	inA ip addr add 10.78.0.1/24 dev "$dev_a"
	inB ip addr add 10.78.0.2/24 dev "$dev_b"
	inA ip link set "$dev_a" mtu "$MTU" up
	inB ip link set "$dev_b" mtu "$MTU" up
	wait_ping 10.78.0.2 && measure "$name" 10.78.0.2 "$pa" "$pb"
	kill "$pa" "$pb" 2>/dev/null || true
	wait "$pa" "$pb" 2>/dev/null || true
}

[ "$SOAK" -eq 0 ] && wg_pair wireguard-go wireguard-go -f
if [ "$SOAK" -gt 0 ]; then
	: # soak mode: causeway only
elif [ -n "$BORINGTUN" ]; then
	# One thread, as in the issue's reference figure; stays root so it can open the TUN.
	wg_pair boringtun-cli "$BORINGTUN" --foreground --threads 1 --disable-drop-privileges
else
	log "boringtun-cli not found: skipped (cargo install boringtun-cli)"
fi

# --- causeway ---
inA ip addr add 10.78.0.1/32 dev lo
inB ip addr add 10.78.0.2/32 dev lo
ip netns exec "$A" taskset -c "$CPU_A" "$CAUSEWAY" --tun "${P}c" --listen 10.77.0.1:51820 --private-key "$KEY_A" \
	--peer "$PUB_B" --endpoint 10.77.0.2:51820 --allowed 10.78.0.2/32 --mtu "$MTU" --route-source 10.78.0.1 2>"$LOGS/causeway-a.log" &
CA=$!
ip netns exec "$B" taskset -c "$CPU_B" "$CAUSEWAY" --tun "${P}c" --listen 10.77.0.2:51820 --private-key "$KEY_B" \
	--peer "$PUB_A" --endpoint 10.77.0.1:51820 --allowed 10.78.0.1/32 --mtu "$MTU" --route-source 10.78.0.2 2>"$LOGS/causeway-b.log" &
CB=$!
PIDS+=("$CA" "$CB")
if [ "$SOAK" -gt 0 ]; then
	wait_ping 10.78.0.2
	log "soak: ${SOAK} s of a 50 Mbit/s TCP stream through causeway"
	soak_bytes=$(inA taskset -c "$CPU_A" iperf3 -c 10.78.0.2 -p 5201 -t "$SOAK" -b 50M -J |
		python3 -c 'import json, sys; print(json.load(sys.stdin)["end"]["sum_received"]["bytes"])')
	soak_ping=fail
	inA ping -c 3 -W 1 10.78.0.2 >/dev/null 2>&1 && soak_ping=ok
	kill "$CA" "$CB" 2>/dev/null || true
	wait "$CA" "$CB" 2>/dev/null || true
	handshake=$(grep -ho 'last_handshake_s=[0-9.-]*' "$LOGS/causeway-a.log" | cut -d= -f2)
	rekeyed=$(python3 -c "print('yes' if 0 <= float('${handshake:--1}') < $SOAK - 5 else 'no')")
	echo "soak seconds=$SOAK bytes=$soak_bytes ping_after=$soak_ping last_handshake_s=$handshake rekeyed=$rekeyed"
	exit 0
fi
wait_ping 10.78.0.2 && measure causeway 10.78.0.2 "$CA" "$CB"
kill "$CA" "$CB" 2>/dev/null || true
wait "$CA" "$CB" 2>/dev/null || true
log "causeway drop counters: $(grep -h 'device stats' "$LOGS"/causeway-*.log | tr '\n' ' ')"

# --- causeway with prefix translation ---
# Both sides use 10.78.0.0/24 locally (A's 10.78.0.1 and B's 10.78.0.2 on lo); from outside A
# is 10.79.1.0/24 and B 10.79.2.0/24. iperf3 in A dials B's global 10.79.2.2 from its local
# 10.78.0.1 (the route's src); B's server sees 10.79.1.1 and answers it.
ip netns exec "$A" taskset -c "$CPU_A" "$CAUSEWAY" --tun "${P}n" --listen 10.77.0.1:51821 --private-key "$KEY_A" \
	--peer "$PUB_B" --endpoint 10.77.0.2:51821 --allowed 10.79.2.0/24 --mtu "$MTU" --route-source 10.78.0.1 \
	--translate 10.78.0.0/24=10.79.1.0/24 2>"$LOGS/causeway-nat-a.log" &
CA=$!
ip netns exec "$B" taskset -c "$CPU_B" "$CAUSEWAY" --tun "${P}n" --listen 10.77.0.2:51821 --private-key "$KEY_B" \
	--peer "$PUB_A" --endpoint 10.77.0.1:51821 --allowed 10.79.1.0/24 --mtu "$MTU" --route-source 10.78.0.2 \
	--translate 10.78.0.0/24=10.79.2.0/24 2>"$LOGS/causeway-nat-b.log" &
CB=$!
PIDS+=("$CA" "$CB")
wait_ping 10.79.2.2 && measure causeway-nat 10.79.2.2 "$CA" "$CB"
kill "$CA" "$CB" 2>/dev/null || true
wait "$CA" "$CB" 2>/dev/null || true
log "causeway-nat counters: $(grep -h 'device stats' "$LOGS"/causeway-nat-*.log | tr '\n' ' ')"

# --- summary (single stream) ---
python3 - "${RESULTS[@]}" <<'EOF'
import sys
rows = {}
for r in sys.argv[1:]:
    name, streams, gbit, _cpu = r.split()
    rows[(name, int(streams))] = float(gbit)
def ratio(a, b):
    x, y = rows.get((a, 1)), rows.get((b, 1))
    return "%.2f" % (x / y) if x and y else "n/a"
print("tunnel ratio_vs_wireguard_go=%s ratio_vs_boringtun_cli=%s fraction_of_veth=%s translated_fraction=%s" % (
    ratio("causeway", "wireguard-go"), ratio("causeway", "boringtun-cli"), ratio("causeway", "veth"),
    ratio("causeway-nat", "causeway")))
EOF
