#!/usr/bin/env bash
# bench/fuzz.sh: runs every cargo-fuzz target in tests/fuzz for $FUZZ_SECONDS s each (60) with
# libFuzzer, and prints per target the executions and whether it crashed.
# Last line: `fuzz targets=N execs=E crashes=C`.
#
# Needs the nightly toolchain (libFuzzer's instrumentation: `rustup toolchain install nightly`)
# and cargo-fuzz, which it installs from crates.io when missing (`cargo install cargo-fuzz`).
# Targets build with `cargo fuzz build --sanitizer none` (the code under test is safe Rust, and
# AddressSanitizer would cost most of the executions); set SANITIZER=address to change that.
# Without cargo-fuzz (CARGO_FUZZ=0, or if it cannot be installed) the targets build with the
# same coverage flags by plain cargo. New inputs go to a scratch copy of each corpus, so the
# committed corpora stay small; a crash's input is copied to tests/fuzz/artifacts/<target>/.
# Not part of CI (CI replays the committed corpora: `causeway::fuzzing` and the gateway's and
# DNS server's replay tests). Results go in bench/RESULTS.md with the command.
set -euo pipefail

FUZZ_SECONDS=${FUZZ_SECONDS:-60}
SANITIZER=${SANITIZER:-none}
CARGO_FUZZ=${CARGO_FUZZ:-1}
TRIPLE=x86_64-unknown-linux-gnu
cd "$(dirname "$0")/../tests/fuzz"

if ! rustup toolchain list | grep -q '^nightly'; then
	echo "bench/fuzz.sh needs the nightly toolchain (rustup toolchain install nightly)" >&2
	exit 1
fi
if [ "$CARGO_FUZZ" = 1 ] && ! cargo fuzz --version >/dev/null 2>&1; then
	echo "installing cargo-fuzz from crates.io"
	cargo install cargo-fuzz --locked >/dev/null 2>&1 || CARGO_FUZZ=0
fi

# Every [[bin]] of the fuzz crate is a target.
mapfile -t targets < <(awk '/^\[\[bin\]\]/ {bin = 1} bin && /^name *=/ {gsub(/[" ]/, "", $3); print $3; bin = 0}' Cargo.toml)
export CARGO_TARGET_DIR="$PWD/target"
if [ "$CARGO_FUZZ" = 1 ]; then
	echo "building ${#targets[@]} targets with cargo fuzz (sanitizer $SANITIZER)"
	cargo +nightly fuzz build -O --sanitizer "$SANITIZER" >/dev/null
else
	echo "building ${#targets[@]} targets with plain cargo (cargo-fuzz unavailable)"
	RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks" \
		cargo +nightly build -q --release --target "$TRIPLE" --bins
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
total_execs=0
crashes=0
for target in "${targets[@]}"; do
	mkdir -p "$work/$target"
	cp corpus/"$target"/* "$work/$target/" 2>/dev/null || true
	log="$work/$target.log"
	if "target/$TRIPLE/release/$target" -max_total_time="$FUZZ_SECONDS" -print_final_stats=1 \
		-artifact_prefix="$work/$target-" "$work/$target" >"$log" 2>&1; then
		outcome="no crash"
	else
		outcome="CRASH"
		crashes=$((crashes + 1))
		mkdir -p "artifacts/$target"
		cp "$work/$target"-* "artifacts/$target/" 2>/dev/null || true
	fi
	execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
	execs=${execs:-0}
	total_execs=$((total_execs + execs))
	echo "$target: ${FUZZ_SECONDS} s, $execs executions, $outcome"
	if [ "$outcome" = CRASH ]; then
		tail -20 "$log" | sed 's/^/    /'
	fi
done
echo "fuzz targets=${#targets[@]} execs=$total_execs crashes=$crashes"
