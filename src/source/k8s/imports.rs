//! The import side of `plan()`, pure: from every cluster's export of each service and its
//! conflict resolution, the objects this cluster should hold, and ours that must go.
//!
//! Per exported service, in every namespace that exists here (KEP-1645 "Importing Services"):
//! - a `ServiceImport` (type, the merged ports, `ips` for ClusterSetIP, session affinity, IP
//!   families, traffic policies, exported labels/annotations, `status.clusters`);
//! - one MCS `EndpointSlice` per source cluster and IP family, labelled with
//!   `multicluster.kubernetes.io/service-name`, `…/source-cluster` and our `managed-by`. A
//!   ClusterSetIP service's slice holds the source cluster's own cluster IPs (routed through
//!   the tunnel, and by that cluster's kube-proxy to its pods), ready while it has a ready
//!   endpoint; a headless service's holds the pods (hostname, zone, readiness). A slice
//!   carries only the merged ports its cluster exposes, so traffic to a conflicting port
//!   reaches only clusters that have it (KEP-1645, ports);
//! - for ClusterSetIP, a derived Service (`derived-<hash>`, no selector) whose cluster IPs are
//!   the clusterset IPs and whose endpoints are those slices (`kubernetes.io/service-name`),
//!   so kube-proxy routes the clusterset IP, as the mcs-api reference controller does.
//!
//! A source cluster missing from the view (its broker lease expired, so the broker withholds
//! its exports) has no slices here, so its slices are deleted; the ServiceImport goes with the
//! last export.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{
    ClientIPConfig, Service, ServicePort as CoreServicePort, ServiceSpec, SessionAffinityConfig,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;

use super::alloc::{AllocError, allocate, family_of};
use super::crd::condition as cond;
use super::crd::{
    ClientIpConfig, ClusterStatus, LABEL_MANAGED_BY, LABEL_SERVICE_NAME, LABEL_SOURCE_CLUSTER,
    MANAGED_BY, ServiceImport, ServiceImportSpec, ServiceImportStatus, ServiceImportType,
    ServicePort, SessionAffinityConfig as McsAffinityConfig,
};
use super::export::SERVICE_NAME_LABEL;
use super::plan::{Observed, Plan, Settings, condition, sentence};
use crate::conflict::{ImportView, Resolution};
use crate::model::{ClusterId, Export, IpFamily, ServiceKey, ServiceKind, SessionAffinity};

/// Marks the derived Services we own (the value is always [`DERIVED_BY_VALUE`]).
pub const DERIVED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const DERIVED_BY_VALUE: &str = "causeway";

/// The kinds of object the controller deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ObjectKind {
    ServiceImport,
    EndpointSlice,
    Service,
}

/// One object to delete.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectId {
    pub kind: ObjectKind,
    pub namespace: String,
    pub name: String,
}

/// The derived Service's name for a service: `derived-` and ten base32hex characters of a
/// 64-bit FNV-1a hash of `ns/name` (the reference controller hashes with SHA-256; any stable
/// hash will do, and this one needs no extra crate).
pub fn derived_name(key: &ServiceKey) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("{}/{}", key.namespace, key.name).bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    const ALPHABET: &[u8; 32] = b"0123456789abcdefghijklmnopqrstuv";
    let chars: String = (0..10)
        .map(|i| ALPHABET[((hash >> (59 - 5 * i)) & 31) as usize] as char)
        .collect();
    format!("derived-{chars}")
}

pub(super) fn plan_imports(
    observed: &Observed,
    by_service: &BTreeMap<ServiceKey, Vec<(ClusterId, Export)>>,
    resolutions: &BTreeMap<ServiceKey, Resolution>,
    settings: &Settings,
    now: Timestamp,
    out: &mut Plan,
) {
    let imported: Vec<(&ServiceKey, &Resolution)> = resolutions
        .iter()
        .filter(|(key, _)| observed.namespaces.contains(&key.namespace))
        .collect();

    // Clusterset IPs: what the imports hold stays theirs.
    let held: BTreeMap<ServiceKey, Vec<IpAddr>> = observed
        .service_imports
        .iter()
        .filter_map(|si| clusterset_ips(si))
        .collect();
    let wanted: BTreeMap<ServiceKey, Vec<IpFamily>> = imported
        .iter()
        .filter(|(_, r)| r.import.kind == ServiceKind::ClusterSetIp)
        .map(|(key, r)| ((*key).clone(), r.import.ip_families.clone()))
        .collect();
    let allocated = if settings.clusterset_ranges.is_empty() {
        BTreeMap::new()
    } else {
        allocate(&settings.clusterset_ranges, &held, &wanted)
    };

    let mut desired_imports: BTreeSet<(String, String)> = BTreeSet::new();
    let mut desired_slices: BTreeSet<(String, String)> = BTreeSet::new();
    let mut desired_services: BTreeSet<(String, String)> = BTreeSet::new();
    for (key, resolution) in imported {
        let view = &resolution.import;
        let derived = derived_name(key);
        let cluster_set_ip = view.kind == ServiceKind::ClusterSetIp;
        // Why the import is not ready yet, if it is not (`Ready=False`, with this reason).
        let mut pending: Option<(&str, String)> = None;
        let ips: Vec<IpAddr> = if !cluster_set_ip {
            vec![]
        } else if settings.clusterset_ranges.is_empty() {
            // No range: the API server assigned the derived Service's cluster IPs.
            observed
                .services
                .iter()
                .find(|s| {
                    s.metadata.namespace.as_deref() == Some(key.namespace.as_str())
                        && s.metadata.name.as_deref() == Some(derived.as_str())
                })
                .and_then(|s| s.spec.as_ref()?.cluster_ips.clone())
                .unwrap_or_default()
                .iter()
                .filter_map(|ip| ip.parse().ok())
                .collect()
        } else {
            match allocated.get(key) {
                Some(Ok(ips)) => ips.clone(),
                Some(Err(e)) => {
                    out.problems.push(format!("{key}: {e}"));
                    let reason = match e {
                        AllocError::NoRange { .. } => cond::REASON_IP_FAMILY_NOT_SUPPORTED,
                        AllocError::Exhausted { .. } => cond::REASON_PENDING,
                    };
                    pending = Some((reason, sentence(e)));
                    vec![]
                }
                None => vec![],
            }
        };
        let families: Vec<IpFamily> = if view.ip_families.is_empty() {
            ips.iter().map(family_of).collect()
        } else {
            view.ip_families.clone()
        };

        if cluster_set_ip && ips.is_empty() && pending.is_none() {
            pending = Some((
                cond::REASON_PENDING,
                "Waiting for the derived Service's cluster IPs.".into(),
            ));
        }
        let old = observed
            .service_imports
            .iter()
            .find(|si| {
                si.metadata.namespace.as_deref() == Some(key.namespace.as_str())
                    && si.metadata.name.as_deref() == Some(key.name.as_str())
            })
            .and_then(|si| si.status.as_ref())
            .map(|s| s.conditions.clone())
            .unwrap_or_default();
        let ready = match pending {
            None => condition(
                &old,
                None,
                now,
                cond::READY,
                "True",
                cond::REASON_READY,
                format!("Imported from {} cluster(s).", view.clusters.len()),
            ),
            Some((reason, message)) => {
                condition(&old, None, now, cond::READY, "False", reason, message)
            }
        };

        out.imports
            .push(service_import(key, view, &ips, &families, &derived));
        out.import_statuses.push(ServiceImport {
            metadata: meta(key, &key.name),
            spec: Default::default(),
            status: Some(ServiceImportStatus {
                clusters: view
                    .clusters
                    .iter()
                    .map(|c| ClusterStatus {
                        cluster: c.to_string(),
                    })
                    .collect(),
                conditions: vec![ready],
            }),
        });
        desired_imports.insert((key.namespace.clone(), key.name.clone()));

        if cluster_set_ip {
            out.services.push(derived_service(
                key, view, &ips, &families, &derived, settings,
            ));
            desired_services.insert((key.namespace.clone(), derived.clone()));
        }
        for (cluster, export) in by_service.get(key).into_iter().flatten() {
            for slice in slices(key, view, cluster, export, &derived) {
                let name = slice.metadata.name.clone().unwrap_or_default();
                desired_slices.insert((key.namespace.clone(), name));
                out.slices.push(slice);
            }
        }
    }

    // Ours, no longer wanted.
    let id = |kind, ns: Option<&String>, name: Option<&String>| ObjectId {
        kind,
        namespace: ns.cloned().unwrap_or_default(),
        name: name.cloned().unwrap_or_default(),
    };
    for si in &observed.service_imports {
        let m = &si.metadata;
        let key = (
            m.namespace.clone().unwrap_or_default(),
            m.name.clone().unwrap_or_default(),
        );
        if !desired_imports.contains(&key) {
            out.deletes.push(id(
                ObjectKind::ServiceImport,
                m.namespace.as_ref(),
                m.name.as_ref(),
            ));
        }
    }
    for slice in &observed.slices {
        let m = &slice.metadata;
        let ours = label(m, LABEL_MANAGED_BY) == Some(MANAGED_BY);
        let key = (
            m.namespace.clone().unwrap_or_default(),
            m.name.clone().unwrap_or_default(),
        );
        if ours && !desired_slices.contains(&key) {
            out.deletes.push(id(
                ObjectKind::EndpointSlice,
                m.namespace.as_ref(),
                m.name.as_ref(),
            ));
        }
    }
    for service in &observed.services {
        let m = &service.metadata;
        let ours = label(m, DERIVED_BY_LABEL) == Some(DERIVED_BY_VALUE)
            && label(m, LABEL_SERVICE_NAME).is_some();
        let key = (
            m.namespace.clone().unwrap_or_default(),
            m.name.clone().unwrap_or_default(),
        );
        if ours && !desired_services.contains(&key) {
            out.deletes.push(id(
                ObjectKind::Service,
                m.namespace.as_ref(),
                m.name.as_ref(),
            ));
        }
    }
    out.deletes.sort();
}

/// A ServiceImport's service and the clusterset IPs in its `spec.ips` (unparsable ones
/// skipped); `None` for an import without a valid namespace and name.
pub(super) fn clusterset_ips(si: &ServiceImport) -> Option<(ServiceKey, Vec<IpAddr>)> {
    let key = ServiceKey::new(
        si.metadata.namespace.as_deref()?,
        si.metadata.name.as_deref()?,
    )
    .ok()?;
    let ips = si
        .spec
        .ips
        .iter()
        .flatten()
        .filter_map(|ip| ip.parse().ok());
    Some((key, ips.collect()))
}

fn label<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

fn meta(key: &ServiceKey, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(key.namespace.clone()),
        ..Default::default()
    }
}

fn family_name(f: IpFamily) -> String {
    match f {
        IpFamily::V4 => "IPv4".into(),
        IpFamily::V6 => "IPv6".into(),
    }
}

fn service_import(
    key: &ServiceKey,
    view: &ImportView,
    ips: &[IpAddr],
    families: &[IpFamily],
    derived: &str,
) -> ServiceImport {
    let mut metadata = meta(key, &key.name);
    if !view.exported_labels.is_empty() {
        metadata.labels = Some(view.exported_labels.clone());
    }
    let mut annotations = view.exported_annotations.clone();
    if view.kind == ServiceKind::ClusterSetIp {
        annotations.insert(
            super::crd::ANNOTATION_DERIVED_SERVICE.to_owned(),
            derived.to_owned(),
        );
    }
    if !annotations.is_empty() {
        metadata.annotations = Some(annotations);
    }
    let (affinity, affinity_config) = match view.session_affinity {
        SessionAffinity::None => (None, None),
        SessionAffinity::ClientIp { timeout_seconds } => (
            Some("ClientIP".to_owned()),
            Some(McsAffinityConfig {
                client_ip: Some(ClientIpConfig { timeout_seconds }),
            }),
        ),
    };
    ServiceImport {
        metadata,
        spec: ServiceImportSpec {
            ports: view
                .ports
                .iter()
                .map(|p| ServicePort {
                    name: p.port.name.clone(),
                    protocol: Some(p.port.protocol.to_string()),
                    app_protocol: p.port.app_protocol.clone(),
                    port: i32::from(p.port.port),
                })
                .collect(),
            ips: (!ips.is_empty()).then(|| ips.iter().map(IpAddr::to_string).collect()),
            type_: match view.kind {
                ServiceKind::ClusterSetIp => ServiceImportType::ClusterSetIp,
                ServiceKind::Headless => ServiceImportType::Headless,
            },
            session_affinity: affinity,
            session_affinity_config: affinity_config,
            ip_families: (!families.is_empty())
                .then(|| families.iter().copied().map(family_name).collect()),
            internal_traffic_policy: view.internal_traffic_policy.clone(),
            traffic_distribution: view.traffic_distribution.clone(),
        },
        status: None,
    }
}

fn derived_service(
    key: &ServiceKey,
    view: &ImportView,
    ips: &[IpAddr],
    families: &[IpFamily],
    derived: &str,
    settings: &Settings,
) -> Service {
    let mut metadata = meta(key, derived);
    metadata.labels = Some(BTreeMap::from([
        (LABEL_SERVICE_NAME.to_owned(), key.name.clone()),
        (DERIVED_BY_LABEL.to_owned(), DERIVED_BY_VALUE.to_owned()),
    ]));
    let pinned = !settings.clusterset_ranges.is_empty() && !ips.is_empty();
    let (affinity, affinity_config) = match view.session_affinity {
        SessionAffinity::None => (None, None),
        SessionAffinity::ClientIp { timeout_seconds } => (
            Some("ClientIP".to_owned()),
            Some(SessionAffinityConfig {
                client_ip: Some(ClientIPConfig { timeout_seconds }),
            }),
        ),
    };
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: pinned.then(|| ips[0].to_string()),
            cluster_ips: pinned.then(|| ips.iter().map(IpAddr::to_string).collect()),
            ip_families: (!families.is_empty())
                .then(|| families.iter().copied().map(family_name).collect()),
            ip_family_policy: Some(
                if families.len() > 1 {
                    "RequireDualStack"
                } else {
                    "SingleStack"
                }
                .into(),
            ),
            ports: Some(
                view.ports
                    .iter()
                    .map(|p| CoreServicePort {
                        name: p.port.name.clone(),
                        protocol: Some(p.port.protocol.to_string()),
                        app_protocol: p.port.app_protocol.clone(),
                        port: i32::from(p.port.port),
                        target_port: Some(IntOrString::Int(i32::from(p.port.port))),
                        ..Default::default()
                    })
                    .collect(),
            ),
            session_affinity: affinity,
            session_affinity_config: affinity_config,
            internal_traffic_policy: view.internal_traffic_policy.clone(),
            traffic_distribution: view.traffic_distribution.clone(),
            ..Default::default()
        }),
        status: None,
    }
}

/// One slice per IP family with endpoints, for one source cluster.
fn slices(
    key: &ServiceKey,
    view: &ImportView,
    cluster: &ClusterId,
    export: &Export,
    derived: &str,
) -> Vec<EndpointSlice> {
    let ports: Vec<EndpointPort> = view
        .ports
        .iter()
        .filter(|p| p.clusters.contains(cluster))
        .map(|p| EndpointPort {
            name: p.port.name.clone(),
            protocol: Some(p.port.protocol.to_string()),
            app_protocol: p.port.app_protocol.clone(),
            port: Some(i32::from(p.port.port)),
        })
        .collect();
    let any_ready = export.endpoints.iter().any(|e| e.ready);
    let endpoints: Vec<(IpAddr, Endpoint)> = match view.kind {
        ServiceKind::ClusterSetIp => export
            .cluster_ips
            .iter()
            .map(|ip| {
                (
                    *ip,
                    Endpoint {
                        addresses: vec![ip.to_string()],
                        conditions: Some(EndpointConditions {
                            ready: Some(any_ready),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                )
            })
            .collect(),
        ServiceKind::Headless => export
            .endpoints
            .iter()
            .map(|e| {
                (
                    e.address,
                    Endpoint {
                        addresses: vec![e.address.to_string()],
                        conditions: Some(EndpointConditions {
                            ready: Some(e.ready),
                            ..Default::default()
                        }),
                        hostname: e.hostname.clone(),
                        zone: e.zone.clone(),
                        ..Default::default()
                    },
                )
            })
            .collect(),
    };
    [IpFamily::V4, IpFamily::V6]
        .into_iter()
        .filter_map(|family| {
            let of_family: Vec<Endpoint> = endpoints
                .iter()
                .filter(|(ip, _)| family_of(ip) == family)
                .map(|(_, e)| e.clone())
                .collect();
            if of_family.is_empty() {
                return None;
            }
            let suffix = match family {
                IpFamily::V4 => "ipv4",
                IpFamily::V6 => "ipv6",
            };
            let mut labels = BTreeMap::from([
                (LABEL_SERVICE_NAME.to_owned(), key.name.clone()),
                (LABEL_SOURCE_CLUSTER.to_owned(), cluster.to_string()),
                (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
            ]);
            if view.kind == ServiceKind::ClusterSetIp {
                labels.insert(SERVICE_NAME_LABEL.to_owned(), derived.to_owned());
            }
            let mut metadata = meta(key, &format!("{derived}-{cluster}-{suffix}"));
            metadata.labels = Some(labels);
            Some(EndpointSlice {
                metadata,
                address_type: family_name(family),
                endpoints: of_family,
                ports: Some(ports.clone()),
            })
        })
        .collect()
}
