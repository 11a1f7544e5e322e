//! `causeway status`: the status document of a gateway ([`build`], pure, called by the admin
//! server with its view and live counters) and its rendering as tables ([`render`]) for the
//! CLI, which fetches it from `/api/v1/status`. Also owns what that document and `explain`
//! are computed from, the gateway loop's [`GatewayView`] and [`GatewayInfo`], and the admin
//! API's JSON documents themselves (`api`).

pub mod api;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Instant;

use crate::answers::{exports_by_service, localities, rank_service};
use crate::model::{ClusterId, Export};
use crate::select::Health;
use crate::select::Verdict;
use crate::status::api::{
    AddressMapping, BrokerStatus, ClusterStatus, DnsStatus, PeerState, PeerStatus, ServiceHealth,
    ServiceStatus, Status,
};
use crate::sync::proto::SyncState;

/// What the gateway loop knows, published to the admin server on every change.
#[derive(Debug, Clone)]
pub struct GatewayView {
    pub cluster: ClusterId,
    /// This cluster's exports, from its source.
    pub local: Vec<Export>,
    /// The broker link and the last synced view.
    pub sync: SyncState,
    /// What this gateway's tunnel probes say of the other clusters.
    pub health: Health,
    /// When the synced view last changed (its revision moved); `None` before the first sync.
    pub last_update: Option<Instant>,
}

impl GatewayView {
    /// Before anything is known.
    pub fn new(cluster: ClusterId) -> Self {
        Self {
            cluster,
            local: Vec::new(),
            sync: SyncState::default(),
            health: Health::default(),
            last_update: None,
        }
    }

    /// Whether a full view from the broker has been loaded in this process (it is kept, and
    /// served, when the broker goes away later).
    pub fn synced(&self) -> bool {
        self.last_update.is_some()
    }
}

/// The gateway's fixed facts, for the status document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayInfo {
    pub brokers: Vec<SocketAddr>,
    /// Where DNS listens (the bound address).
    pub dns_listen: SocketAddr,
    pub dns_zone: String,
    pub clusterset_zone: Option<String>,
    pub tunnel_mtu: u16,
}

/// What the admin server measured for one request, beside the view.
#[derive(Debug, Clone, Default)]
pub struct Live {
    pub peers: Vec<causeway_gateway::PeerStats>,
    /// The kernel's MTU towards each peer endpoint (see `admin::link_mtu`).
    pub link_mtus: BTreeMap<SocketAddr, u16>,
    pub dns_queries: u64,
    /// The verdict and reason of `admin::readiness`.
    pub ready: (bool, String),
}

/// The status document of the gateway with `info` and `view`, at `now`.
pub fn build(info: &GatewayInfo, view: &GatewayView, live: Live, now: Instant) -> Status {
    let me = &view.cluster;
    let clusterset = &view.sync.view;
    let by_key: BTreeMap<[u8; 32], &crate::model::ClusterInfo> = clusterset
        .clusters
        .values()
        .map(|c| (c.wg_public_key, c))
        .collect();
    let mut peers: Vec<PeerStatus> = live
        .peers
        .iter()
        .map(|p| PeerStatus {
            cluster: by_key.get(&p.public_key).map(|c| c.id.to_string()),
            endpoint: p.endpoint,
            state: match p.health.state {
                causeway_gateway::HealthState::Unknown => PeerState::Unknown,
                causeway_gateway::HealthState::Up => PeerState::Up,
                causeway_gateway::HealthState::Degraded => PeerState::Degraded,
                causeway_gateway::HealthState::Down => PeerState::Down,
            },
            rtt_ms: p.health.rtt.map(|r| r.as_secs_f64() * 1e3),
            last_handshake_seconds: p.last_handshake.map(|d| d.as_secs_f64()),
            rx_bytes: p.rx_bytes,
            tx_bytes: p.tx_bytes,
            rx_packets: p.rx_packets,
            tx_packets: p.tx_packets,
            probe_lost: p.health.lost,
            probe_window: p.health.window,
            link_mtu: live.link_mtus.get(&p.endpoint).copied(),
        })
        .collect();
    peers.sort_by(|a, b| (&a.cluster, a.endpoint).cmp(&(&b.cluster, b.endpoint)));

    let places = localities(clusterset);
    let mut exports = Vec::new();
    let mut imports = Vec::new();
    for (service, offers) in exports_by_service(me, &view.local, clusterset) {
        let ranked = rank_service(me, &places, &view.health, &offers);
        let answered = ranked.selection.addresses().len();
        let own: Vec<_> = offers.iter().filter(|(c, _)| *c == me).collect();
        let remote: Vec<_> = offers.iter().filter(|(c, _)| *c != me).collect();
        let count = |list: &[&(&crate::model::ClusterId, &crate::model::Export)]| {
            let endpoints: usize = list.iter().map(|(_, e)| e.endpoints.len()).sum();
            let ready: usize = list
                .iter()
                .map(|(_, e)| e.endpoints.iter().filter(|x| x.ready).count())
                .sum();
            (endpoints, ready)
        };
        if !own.is_empty() {
            let (endpoints, ready) = count(&own);
            exports.push(ServiceStatus {
                namespace: service.namespace.clone(),
                name: service.name.clone(),
                clusters: vec![me.to_string()],
                endpoints,
                ready_endpoints: ready,
                answered,
                health: if ready == 0 {
                    ServiceHealth::Down
                } else if ready < endpoints {
                    ServiceHealth::Degraded
                } else {
                    ServiceHealth::Healthy
                },
            });
        }
        if !remote.is_empty() {
            let (endpoints, ready) = count(&remote);
            let all_in = ranked
                .selection
                .decisions
                .iter()
                .all(|d| d.verdict == Verdict::Answered);
            imports.push(ServiceStatus {
                namespace: service.namespace.clone(),
                name: service.name.clone(),
                clusters: remote.iter().map(|(c, _)| c.to_string()).collect(),
                endpoints,
                ready_endpoints: ready,
                answered,
                health: if answered == 0 {
                    ServiceHealth::Down
                } else if all_in && ranked.other_kind.is_empty() {
                    ServiceHealth::Healthy
                } else {
                    ServiceHealth::Degraded
                },
            });
        }
    }

    Status {
        cluster: me.to_string(),
        ready: live.ready.0,
        ready_reason: live.ready.1,
        broker: BrokerStatus {
            connected: view.sync.connected,
            address: view.sync.broker,
            configured: info.brokers.clone(),
            revision: clusterset.revision,
            last_update_age_seconds: view
                .last_update
                .map(|t| now.saturating_duration_since(t).as_secs_f64()),
            last_error: view.sync.last_error.clone(),
            rejected: view.sync.rejected.clone(),
        },
        dns: DnsStatus {
            listen: info.dns_listen,
            zone: info.dns_zone.clone(),
            clusterset_zone: info.clusterset_zone.clone(),
            queries: live.dns_queries,
        },
        tunnel_mtu: info.tunnel_mtu,
        peers,
        exports,
        imports,
        clusters: clusterset
            .clusters
            .values()
            .map(|c| ClusterStatus {
                id: c.id.to_string(),
                cidrs: c.cidrs.iter().map(ToString::to_string).collect(),
                plan: c
                    .global
                    .iter()
                    .map(|a| AddressMapping {
                        local: a.local.to_string(),
                        global: a.global.to_string(),
                    })
                    .collect(),
                region: c.region.clone(),
                zone: c.zone.clone(),
                withheld: clusterset.withheld.contains(&c.id),
            })
            .collect(),
    }
}

/// The status for a terminal: a header, then the connections, exports, imports tables. Every
/// cell is one word (`-` for nothing), so the tables split on whitespace.
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    let ready = if s.ready { "ready" } else { "NOT READY" };
    let _ = writeln!(out, "cluster {}: {ready} ({})", s.cluster, s.ready_reason);
    let b = &s.broker;
    let broker = b.address.map_or("-".to_owned(), |a| a.to_string());
    let age = b
        .last_update_age_seconds
        .map_or("never".to_owned(), |a| format!("{a:.1}s ago"));
    if b.connected {
        let _ = writeln!(
            out,
            "broker {broker}: connected, revision {}, last update {age}",
            b.revision
        );
    } else {
        let _ = writeln!(
            out,
            "broker {broker}: DISCONNECTED ({}), serving revision {}, last update {age}",
            b.last_error.as_deref().unwrap_or("connecting"),
            b.revision
        );
    }
    if let Some(reason) = &b.rejected {
        let _ = writeln!(out, "broker REFUSED this gateway: {reason}");
    }
    let _ = writeln!(
        out,
        "dns {} ({}), {} queries; tunnel mtu {}",
        s.dns.listen, s.dns.zone, s.dns.queries, s.tunnel_mtu
    );

    // Local ↔ global for every cluster: how this gateway reaches each one's addresses.
    let _ = writeln!(out, "\nADDRESS PLAN");
    let rows: Vec<Vec<String>> = s
        .clusters
        .iter()
        .flat_map(|c| {
            let me = c.id == s.cluster;
            c.plan.iter().map(move |m| {
                vec![
                    c.id.clone(),
                    m.local.clone(),
                    m.global.clone(),
                    if me { "own" } else { "remote" }.to_owned(),
                ]
            })
        })
        .collect();
    out.push_str(&table(&["CLUSTER", "LOCAL", "GLOBAL", "USE"], &rows));

    let _ = writeln!(out, "\nCONNECTIONS");
    let rows: Vec<Vec<String>> = s
        .peers
        .iter()
        .map(|p| {
            vec![
                p.cluster.clone().unwrap_or_else(|| "?".into()),
                p.endpoint.to_string(),
                p.state.as_str().to_owned(),
                p.rtt_ms.map_or("-".into(), |ms| format!("{ms:.1}ms")),
                p.last_handshake_seconds
                    .map_or("never".into(), |s| format!("{s:.0}s")),
                p.rx_bytes.to_string(),
                p.tx_bytes.to_string(),
                p.rx_packets.to_string(),
                p.tx_packets.to_string(),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "PEER",
            "ENDPOINT",
            "STATE",
            "RTT",
            "HANDSHAKE",
            "RX_BYTES",
            "TX_BYTES",
            "RX_PKTS",
            "TX_PKTS",
        ],
        &rows,
    ));
    for (title, services) in [("EXPORTS", &s.exports), ("IMPORTS", &s.imports)] {
        let _ = writeln!(out, "\n{title}");
        let rows: Vec<Vec<String>> = services
            .iter()
            .map(|x| {
                vec![
                    format!("{}/{}", x.namespace, x.name),
                    x.clusters.join(","),
                    x.endpoints.to_string(),
                    x.ready_endpoints.to_string(),
                    x.answered.to_string(),
                    x.health.as_str().to_owned(),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "SERVICE",
                "CLUSTERS",
                "ENDPOINTS",
                "READY",
                "ANSWERED",
                "HEALTH",
            ],
            &rows,
        ));
    }
    out
}

/// A left-aligned table: columns two spaces apart, the last one unpadded.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let last = row.len().saturating_sub(1);
        for (i, cell) in row.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                let pad = widths.get(i).copied().unwrap_or(0);
                let _ = write!(out, "{cell:<pad$}  ");
            }
        }
        out.push('\n');
    }
    out
}
