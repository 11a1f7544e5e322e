//! What this gateway answers, from the model: the DNS zone's records (every service's
//! endpoints ranked for this cluster, see `select`) and the data plane's tunnel peers (every
//! other registered cluster), from this cluster's exports, the broker's view of the clusterset
//! and the tunnels' health.
//!
//! Pure: no I/O, no clock. `app::run_gateway` is the shell that feeds it and applies what
//! comes out; `explain`, `status` and `changes` read the same ranking ([`rank_service`]), so
//! what they report is what DNS answers.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use tracing::debug;

use crate::model::{
    ClusterId, Endpoint, Export, PortSpec, Protocol, ServiceKey, ServiceKind, check_dns_label,
};
use crate::select::{Health, Locality, select};
use crate::sync::proto::ClusterSetView;

/// This cluster's own address translation: each of its claimed ranges and the global range the
/// broker gave it (`model::plan`). The data plane rewrites sources leaving through the tunnel
/// to global addresses and destinations arriving to local ones. Empty until the broker has
/// registered us (our packets then carry local sources, which peers drop as spoofed).
pub fn own_translation(me: &ClusterId, view: &ClusterSetView) -> Vec<causeway_gateway::Mapping> {
    view.clusters
        .get(me)
        .map(|c| {
            c.global
                .iter()
                .map(|a| causeway_gateway::Mapping {
                    local: a.local,
                    global: a.global,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The WireGuard peers this gateway should have: every other registered cluster, reached
/// through its global ranges (`model::plan`), never its local ones, which may be anybody's.
///
/// A range that holds a `protected` address (the brokers', any gateway's WireGuard endpoint,
/// our own) is never routed into a tunnel, whatever the broker says: it would cut this gateway
/// off from the broker or its peers. The broker refuses such claims; this is the second lock.
pub fn desired_peers(
    me: &ClusterId,
    view: &ClusterSetView,
    protected: &[IpAddr],
) -> Vec<causeway_gateway::PeerSpec> {
    let endpoints: Vec<IpAddr> = view.clusters.values().map(|c| c.wg_endpoint.ip()).collect();
    let safe = |net: &ipnet::IpNet| {
        !protected
            .iter()
            .chain(&endpoints)
            .any(|a| net.contains(&a.to_canonical()))
    };
    view.clusters
        .values()
        .filter(|c| &c.id != me)
        .map(|c| causeway_gateway::PeerSpec {
            public_key: c.wg_public_key,
            endpoint: c.wg_endpoint,
            allowed_ips: c.global.iter().map(|a| a.global).filter(safe).collect(),
        })
        .collect()
}

/// The services the DNS zones answer, each with its endpoints ranked for this cluster.
///
/// This cluster's own exports come from its source (so they resolve even before the broker has
/// echoed them back, and while it is away); every other cluster's from the broker's view.
/// `health` says which clusters are reachable and how far (see `select`).
///
/// A service's kind and named ports follow the MCS conflict rule, the one its ServiceImport
/// follows ([`crate::conflict::resolve`], KEP-1645): it is ClusterSetIP or headless as its
/// oldest export says, and its ports are the union of every export's, oldest first. Exports of
/// the other kind are left out, since one name cannot be both. For a ClusterSetIP service each
/// cluster answers with its cluster IPs, healthy while that cluster has a ready endpoint; for
/// a headless one, with the ready endpoints themselves. An endpoint
/// without a usable hostname gets its address with `.`/`:` replaced by `-` as its `H` label,
/// as the MCS conformance suite expects; one that still is no label gets no `H` name.
pub fn dns_services(
    me: &ClusterId,
    local: &[Export],
    view: &ClusterSetView,
    health: &Health,
) -> Vec<causeway_dns::ServiceRecords> {
    let localities = localities(view);
    exports_by_service(me, local, view)
        .into_iter()
        .map(|(service, exports)| dns_service(me, &localities, health, service, &exports))
        .collect()
}

/// Every service's exports with their clusters, as [`dns_services`] sees them: this cluster's
/// from its source first, then every other cluster's from the broker's view, by cluster id.
pub fn exports_by_service<'a>(
    me: &'a ClusterId,
    local: &'a [Export],
    view: &'a ClusterSetView,
) -> BTreeMap<&'a ServiceKey, Vec<(&'a ClusterId, &'a Export)>> {
    let mut by_service: BTreeMap<&ServiceKey, Vec<(&ClusterId, &Export)>> = BTreeMap::new();
    for export in local {
        by_service
            .entry(&export.service)
            .or_default()
            .push((me, export));
    }
    for ((cluster, service), export) in &view.exports {
        if cluster != me {
            by_service
                .entry(service)
                .or_default()
                .push((cluster, export));
        }
    }
    by_service
}

/// Where every registered cluster sits, for `select`.
pub fn localities(view: &ClusterSetView) -> BTreeMap<ClusterId, Locality> {
    view.clusters
        .values()
        .map(|c| {
            (
                c.id.clone(),
                Locality {
                    region: c.region.clone(),
                    zone: c.zone.clone(),
                },
            )
        })
        .collect()
}

/// One service's ranking as its DNS answers are built from it (see [`dns_services`]).
#[derive(Debug, Clone)]
pub struct RankedService {
    /// Headless (endpoints answered) rather than ClusterSetIP (cluster IPs answered): the
    /// oldest export's kind, as in the service's ServiceImport.
    pub headless: bool,
    /// The clusters whose export is of the other kind, left out (KEP-1645 `TypeConflict`).
    pub other_kind: Vec<ClusterId>,
    /// The service's ports as its ServiceImport lists them: the union of every export's,
    /// oldest export first (KEP-1645).
    pub ports: Vec<PortSpec>,
    /// Every candidate address with its verdict and rank.
    pub selection: crate::select::Selection,
}

/// Ranks one service's exports (each with its cluster, in any order) as cluster `me` answers
/// them: the rule [`dns_services`] applies, exposed for `explain`, `status` and `changes`.
pub fn rank_service(
    me: &ClusterId,
    localities: &BTreeMap<ClusterId, Locality>,
    health: &Health,
    exports: &[(&ClusterId, &Export)],
) -> RankedService {
    let (kind, ports) = match crate::conflict::resolve(exports.iter().copied()) {
        Ok(resolution) => (
            resolution.import.kind,
            resolution
                .import
                .ports
                .into_iter()
                .map(|m| m.port)
                .collect(),
        ),
        // Only a caller's bug gets here (`exports_by_service` gives one export per cluster,
        // all of one service): answer by the first export rather than not at all.
        Err(e) => {
            debug!(error = %e, "Exports not resolvable; the first one decides");
            exports
                .first()
                .map_or((ServiceKind::Headless, Vec::new()), |(_, e)| {
                    (e.props.kind, e.ports.clone())
                })
        }
    };
    let headless = kind == ServiceKind::Headless;
    let (same_kind, other_kind): (Vec<(&ClusterId, &Export)>, Vec<_>) =
        exports.iter().partition(|(_, e)| e.props.kind == kind);
    let offered = offered(headless, &same_kind);
    let selection = select(
        me,
        localities,
        health,
        offered.iter().map(|(c, e)| (*c, e.as_slice())),
    );
    let mut other_kind: Vec<ClusterId> = other_kind.iter().map(|(c, _)| (*c).clone()).collect();
    other_kind.sort();
    RankedService {
        headless,
        other_kind,
        ports,
        selection,
    }
}

/// What each cluster offers: its endpoints (headless), or its cluster IPs, ready while any
/// endpoint behind them is.
fn offered<'a>(
    headless: bool,
    same_kind: &[(&'a ClusterId, &Export)],
) -> Vec<(&'a ClusterId, Vec<Endpoint>)> {
    same_kind
        .iter()
        .map(|(cluster, export)| {
            let endpoints = if headless {
                export
                    .endpoints
                    .iter()
                    .map(|e| Endpoint {
                        hostname: Some(host_label(e)).filter(|h| !h.is_empty()),
                        ..e.clone()
                    })
                    .collect()
            } else {
                let ready = export.endpoints.iter().any(|e| e.ready);
                export
                    .cluster_ips
                    .iter()
                    .map(|ip| Endpoint {
                        address: *ip,
                        ready,
                        hostname: None,
                        zone: None,
                    })
                    .collect()
            };
            (*cluster, endpoints)
        })
        .collect()
}

fn dns_service(
    me: &ClusterId,
    localities: &BTreeMap<ClusterId, Locality>,
    health: &Health,
    service: &ServiceKey,
    exports: &[(&ClusterId, &Export)],
) -> causeway_dns::ServiceRecords {
    let RankedService {
        headless,
        ports,
        selection,
        ..
    } = rank_service(me, localities, health, exports);
    let clusters = selection
        .clusters()
        .into_iter()
        .map(|c| causeway_dns::ClusterRecords {
            cluster: c.cluster.to_string(),
            priority: u16::try_from(c.group).unwrap_or(u16::MAX),
            addresses: c.addresses,
            hosts: c
                .hosts
                .into_iter()
                .map(|(hostname, address)| causeway_dns::HostRecord { hostname, address })
                .collect(),
        })
        .collect();
    // Only named ports whose name is a DNS label get SRV records. The union already holds
    // each name once (`conflict::resolve`).
    let ports: Vec<causeway_dns::NamedPort> = ports
        .into_iter()
        .filter_map(|port| {
            let name = port.name?;
            check_dns_label("port name", &name, false).ok()?;
            let protocol = match port.protocol {
                Protocol::Tcp => causeway_dns::PortProtocol::Tcp,
                Protocol::Udp => causeway_dns::PortProtocol::Udp,
                Protocol::Sctp => causeway_dns::PortProtocol::Sctp,
            };
            Some(causeway_dns::NamedPort {
                name,
                port: port.port,
                protocol,
            })
        })
        .collect();
    causeway_dns::ServiceRecords {
        namespace: service.namespace.clone(),
        name: service.name.clone(),
        kind: if headless {
            causeway_dns::ServiceKind::Headless
        } else {
            // No clusterset IP is allocated yet: the MCS zone answers the ranked cluster IPs.
            causeway_dns::ServiceKind::ClusterSetIp {
                clusterset_ips: Vec::new(),
            }
        },
        tiers: selection.tiers(),
        clusters,
        ports,
    }
}

/// Puts each ClusterSetIP service's allocated clusterset IPs (from the ServiceImports of the
/// Kubernetes source) into its DNS records, so that `S.N.svc.clusterset.local` answers them
/// (MCS DNS spec; conformance check 22). Services without one keep the ranked cluster IPs.
pub fn with_clusterset_ips(
    services: &mut [causeway_dns::ServiceRecords],
    ips: &BTreeMap<ServiceKey, Vec<IpAddr>>,
) {
    for service in services {
        let key = ServiceKey {
            namespace: service.namespace.clone(),
            name: service.name.clone(),
        };
        if let causeway_dns::ServiceKind::ClusterSetIp { clusterset_ips } = &mut service.kind {
            clusterset_ips.clone_from(ips.get(&key).unwrap_or(&Vec::new()));
        }
    }
}

/// An endpoint's `H` label: its hostname when that is a DNS label, else its address with
/// `.`/`:` as `-` (the MCS conformance suite's fallback); empty when neither is a label.
fn host_label(endpoint: &Endpoint) -> String {
    if let Some(hostname) = &endpoint.hostname
        && check_dns_label("hostname", hostname, false).is_ok()
    {
        return hostname.clone();
    }
    let fallback = endpoint.address.to_string().replace(['.', ':'], "-");
    if check_dns_label("hostname", &fallback, false).is_ok() {
        fallback
    } else {
        String::new()
    }
}

/// What this gateway's own tunnel probes say of the other clusters, for `select`.
///
/// A cluster whose gateway the probes report `Down` is unreachable: its endpoints leave this
/// cluster's answers at once, without waiting for the broker. A peer not probed yet (just
/// added, `Unknown`) counts as reachable, so that a new cluster is answered at once; if it
/// cannot be reached it goes `Down` within the prober's down time (under 1 s by default).
/// Remote clusters are ranked by the probes' round-trip time.
pub fn health_view(
    me: &ClusterId,
    view: &ClusterSetView,
    peers: &BTreeMap<[u8; 32], causeway_gateway::PeerHealth>,
) -> Health {
    let mut reachable = BTreeSet::from([me.clone()]);
    let mut rtt = BTreeMap::new();
    for cluster in view.clusters.values().filter(|c| &c.id != me) {
        let health = peers.get(&cluster.wg_public_key);
        if health.is_none_or(|h| h.state != causeway_gateway::HealthState::Down) {
            reachable.insert(cluster.id.clone());
        }
        if let Some(r) = health.and_then(|h| h.rtt) {
            rtt.insert(cluster.id.clone(), r);
        }
    }
    Health {
        reachable: Some(reachable),
        rtt,
        ..Health::default()
    }
}

#[cfg(test)]
mod tests;
