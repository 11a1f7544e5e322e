#!/usr/bin/env bash
# Installs the Debian packages that the lab demo and the tests need (Debian/Ubuntu, as root).
# Only what is missing is installed; --no-install-recommends keeps wireguard-tools from
# dragging in a kernel image.
set -euo pipefail
pkgs=(
  iproute2 iputils-ping procps   # namespaces, veth, bridges; ping; sysctl
  curl                           # HTTP GET from lab pods
  tcpdump                        # capture on the lab's wan
  dnsutils                       # dig, against our DNS server
  nftables                       # cluster IPs in the lab's routers
  wireguard-go wireguard-tools   # a standard WireGuard peer for interop tests
  iperf3                         # tunnel throughput (bench/)
  protobuf-compiler libprotobuf-dev  # protoc and its well-known types, for the etcd client
  etcd-server                    # the broker's HA store (a 3-member cluster in tests)
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: run as root to install: ${missing[*]}" >&2
    exit 1
  fi
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# kubernetes-validate (PyPI) for tests/manifests.rs: validates every manifest offline against
# the Kubernetes OpenAPI schemas. Debian has no package of it; pip installs it (Debian's own
# python3 is "externally managed", hence the second try).
if ! python3 -c 'import kubernetes_validate' 2>/dev/null; then
  if ! command -v python3 >/dev/null || ! python3 -m pip --version >/dev/null 2>&1; then
    echo "install-deps: installing python3 and python3-pip"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends python3 python3-pip
  fi
  echo "install-deps: installing kubernetes-validate"
  python3 -m pip install -q kubernetes-validate 2>/dev/null \
    || python3 -m pip install -q --break-system-packages kubernetes-validate
fi

