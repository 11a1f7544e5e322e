//! The admin port's JSON API: the documents `/api/v1/status` and `/api/v1/explain` return,
//! shared by the server (which fills them) and the CLI (`causeway status`, `explain`,
//! `diagnose`, which parse them). Field names are the wire contract: add fields, don't rename.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

/// `GET /api/v1/status`: everything `causeway status` shows and `diagnose` checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// This gateway's cluster id.
    pub cluster: String,
    /// What `/readyz` says, and why.
    pub ready: bool,
    pub ready_reason: String,
    pub broker: BrokerStatus,
    pub dns: DnsStatus,
    /// The TUN device's MTU.
    pub tunnel_mtu: u16,
    /// One entry per WireGuard peer, by cluster id.
    pub peers: Vec<PeerStatus>,
    /// This cluster's exported services (from its source).
    pub exports: Vec<ServiceStatus>,
    /// Services other clusters export, as this cluster answers them.
    pub imports: Vec<ServiceStatus>,
    /// Every cluster in the last synced view, this one included.
    pub clusters: Vec<ClusterStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BrokerStatus {
    /// Connected to a broker (the mutual-TLS handshake passed) and up to date with it.
    pub connected: bool,
    /// The broker of the current connection, or of the last attempt.
    pub address: Option<SocketAddr>,
    /// Every configured broker address.
    pub configured: Vec<SocketAddr>,
    /// The revision of the view this gateway holds (0 before the first sync).
    pub revision: u64,
    /// Seconds since the view last changed; `None` before the first sync.
    pub last_update_age_seconds: Option<f64>,
    /// Why the last connection attempt failed, while not connected.
    pub last_error: Option<String>,
    /// The broker's last refusal of this gateway's Hello or Publish, with its reason (an
    /// address claim the plan forbids, a limit); until a later Hello is accepted.
    #[serde(default)]
    pub rejected: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DnsStatus {
    /// The DNS listener (UDP and TCP).
    pub listen: SocketAddr,
    pub zone: String,
    pub clusterset_zone: Option<String>,
    /// Queries answered since start.
    pub queries: u64,
}

/// A peer's tunnel state as its in-tunnel probes see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerState {
    /// Not probed yet.
    Unknown,
    Up,
    /// Up, but losing probes or slow.
    Degraded,
    Down,
}

impl PeerState {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::Unknown => "unknown",
            PeerState::Up => "up",
            PeerState::Degraded => "degraded",
            PeerState::Down => "down",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// The peer's cluster id; `None` for a peer no cluster of the view claims (transient).
    pub cluster: Option<String>,
    /// Where its datagrams go now.
    pub endpoint: SocketAddr,
    pub state: PeerState,
    /// Smoothed probe round-trip time, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// Seconds since the last completed WireGuard handshake; `None` before the first.
    pub last_handshake_seconds: Option<f64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Packets decrypted from the peer, and packets sent to it (keepalives not counted).
    pub rx_packets: u64,
    pub tx_packets: u64,
    /// Lost probes among the last `probe_window`.
    pub probe_lost: u8,
    pub probe_window: u8,
    /// The MTU of the local link datagrams to this peer leave by, when the kernel says.
    pub link_mtu: Option<u16>,
}

/// How well a service is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceHealth {
    /// Every endpoint ready (and, for an import, every exporting cluster reachable).
    Healthy,
    /// Answered, but some endpoints or clusters are out.
    Degraded,
    /// Nothing answered.
    Down,
}

impl ServiceHealth {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceHealth::Healthy => "healthy",
            ServiceHealth::Degraded => "degraded",
            ServiceHealth::Down => "down",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub namespace: String,
    pub name: String,
    /// The exporting clusters.
    pub clusters: Vec<String>,
    pub endpoints: usize,
    pub ready_endpoints: usize,
    /// Addresses this cluster's DNS answers for the service (before the answer cap).
    pub answered: usize,
    pub health: ServiceHealth,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub id: String,
    pub cidrs: Vec<String>,
    /// The address plan: each claimed local range and the global range through which other
    /// clusters reach it.
    #[serde(default)]
    pub plan: Vec<AddressMapping>,
    pub region: Option<String>,
    pub zone: Option<String>,
    /// Its lease at the broker ran out: its exports are withheld until it reconnects.
    pub withheld: bool,
}

/// One claimed range of a cluster and its global range (`model::plan::Allocation`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressMapping {
    pub local: String,
    pub global: String,
}

/// `GET /api/v1/explain?name=NAME&type=A`: why the answer for a name is what it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    /// The name asked, as given.
    pub name: String,
    pub namespace: String,
    pub service: String,
    /// `A`, `AAAA` or `SRV`.
    pub qtype: String,
    /// `headless` (endpoints answered) or `clusterset-ip` (each cluster's service IPs).
    pub kind: String,
    /// What this cluster's DNS answered just now (a real query to its listener).
    pub answer: DnsAnswer,
    /// Every candidate address: answered ones first, best first.
    pub candidates: Vec<Candidate>,
    /// Clusters whose export is of the other kind (headless vs cluster IP): left out.
    pub conflicting_clusters: Vec<String>,
    /// The revision of the synced view the ranking comes from, and its age.
    pub revision: u64,
    pub data_age_seconds: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DnsAnswer {
    pub server: SocketAddr,
    /// `NOERROR`, `NXDOMAIN`, ...; `None` when the query got no reply.
    pub rcode: Option<String>,
    /// The answer records' data (`10.101.0.10`, `0 1 80 c1.web.shop.svc.global.`).
    pub records: Vec<String>,
    /// Why there is no rcode (timeout, socket error).
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub cluster: String,
    pub address: IpAddr,
    pub hostname: Option<String>,
    /// `answered`, `excluded`, or `failed-open` (unhealthy but answered: nothing healthy left).
    pub verdict: String,
    /// Why excluded: `not-ready` or `unreachable`; `None` when answered healthy.
    pub reason: Option<String>,
    /// `own`, `zone`, `region` or `remote`.
    pub tier: String,
    /// The measured RTT to a remote cluster, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// The preference group it is answered in (0 = best); `None` when excluded.
    pub group: Option<usize>,
    /// One sentence for a human.
    pub why: String,
}

/// An error document (any non-2xx answer of the API).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}
