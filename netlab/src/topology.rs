//! The lab's shape: names and addresses, computed purely from a prefix and a cluster count.
//!
//! Owns the lab addressing every part of causeway may rely on (see the shared brief):
//! - namespaces `P-wan` (bridge `wan0`), `P-broker`, `P-cI-gw`, `P-cI-podJ`;
//! - wan 10.100.0.0/24: broker .2, gateway of cluster I at .(10+I);
//! - cluster I owns 10.10I.0.0/16; its gateway holds bridge `pods0` with 10.10I.0.1/24 (also the
//!   DNS address) and pod J is 10.10I.0.(9+J) with a default route via the gateway.
//!
//! With [`Addressing::SameCidrs`] every cluster is made as kind makes them: pods in
//! 10.244.0.0/16 (gateway 10.244.0.1, pod J at 10.244.0.(9+J)) and services in 10.96.0.0/12;
//! the wan moves to 192.168.100.0/24, since 10.96.0.0/12 holds 10.100.0.0/24. Other clusters
//! reach each cluster through the global ranges the broker gives it (see `Lab::seen_from`).
//!
//! No I/O: `ns` builds this shape with `ip`, `lab` runs daemons on it.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

/// WireGuard's UDP port on every gateway.
pub const WG_PORT: u16 = 51820;
/// The broker's QUIC (UDP) port.
pub const BROKER_PORT: u16 = 7443;
/// The DNS port gateways serve `svc.global` on.
pub const DNS_PORT: u16 = 53;
/// The bridge in the wan namespace that joins the broker and the gateways.
pub const WAN_BRIDGE: &str = "wan0";
/// The bridge in each gateway namespace that joins the cluster's pods.
pub const PODS_BRIDGE: &str = "pods0";
/// The interface name of the single uplink inside broker, gateway and pod namespaces.
pub const UPLINK: &str = "eth0";
/// The TUN device each gateway creates (not by netlab): named here so the lab passes it.
pub const TUN_NAME: &str = "cw0";
/// Linux's IFNAMSIZ minus the terminating NUL.
pub const MAX_IFNAME: usize = 15;

/// Cluster addresses are 10.10I.x.x, so at most nine clusters fit the scheme.
const MAX_CLUSTERS: usize = 9;
/// Pods are 10.10I.0.(9+J) inside a /24 that also holds the gateway at .1.
const MAX_PODS: usize = 200;
/// Keeps namespace and work-dir names short and readable.
const MAX_PREFIX: usize = 16;

/// Why a topology was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopologyError {
    /// The prefix must be 1..=16 lowercase letters or digits: no '-', so that `P-` never
    /// matches another lab's prefix during cleanup.
    BadPrefix {
        prefix: String,
    },
    BadClusterCount {
        clusters: usize,
    },
    BadPodCount {
        pods: usize,
    },
}

impl fmt::Display for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadPrefix { prefix } => write!(
                f,
                "lab prefix {prefix:?} must be 1 to {MAX_PREFIX} lowercase letters or digits"
            ),
            Self::BadClusterCount { clusters } => {
                write!(
                    f,
                    "a lab holds 1 to {MAX_CLUSTERS} clusters, not {clusters}"
                )
            }
            Self::BadPodCount { pods } => {
                write!(f, "a lab cluster holds 1 to {MAX_PODS} pods, not {pods}")
            }
        }
    }
}

impl std::error::Error for TopologyError {}

/// How the lab's clusters are addressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Addressing {
    /// Cluster I owns 10.10I.0.0/16: no two clusters overlap.
    #[default]
    Distinct,
    /// Every cluster has kind's defaults, pods 10.244.0.0/16 and services 10.96.0.0/12.
    SameCidrs,
}

/// The lab's shape. Clusters are numbered from 1 (`c1`), pods within a cluster from 1 (`pod1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
    clusters: usize,
    pods_per_cluster: usize,
    addressing: Addressing,
}

impl Topology {
    pub fn new(
        prefix: &str,
        clusters: usize,
        pods_per_cluster: usize,
    ) -> Result<Self, TopologyError> {
        let prefix_ok = !prefix.is_empty()
            && prefix.len() <= MAX_PREFIX
            && prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !prefix_ok {
            return Err(TopologyError::BadPrefix {
                prefix: prefix.to_owned(),
            });
        }
        if !(1..=MAX_CLUSTERS).contains(&clusters) {
            return Err(TopologyError::BadClusterCount { clusters });
        }
        if !(1..=MAX_PODS).contains(&pods_per_cluster) {
            return Err(TopologyError::BadPodCount {
                pods: pods_per_cluster,
            });
        }
        Ok(Self {
            prefix: prefix.to_owned(),
            clusters,
            pods_per_cluster,
            addressing: Addressing::Distinct,
        })
    }

    /// The same shape with other addresses.
    pub fn with_addressing(mut self, addressing: Addressing) -> Self {
        self.addressing = addressing;
        self
    }

    pub fn addressing(&self) -> Addressing {
        self.addressing
    }

    /// The first three octets of the wan /24.
    fn wan(&self) -> [u8; 3] {
        match self.addressing {
            Addressing::Distinct => [10, 100, 0],
            Addressing::SameCidrs => [192, 168, 100],
        }
    }

    /// The first three octets of cluster I's pods /24.
    fn pods_net(&self, cluster: usize) -> [u8; 3] {
        match self.addressing {
            Addressing::Distinct => [10, 100 + cluster as u8, 0],
            Addressing::SameCidrs => [10, 244, 0],
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Cluster numbers, 1-based.
    pub fn clusters(&self) -> std::ops::RangeInclusive<usize> {
        1..=self.clusters
    }

    /// Pod numbers within a cluster, 1-based.
    pub fn pods(&self) -> std::ops::RangeInclusive<usize> {
        1..=self.pods_per_cluster
    }

    /// `c1`, `c2`, ...: the cluster id passed to the gateway and its certificate.
    pub fn cluster_id(&self, cluster: usize) -> String {
        format!("c{cluster}")
    }

    pub fn wan_ns(&self) -> String {
        format!("{}-wan", self.prefix)
    }

    pub fn broker_ns(&self) -> String {
        format!("{}-broker", self.prefix)
    }

    pub fn gw_ns(&self, cluster: usize) -> String {
        format!("{}-c{cluster}-gw", self.prefix)
    }

    pub fn pod_ns(&self, cluster: usize, pod: usize) -> String {
        format!("{}-c{cluster}-pod{pod}", self.prefix)
    }

    /// Every namespace of the lab, wan first (the order they are created in).
    pub fn namespaces(&self) -> Vec<String> {
        let mut all = vec![self.wan_ns(), self.broker_ns()];
        for c in self.clusters() {
            all.push(self.gw_ns(c));
            all.extend(self.pods().map(|p| self.pod_ns(c, p)));
        }
        all
    }

    /// Whether a namespace name belongs to a lab with this prefix (any cluster count).
    pub fn owns_namespace(&self, name: &str) -> bool {
        name.strip_prefix(&self.prefix)
            .is_some_and(|rest| rest.starts_with('-'))
    }

    /// The wan-side end of the broker's veth (inside the wan namespace).
    pub fn wan_port_of_broker(&self) -> &'static str {
        "v-broker"
    }

    /// The wan-side end of a gateway's veth (inside the wan namespace).
    pub fn wan_port_of_gw(&self, cluster: usize) -> String {
        format!("v-c{cluster}")
    }

    /// The gateway-side end of a pod's veth (inside the gateway namespace, on `pods0`).
    pub fn gw_port_of_pod(&self, pod: usize) -> String {
        format!("v-pod{pod}")
    }

    /// Every interface name netlab creates, for checking them against [`MAX_IFNAME`].
    pub fn interface_names(&self) -> Vec<String> {
        let mut names = vec![
            WAN_BRIDGE.to_owned(),
            PODS_BRIDGE.to_owned(),
            UPLINK.to_owned(),
            TUN_NAME.to_owned(),
            self.wan_port_of_broker().to_owned(),
        ];
        names.extend(self.clusters().map(|c| self.wan_port_of_gw(c)));
        names.extend(self.pods().map(|p| self.gw_port_of_pod(p)));
        names
    }

    pub fn broker_addr(&self) -> Ipv4Addr {
        let [a, b, c] = self.wan();
        Ipv4Addr::new(a, b, c, 2)
    }

    /// The broker's QUIC listen address, 10.100.0.2:7443.
    pub fn broker_listen(&self) -> SocketAddr {
        SocketAddrV4::new(self.broker_addr(), BROKER_PORT).into()
    }

    /// A gateway's wan address, 10.100.0.(10+I).
    pub fn gw_wan_addr(&self, cluster: usize) -> Ipv4Addr {
        let [a, b, c] = self.wan();
        Ipv4Addr::new(a, b, c, 10 + cluster as u8)
    }

    /// A gateway's WireGuard listen address, 10.100.0.(10+I):51820.
    pub fn wg_listen(&self, cluster: usize) -> SocketAddr {
        SocketAddrV4::new(self.gw_wan_addr(cluster), WG_PORT).into()
    }

    /// A gateway's address on its pods bridge, 10.10I.0.1: the pods' default gateway and DNS.
    pub fn gw_pod_addr(&self, cluster: usize) -> Ipv4Addr {
        let [a, b, c] = self.pods_net(cluster);
        Ipv4Addr::new(a, b, c, 1)
    }

    /// Where a cluster's gateway serves DNS, 10.10I.0.1:53.
    pub fn dns_listen(&self, cluster: usize) -> SocketAddr {
        SocketAddrV4::new(self.gw_pod_addr(cluster), DNS_PORT).into()
    }

    /// A pod's address, 10.10I.0.(9+J).
    pub fn pod_addr(&self, cluster: usize, pod: usize) -> Ipv4Addr {
        let [a, b, c] = self.pods_net(cluster);
        Ipv4Addr::new(a, b, c, 9 + pod as u8)
    }

    /// The cluster's CIDRs, passed to its gateway as `--cidr`: `10.10I.0.0/16`, or kind's
    /// pods and services ranges.
    pub fn cluster_cidrs(&self, cluster: usize) -> Vec<String> {
        match self.addressing {
            Addressing::Distinct => vec![format!("10.{}.0.0/16", 100 + cluster)],
            Addressing::SameCidrs => vec!["10.244.0.0/16".into(), "10.96.0.0/12".into()],
        }
    }

    /// The `n`th cluster IP of cluster `cluster`: `10.10I.128.n` (inside the cluster's CIDR,
    /// outside its pods' /24), or `10.96.0.n` in kind's services range.
    pub fn cluster_ip(&self, cluster: usize, n: u8) -> Ipv4Addr {
        match self.addressing {
            Addressing::Distinct => Ipv4Addr::new(10, 100 + cluster as u8, 128, n),
            Addressing::SameCidrs => Ipv4Addr::new(10, 96, 0, n),
        }
    }

    /// The `/etc/netns/<ns>/resolv.conf` of a pod: the cluster's gateway is its only
    /// nameserver; short timeouts so a lookup against a not-yet-started DNS fails fast.
    pub fn pod_resolv_conf(&self, cluster: usize) -> String {
        format!(
            "nameserver {}\noptions timeout:1 attempts:2\n",
            self.gw_pod_addr(cluster)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab() -> Topology {
        Topology::new("cw", 3, 2).unwrap()
    }

    #[test]
    fn namespaces_follow_the_brief() {
        assert_eq!(
            lab().namespaces(),
            [
                "cw-wan",
                "cw-broker",
                "cw-c1-gw",
                "cw-c1-pod1",
                "cw-c1-pod2",
                "cw-c2-gw",
                "cw-c2-pod1",
                "cw-c2-pod2",
                "cw-c3-gw",
                "cw-c3-pod1",
                "cw-c3-pod2"
            ]
        );
    }

    #[test]
    fn addresses_follow_the_brief() {
        let t = lab();
        assert_eq!(t.broker_listen().to_string(), "10.100.0.2:7443");
        assert_eq!(t.wg_listen(1).to_string(), "10.100.0.11:51820");
        assert_eq!(t.wg_listen(3).to_string(), "10.100.0.13:51820");
        assert_eq!(t.dns_listen(2).to_string(), "10.102.0.1:53");
        assert_eq!(t.pod_addr(1, 1).to_string(), "10.101.0.10");
        assert_eq!(t.pod_addr(3, 2).to_string(), "10.103.0.11");
        assert_eq!(t.cluster_cidrs(2), ["10.102.0.0/16"]);
        assert_eq!(t.cluster_ip(1, 10).to_string(), "10.101.128.10");
        let same = lab().with_addressing(Addressing::SameCidrs);
        assert_eq!(same.pod_addr(1, 1), same.pod_addr(3, 1));
        assert_eq!(same.pod_addr(2, 1).to_string(), "10.244.0.10");
        assert_eq!(same.cluster_cidrs(3), ["10.244.0.0/16", "10.96.0.0/12"]);
        assert_eq!(same.broker_listen().to_string(), "192.168.100.2:7443");
        assert_eq!(same.cluster_ip(2, 10).to_string(), "10.96.0.10");
        assert_eq!(t.cluster_id(3), "c3");
        assert!(t.pod_resolv_conf(2).starts_with("nameserver 10.102.0.1\n"));
    }

    #[test]
    fn interface_names_fit_ifnamsiz_for_the_largest_lab() {
        let t = Topology::new("abcdefghijklmnop", 9, 200).unwrap();
        for name in t.interface_names() {
            assert!(
                name.len() <= MAX_IFNAME,
                "{name} is longer than {MAX_IFNAME}"
            );
        }
    }

    #[test]
    fn prefixes_with_dashes_or_capitals_are_refused() {
        for bad in ["", "c-w", "CW", "abcdefghijklmnopq"] {
            assert_eq!(
                Topology::new(bad, 3, 2),
                Err(TopologyError::BadPrefix {
                    prefix: bad.to_owned()
                })
            );
        }
        assert_eq!(
            Topology::new("cw", 10, 2),
            Err(TopologyError::BadClusterCount { clusters: 10 })
        );
        assert_eq!(
            Topology::new("cw", 3, 0),
            Err(TopologyError::BadPodCount { pods: 0 })
        );
    }

    #[test]
    fn owns_namespace_matches_only_its_own_prefix() {
        let t = lab();
        assert!(t.owns_namespace("cw-c1-gw"));
        assert!(t.owns_namespace("cw-c7-pod3"));
        assert!(!t.owns_namespace("cwt-c1-gw"));
        assert!(!t.owns_namespace("cw"));
        assert!(!t.owns_namespace("other"));
    }
}
