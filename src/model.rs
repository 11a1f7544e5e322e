//! The domain model: plain data shared by every part of causeway.
//!
//! Owns the identifiers (`ClusterId`, `ServiceKey`), what a cluster tells the clusterset about
//! itself (`ClusterInfo`) and what it exports (`Export`, `PortSpec`, `Endpoint`). No Kubernetes
//! types, no I/O: the file source and the Kubernetes source translate into these, the broker
//! stores them, and `app` translates them into the gateway's and the DNS server's own inputs.
//! `bounds` holds every field's documented bound and the checks the broker applies.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub mod bounds;
pub mod plan;

pub use bounds::Escaped;
pub use plan::Allocation;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} {value:?} is longer than 63 characters")]
    TooLong { what: &'static str, value: String },
    #[error(
        "{what} {value:?} is not a DNS label: use lowercase letters, digits and '-', starting with a letter and ending with a letter or digit"
    )]
    NotDnsLabel { what: &'static str, value: String },
}

/// Checks an RFC 1123 DNS label as Kubernetes does for namespaces and service names
/// (lowercase alphanumerics and '-', at most 63 characters). `leading_letter` adds the
/// RFC 1035 rule that Kubernetes applies to Service names.
pub fn check_dns_label(
    what: &'static str,
    value: &str,
    leading_letter: bool,
) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { what });
    }
    if value.len() > 63 {
        return Err(IdError::TooLong {
            what,
            value: value.to_owned(),
        });
    }
    let bytes = value.as_bytes();
    let ok_char = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
    let first_ok = if leading_letter {
        bytes[0].is_ascii_lowercase()
    } else {
        bytes[0] != b'-'
    };
    let last_ok = bytes[bytes.len() - 1] != b'-';
    if !(bytes.iter().all(ok_char) && first_ok && last_ok) {
        return Err(IdError::NotDnsLabel {
            what,
            value: value.to_owned(),
        });
    }
    Ok(())
}

/// A cluster's name in the clusterset: a DNS label (it appears in DNS names such as
/// `c1.web.shop.svc.global` and in certificates).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClusterId(String);

impl ClusterId {
    pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
        let value = value.into();
        check_dns_label("cluster id", &value, true)?;
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ClusterId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for ClusterId {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<ClusterId> for String {
    fn from(id: ClusterId) -> String {
        id.0
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A service's identity across the clusterset: the same namespace and name in every cluster
/// denote the same service (the MCS API's "namespace sameness").
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl ServiceKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Result<Self, IdError> {
        let (namespace, name) = (namespace.into(), name.into());
        check_dns_label("namespace", &namespace, false)?;
        check_dns_label("service name", &name, true)?;
        Ok(Self { namespace, name })
    }
}

/// Displayed as users type it: `namespace/name`. A key from the wire may be anything until
/// it is checked, so both parts are [`Escaped`]: a newline in a name never starts a line of
/// the log (valid keys display unchanged).
impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", Escaped(&self.namespace), Escaped(&self.name))
    }
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub enum Protocol {
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

/// One port of a service, as in the MCS `ServicePort`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortSpec {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
    /// The port's application protocol (`appProtocol`), e.g. `http` or `kubernetes.io/h2c`.
    pub app_protocol: Option<String>,
}

/// One backend of an exported service in its own cluster.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    pub address: IpAddr,
    /// Only ready endpoints are ever answered.
    pub ready: bool,
    /// The pod's hostname, for headless per-endpoint names.
    pub hostname: Option<String>,
    /// The topology zone the endpoint runs in (`topology.kubernetes.io/zone`), when known.
    pub zone: Option<String>,
}

/// The MCS service type of an export: a ClusterSetIP service is reached through a virtual
/// address, a headless one through its endpoints' addresses.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub enum ServiceKind {
    #[default]
    ClusterSetIp,
    Headless,
}

/// `sessionAffinity` of the exported Service.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub enum SessionAffinity {
    #[default]
    None,
    /// `ClientIP`, with `sessionAffinityConfig.clientIP.timeoutSeconds` when set.
    ClientIp { timeout_seconds: Option<i32> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum IpFamily {
    V4,
    V6,
}

/// The properties of an exported Service that the MCS API carries into its ServiceImport and
/// checks for conflicts between clusters. Defaults describe a plain ClusterSetIP service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct ServiceProps {
    pub kind: ServiceKind,
    pub session_affinity: SessionAffinity,
    pub ip_families: Vec<IpFamily>,
    /// `internalTrafficPolicy` (`Cluster` or `Local`), when set.
    pub internal_traffic_policy: Option<String>,
    /// `trafficDistribution` (e.g. `PreferClose`), when set.
    pub traffic_distribution: Option<String>,
    /// When the export was created (the ServiceExport's creationTimestamp), in Unix seconds.
    /// The MCS conflict rule lets the oldest export win.
    pub exported_at: Option<i64>,
    /// The ServiceExport's `spec.exportedLabels`: put on the ServiceImport (the oldest
    /// export's win).
    pub exported_labels: BTreeMap<String, String>,
    /// The ServiceExport's `spec.exportedAnnotations`, likewise.
    pub exported_annotations: BTreeMap<String, String>,
}

/// What one cluster exports of one service. The exporting cluster is the record's owner: only
/// that cluster may write it (the broker checks this against the cluster's certificate).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Export {
    pub service: ServiceKey,
    /// The service's address(es) in its own cluster (one per IP family), as kube-proxy routes
    /// them. Empty for a headless service, whose endpoints are answered directly.
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<PortSpec>,
    pub endpoints: Vec<Endpoint>,
    /// MCS properties (type, affinity, families, policies, export time).
    pub props: ServiceProps,
}

/// What a cluster tells the clusterset about itself when its gateway registers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub id: ClusterId,
    /// The gateway's public WireGuard UDP endpoint, as other gateways reach it.
    pub wg_endpoint: SocketAddr,
    /// The gateway's WireGuard public key (Curve25519, 32 bytes).
    pub wg_public_key: [u8; 32],
    /// The address ranges of the cluster's pods and services, routed into its tunnel.
    pub cidrs: Vec<IpNet>,
    pub region: Option<String>,
    pub zone: Option<String>,
    /// The global range the broker gave each of `cidrs` (see [`plan`]): other clusters reach
    /// this cluster's addresses only through these. Assigned by the broker; whatever a gateway
    /// puts here in its Hello is ignored.
    pub global: Vec<Allocation>,
}

impl ClusterInfo {
    /// The address through which other clusters reach this cluster's `ip`.
    pub fn global_addr(&self, ip: IpAddr) -> Option<IpAddr> {
        plan::to_global(&self.global, ip)
    }
}

/// Builders shared by the crate's tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    pub fn id(s: &str) -> ClusterId {
        ClusterId::new(s).expect("test cluster ids are DNS labels")
    }

    /// A cluster whose key derives from its name. Its endpoint is on loopback, where the tests'
    /// sessions come from (the broker's address plan requires that); it claims every range the
    /// tests' exports use.
    pub fn cluster(name: &str) -> ClusterInfo {
        ClusterInfo {
            id: id(name),
            wg_endpoint: "127.0.0.1:51820".parse().expect("a socket address"),
            wg_public_key: [name.bytes().last().unwrap_or(0); 32],
            cidrs: ["10.0.0.0/14", "10.101.0.0/16", "10.102.0.0/16"]
                .iter()
                .map(|c| c.parse().expect("a CIDR"))
                .collect(),
            region: None,
            zone: None,
            global: vec![],
        }
    }

    /// The props of a headless export (the fixtures' exports have no cluster IPs).
    fn headless() -> ServiceProps {
        ServiceProps {
            kind: ServiceKind::Headless,
            ..ServiceProps::default()
        }
    }

    /// `shop/<name>` (headless) with one named TCP port 80 and one ready endpoint at `address`.
    pub fn export(name: &str, address: &str) -> Export {
        Export {
            service: ServiceKey::new("shop", name).expect("test service names are DNS labels"),
            cluster_ips: vec![],
            ports: vec![PortSpec {
                name: Some("http".into()),
                port: 80,
                protocol: Protocol::Tcp,
                app_protocol: None,
            }],
            endpoints: vec![Endpoint {
                address: address.parse().expect("an IP address"),
                ready: true,
                hostname: None,
                zone: None,
            }],
            props: headless(),
        }
    }

    /// `shop/web` (headless) with no ports and these endpoints (address, ready).
    pub fn web(endpoints: &[(&str, bool)]) -> Export {
        Export {
            service: ServiceKey::new("shop", "web").expect("a DNS label"),
            cluster_ips: vec![],
            ports: vec![],
            endpoints: endpoints
                .iter()
                .map(|(address, ready)| Endpoint {
                    address: address.parse().expect("an IP address"),
                    ready: *ready,
                    hostname: None,
                    zone: None,
                })
                .collect(),
            props: headless(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_id_accepts_dns_labels_and_rejects_the_rest() {
        assert!(ClusterId::new("c1").is_ok());
        assert!(ClusterId::new("eu-west-1a").is_ok());
        assert_eq!(
            ClusterId::new(""),
            Err(IdError::Empty { what: "cluster id" })
        );
        assert!(matches!(
            ClusterId::new("C1"),
            Err(IdError::NotDnsLabel { .. })
        ));
        assert!(matches!(
            ClusterId::new("1c"),
            Err(IdError::NotDnsLabel { .. })
        ));
        assert!(matches!(
            ClusterId::new("c1-"),
            Err(IdError::NotDnsLabel { .. })
        ));
        assert!(matches!(
            ClusterId::new("a.b"),
            Err(IdError::NotDnsLabel { .. })
        ));
        assert!(matches!(
            ClusterId::new("a".repeat(64)),
            Err(IdError::TooLong { .. })
        ));
    }

    #[test]
    fn service_key_displays_as_namespace_slash_name() {
        let key = ServiceKey::new("shop", "web").unwrap();
        assert_eq!(key.to_string(), "shop/web");
        assert!(ServiceKey::new("shop", "9web").is_err());
        assert!(
            ServiceKey::new("9shop", "web").is_ok(),
            "namespaces may start with a digit"
        );
    }

    #[test]
    fn cluster_id_deserialization_validates() {
        let ok: Result<ClusterId, _> = serde_norway::from_str("c2");
        assert!(ok.is_ok());
        let bad: Result<ClusterId, _> = serde_norway::from_str("Not_OK");
        assert!(bad.is_err());
    }
}
