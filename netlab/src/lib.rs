//! causeway-netlab: whole clusters built from Linux network namespaces on one machine,
//! running the real `causeway` daemons (whose binary path is passed in; this crate does not
//! depend on the `causeway` package).
//!
//! Module map:
//! - `topology`: the lab's names and addresses, pure (the addressing every part relies on).
//! - `ns`: commands with deadlines; namespaces, veths and bridges via `ip`; teardown by prefix.
//! - `cluster`: supervision of daemon child processes; certificates; services dirs.
//! - `lab`: [`Lab`]: build, start, wait ready, look from inside pods, tear down on drop.
//! - `capture`: tcpdump on the wan and a small pcap parser.
//! - `story`: the six steps the demo prints and the end-to-end test asserts.
//! - `demo`: `causeway lab demo | up | down`.
//! - `http`: the pods' tiny HTTP server (`causeway lab http-serve`).
//! - `probe`: readiness probes (a DNS query from inside a pod).
//! - `failover`: `causeway lab failover`: five failure scenarios measured from a client's seat.
//! - `svg`: the failover timeline as SVG (pure).
//! - `wait`: deadlines, condition polling, the SIGINT/SIGTERM flag; netlab's only clock reads.
//! - `nat`: cluster IPs as nftables DNAT in a cluster's router namespace (as kube-proxy).
//! - `dig`: DNS queries from inside a pod through its resolv.conf, and their parsed replies.
//! - `kube`: `--kube`: a real control plane per cluster (etcd, kube-apiserver,
//!   kube-controller-manager), the Go node agent, and gateways with `--source kube`.
//! - `kube_story`: the Kubernetes user story through kubectl (`lab demo --kube`, lab_kube test).
//! - `relay`: added wan latency and loss, a userspace relay on a TUN in a gateway namespace.
//!
//! Everything here needs root (namespaces, veths, tcpdump) except the pure parts.

pub mod capture;
pub mod cluster;
pub mod demo;
pub mod dig;
pub mod failover;
pub mod http;
pub mod kube;
pub mod kube_story;
pub mod lab;
pub mod nat;
pub mod ns;
pub mod probe;
pub mod relay;
pub mod story;
pub mod svg;
pub mod topology;
pub mod wait;

pub use demo::{DEFAULT_PREFIX, demo, down, up};
pub use http::http_serve;
pub use lab::{Lab, LabSpec};
pub use topology::{Addressing, Topology};
