#!/usr/bin/env bash
# Runs every check and test of causeway: installs the Debian packages the tests need, then lints
# and runs the whole workspace's tests, the lab end-to-end tests included (they build network
# namespaces, so this runs as root).
# The fast tier, `cargo test --workspace --lib`, needs neither root nor etcd (about 20 s of
# tests once built); the tests that do are `#[ignore = "needs root: …"]` or
# `#[ignore = "needs etcd …"]`, and run here through --include-ignored.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "tests/run.sh: run as root (the lab tests create network namespaces and TUN devices)" >&2
  exit 1
fi
tests/install-deps.sh
# The real Kubernetes control plane for tests/lab_kube.rs (etcd, kube-apiserver,
# kube-controller-manager, kubectl, the lab's node agent) and helm (tests/helm.rs), built from pinned Go modules into
# /var/cache/causeway/bin (or $CAUSEWAY_BIN_CACHE): needs Go (/usr/local/go/bin/go); a no-op
# once built. Not part of install-deps.sh, so that the plain demo stays as fast as before.
tests/k8s/build.sh kube agent helm
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked -- --include-ignored
