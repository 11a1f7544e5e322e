//! The MCS conflict rules (KEP-1645, "Constraints and Conflict Resolution"): given every
//! cluster's export of one service, the merged view its ServiceImport shows and the conflicts
//! its ServiceExports report.
//!
//! Pure and model-level: no Kubernetes types. The Kubernetes controller turns a [`Resolution`]
//! into a ServiceImport spec and a `Conflict` condition ([`Resolution::reason`],
//! [`Resolution::message`]); the broker and DNS may use the same view.
//!
//! The rules:
//! - **The oldest export wins** every property: the one with the smallest
//!   `props.exported_at` (the ServiceExport's creationTimestamp). Ties, which the API server's
//!   one-second timestamps make possible, go to the smallest cluster id, so that every cluster
//!   computes the same winner. An export without a timestamp counts as newer than any with one.
//! - **Ports are a union**, built oldest export first: a port whose name is already taken by a
//!   different port, or whose (protocol, port) is already taken under another name, is left out
//!   (the older one stays), so the union has no duplicate names and no duplicate
//!   (protocol, port) pairs. An export whose port set differs from the oldest one's raises a
//!   `PortConflict`, also when every port fits in the union (the conformance suite expects
//!   `Conflict=True` when one cluster merely adds a port). Each merged port lists the clusters
//!   that expose it, so traffic to it goes only there.
//! - **Every other property** (type, session affinity, its timeout, internal traffic policy,
//!   traffic distribution, exported labels and annotations) is the oldest export's, and any
//!   export that differs raises that property's conflict. Kubernetes defaults are applied
//!   before comparing: no `internalTrafficPolicy` means `Cluster`, a `ClientIP` affinity
//!   without a timeout means 10800 s.
//! - **IP families** are the oldest export's; `IPFamilyConflict` is raised when some export
//!   lacks one of them, since traffic of that family could then reach only some backends
//!   (KEP-1645). An export with no families listed (the file source) is not compared.
//! - A conflict is reported on **every** export of the service, with all reasons combined
//!   (`PortConflict,TypeConflict`), not only on the disagreeing ones: the API recommends it
//!   and the conformance suite checks both clusters.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::model::{
    ClusterId, Export, IpFamily, PortSpec, Protocol, ServiceKey, ServiceKind, SessionAffinity,
};

/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_CLIENT_IP_TIMEOUT_SECONDS: i32 = 10_800;

/// The kinds of conflict the MCS API names, in the order their reasons are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConflictKind {
    Port,
    Type,
    SessionAffinity,
    SessionAffinityConfig,
    Annotations,
    Labels,
    InternalTrafficPolicy,
    TrafficDistribution,
    IpFamily,
}

impl ConflictKind {
    /// Every kind, in combination order.
    pub const ALL: [ConflictKind; 9] = [
        ConflictKind::Port,
        ConflictKind::Type,
        ConflictKind::SessionAffinity,
        ConflictKind::SessionAffinityConfig,
        ConflictKind::Annotations,
        ConflictKind::Labels,
        ConflictKind::InternalTrafficPolicy,
        ConflictKind::TrafficDistribution,
        ConflictKind::IpFamily,
    ];

    /// The `Conflict=True` condition reason the MCS API defines for this kind.
    pub const fn reason(self) -> &'static str {
        match self {
            ConflictKind::Port => "PortConflict",
            ConflictKind::Type => "TypeConflict",
            ConflictKind::SessionAffinity => "SessionAffinityConflict",
            ConflictKind::SessionAffinityConfig => "SessionAffinityConfigConflict",
            ConflictKind::Annotations => "AnnotationsConflict",
            ConflictKind::Labels => "LabelsConflict",
            ConflictKind::InternalTrafficPolicy => "InternalTrafficPolicyConflict",
            ConflictKind::TrafficDistribution => "TrafficDistributionConflict",
            ConflictKind::IpFamily => "IPFamilyConflict",
        }
    }

    /// What the property is called in messages.
    fn property(self) -> &'static str {
        match self {
            ConflictKind::Port => "ports",
            ConflictKind::Type => "type",
            ConflictKind::SessionAffinity => "sessionAffinity",
            ConflictKind::SessionAffinityConfig => "sessionAffinityConfig",
            ConflictKind::Annotations => "exported annotations",
            ConflictKind::Labels => "exported labels",
            ConflictKind::InternalTrafficPolicy => "internalTrafficPolicy",
            ConflictKind::TrafficDistribution => "trafficDistribution",
            ConflictKind::IpFamily => "ipFamilies",
        }
    }
}

impl fmt::Display for ConflictKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

/// One disagreement between the exports of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub kind: ConflictKind,
    /// The clusters whose export differs from the winner's (sorted).
    pub disagreeing: Vec<ClusterId>,
    /// In the KEP's style: `Conflicting type. Using "ClusterSetIP" from oldest service export
    /// in "c1". 1/3 clusters disagree.`
    pub message: String,
}

/// A port of the merged import, and the clusters that expose exactly this port (traffic to it
/// should go only there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergedPort {
    pub port: PortSpec,
    pub clusters: BTreeSet<ClusterId>,
}

/// What the service's ServiceImport shows: the winner's properties and the union of the ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportView {
    pub service: ServiceKey,
    pub kind: ServiceKind,
    pub session_affinity: SessionAffinity,
    pub ip_families: Vec<IpFamily>,
    pub internal_traffic_policy: Option<String>,
    pub traffic_distribution: Option<String>,
    pub exported_labels: BTreeMap<String, String>,
    pub exported_annotations: BTreeMap<String, String>,
    /// The union, the oldest export's ports first, each in its export's order.
    pub ports: Vec<MergedPort>,
    /// Every exporting cluster (sorted): the ServiceImport's `status.clusters`.
    pub clusters: Vec<ClusterId>,
}

/// The outcome for one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// The cluster whose export is the oldest.
    pub winner: ClusterId,
    pub import: ImportView,
    /// At most one per kind, in [`ConflictKind::ALL`] order.
    pub conflicts: Vec<Conflict>,
}

impl Resolution {
    /// Whether the `Conflict` condition is `True` on every export of the service.
    pub fn is_conflicted(&self) -> bool {
        !self.conflicts.is_empty()
    }

    /// The `Conflict` condition's reason for every export of the service: the kinds' reasons
    /// joined with commas (`PortConflict,TypeConflict`), or `NoConflicts`.
    pub fn reason(&self) -> String {
        if self.conflicts.is_empty() {
            return "NoConflicts".to_owned();
        }
        let reasons: Vec<&str> = self.conflicts.iter().map(|c| c.kind.reason()).collect();
        reasons.join(",")
    }

    /// The `Conflict` condition's message: every conflict's message, or a note that all
    /// exports agree.
    pub fn message(&self) -> String {
        if self.conflicts.is_empty() {
            return format!("All {} service exports agree.", self.import.clusters.len());
        }
        let messages: Vec<&str> = self.conflicts.iter().map(|c| c.message.as_str()).collect();
        messages.join(" ")
    }

    /// The conflicts that concern one property.
    pub fn conflict(&self, kind: ConflictKind) -> Option<&Conflict> {
        self.conflicts.iter().find(|c| c.kind == kind)
    }
}

/// Why a set of exports cannot be resolved: a caller bug, reported rather than panicking.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("no exports to resolve")]
    NoExports,
    #[error("exports of different services: {first} and {other}")]
    MixedServices {
        first: ServiceKey,
        other: ServiceKey,
    },
    #[error("cluster {cluster} exports {service} twice")]
    DuplicateCluster {
        cluster: ClusterId,
        service: ServiceKey,
    },
}

/// Resolves every cluster's export of one service (any order) into the import view and the
/// conflicts. All exports must be of the same service, one per cluster.
pub fn resolve<'a>(
    exports: impl IntoIterator<Item = (&'a ClusterId, &'a Export)>,
) -> Result<Resolution, ResolveError> {
    let mut exports: Vec<(&ClusterId, &Export)> = exports.into_iter().collect();
    let Some(&(_, first)) = exports.first() else {
        return Err(ResolveError::NoExports);
    };
    if let Some((_, other)) = exports.iter().find(|(_, e)| e.service != first.service) {
        return Err(ResolveError::MixedServices {
            first: first.service.clone(),
            other: other.service.clone(),
        });
    }
    exports.sort_by(|(ca, a), (cb, b)| {
        age_key(a.props.exported_at)
            .cmp(&age_key(b.props.exported_at))
            .then_with(|| ca.cmp(cb))
    });
    if let Some(pair) = exports.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(ResolveError::DuplicateCluster {
            cluster: pair[0].0.clone(),
            service: first.service.clone(),
        });
    }

    let (winner_id, winner) = exports[0];
    let total = exports.len();
    let mut conflicts = Vec::new();
    // The clusters whose `value` differs from the winner's, as a conflict of `kind`.
    let differ = |kind: ConflictKind, value: &dyn Fn(&Export) -> String| {
        let expected = value(winner);
        let disagreeing: Vec<ClusterId> = exports
            .iter()
            .filter(|(_, e)| value(e) != expected)
            .map(|(c, _)| (*c).clone())
            .collect();
        (!disagreeing.is_empty()).then(|| conflict(kind, &expected, winner_id, disagreeing, total))
    };

    conflicts.extend(differ(ConflictKind::Type, &|e| {
        kind_name(e.props.kind).to_owned()
    }));
    conflicts.extend(differ(ConflictKind::SessionAffinity, &|e| {
        affinity_name(e.props.session_affinity).to_owned()
    }));
    // The timeout only matters, and is only compared, between ClientIP exports.
    if matches!(
        winner.props.session_affinity,
        SessionAffinity::ClientIp { .. }
    ) {
        conflicts.extend(differ(ConflictKind::SessionAffinityConfig, &|e| {
            match e.props.session_affinity {
                SessionAffinity::ClientIp { .. } => format!(
                    "clientIP.timeoutSeconds={}",
                    affinity_timeout(e.props.session_affinity)
                ),
                // Already a SessionAffinityConflict; not a second one.
                SessionAffinity::None => format!(
                    "clientIP.timeoutSeconds={}",
                    affinity_timeout(winner.props.session_affinity)
                ),
            }
        }));
    }
    conflicts.extend(differ(ConflictKind::Annotations, &|e| {
        format!("{:?}", e.props.exported_annotations)
    }));
    conflicts.extend(differ(ConflictKind::Labels, &|e| {
        format!("{:?}", e.props.exported_labels)
    }));
    conflicts.extend(differ(ConflictKind::InternalTrafficPolicy, &|e| {
        e.props
            .internal_traffic_policy
            .clone()
            .unwrap_or_else(|| "Cluster".to_owned())
    }));
    conflicts.extend(differ(ConflictKind::TrafficDistribution, &|e| {
        e.props
            .traffic_distribution
            .clone()
            .unwrap_or_else(|| "unset".to_owned())
    }));

    let families = &winner.props.ip_families;
    let lacking: Vec<ClusterId> = exports
        .iter()
        .filter(|(_, e)| {
            !e.props.ip_families.is_empty()
                && families.iter().any(|f| !e.props.ip_families.contains(f))
        })
        .map(|(c, _)| (*c).clone())
        .collect();
    if !lacking.is_empty() {
        conflicts.push(conflict(
            ConflictKind::IpFamily,
            &format!("{families:?}"),
            winner_id,
            lacking,
            total,
        ));
    }

    let ports = merge_ports(&exports);
    let winner_ports = port_set(winner);
    let port_disagreeing: Vec<ClusterId> = exports
        .iter()
        .filter(|(_, e)| port_set(e) != winner_ports)
        .map(|(c, _)| (*c).clone())
        .collect();
    if !port_disagreeing.is_empty() {
        let names: Vec<String> = ports.iter().map(|p| port_name(&p.port)).collect();
        conflicts.push(conflict(
            ConflictKind::Port,
            &format!("the union [{}]", names.join(", ")),
            winner_id,
            port_disagreeing,
            total,
        ));
    }
    conflicts.sort_by_key(|c| c.kind);

    let mut clusters: Vec<ClusterId> = exports.iter().map(|(c, _)| (*c).clone()).collect();
    clusters.sort();
    let props = &winner.props;
    Ok(Resolution {
        winner: winner_id.clone(),
        import: ImportView {
            service: winner.service.clone(),
            kind: props.kind,
            session_affinity: props.session_affinity,
            ip_families: props.ip_families.clone(),
            internal_traffic_policy: props.internal_traffic_policy.clone(),
            traffic_distribution: props.traffic_distribution.clone(),
            exported_labels: props.exported_labels.clone(),
            exported_annotations: props.exported_annotations.clone(),
            ports,
            clusters,
        },
        conflicts,
    })
}

/// Sorts exports without a timestamp after all others.
fn age_key(exported_at: Option<i64>) -> (bool, i64) {
    (exported_at.is_none(), exported_at.unwrap_or(0))
}

/// The union of the ports, oldest export first: a port joins unless its name, or its
/// (protocol, port), is already taken by a different port.
fn merge_ports(exports: &[(&ClusterId, &Export)]) -> Vec<MergedPort> {
    let mut union: Vec<MergedPort> = Vec::new();
    for (cluster, export) in exports {
        for port in &export.ports {
            let same_name = port
                .name
                .as_ref()
                .and_then(|n| union.iter().position(|m| m.port.name.as_ref() == Some(n)));
            let same_address = union
                .iter()
                .position(|m| (m.port.protocol, m.port.port) == (port.protocol, port.port));
            match same_name.or(same_address) {
                Some(i) if union[i].port == *port => {
                    union[i].clusters.insert((*cluster).clone());
                }
                // Taken by a different, older port: left out.
                Some(_) => {}
                None => union.push(MergedPort {
                    port: port.clone(),
                    clusters: BTreeSet::from([(*cluster).clone()]),
                }),
            }
        }
    }
    union
}

/// A port list as a set, for comparing exports regardless of order.
fn port_set(export: &Export) -> BTreeSet<&PortSpec> {
    export.ports.iter().collect()
}

fn conflict(
    kind: ConflictKind,
    value: &str,
    winner: &ClusterId,
    mut disagreeing: Vec<ClusterId>,
    total: usize,
) -> Conflict {
    disagreeing.sort();
    let message = format!(
        "Conflicting {}. Using {value:?} from oldest service export in {:?}. {}/{total} clusters disagree.",
        kind.property(),
        winner.as_str(),
        disagreeing.len(),
    );
    Conflict {
        kind,
        disagreeing,
        message,
    }
}

fn kind_name(kind: ServiceKind) -> &'static str {
    match kind {
        ServiceKind::ClusterSetIp => "ClusterSetIP",
        ServiceKind::Headless => "Headless",
    }
}

fn affinity_name(affinity: SessionAffinity) -> &'static str {
    match affinity {
        SessionAffinity::None => "None",
        SessionAffinity::ClientIp { .. } => "ClientIP",
    }
}

fn affinity_timeout(affinity: SessionAffinity) -> i32 {
    match affinity {
        SessionAffinity::ClientIp {
            timeout_seconds: Some(t),
        } => t,
        _ => DEFAULT_CLIENT_IP_TIMEOUT_SECONDS,
    }
}

fn port_name(port: &PortSpec) -> String {
    let protocol = match port.protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    };
    match &port.name {
        Some(name) => format!("{name}:{protocol}/{}", port.port),
        None => format!("{protocol}/{}", port.port),
    }
}

#[cfg(test)]
mod tests;
