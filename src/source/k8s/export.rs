//! The export side's pure translation: a ServiceExport's Service and EndpointSlices → one
//! `model::Export` (what this cluster publishes to the broker), or the reason it is invalid.
//!
//! Owns the mapping of Kubernetes fields onto the model (type, ports with appProtocol,
//! session affinity, IP families, traffic policies, endpoints with hostname and zone) and the
//! cluster id rule (the `cluster.clusterset.k8s.io` ClusterProperty, KEP-2149). It does not
//! decide conditions (`plan`) nor talk to the API server (`controller`).

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::{
    ClusterId, Endpoint, Export, IdError, IpFamily, PortSpec, Protocol, ServiceKey, ServiceKind,
    ServiceProps, SessionAffinity,
};

/// The label on a Service's own EndpointSlices naming the Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The ClusterProperty holding this cluster's id in the clusterset (KEP-2149).
pub use super::crd::CLUSTER_PROPERTY_ID as CLUSTER_ID_PROPERTY;
use super::crd::LABEL_MANAGED_BY as MANAGED_BY_LABEL;

/// `ClusterProperty` from kubernetes-sigs/about-api (cluster-scoped; the property's name is
/// `metadata.name`). We read `v1alpha1`, which every release of the CRD serves (`v1beta1`
/// was added later as the storage version with the same schema).
#[derive(CustomResource, Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(group = "about.k8s.io", version = "v1alpha1", kind = "ClusterProperty")]
pub struct ClusterPropertySpec {
    pub value: String,
}

/// This cluster's id: the ClusterProperty's value when there is one, else the flag's.
///
/// KEP-2149 allows any DNS subdomain, but the id is also a DNS label in MCS names
/// (`<hostname>.<clusterid>.<svc>.<ns>.svc.clusterset.local`), so a property that is not a
/// DNS label is refused rather than silently replaced by the flag.
pub fn cluster_id(property: Option<&str>, flag: &ClusterId) -> Result<ClusterId, IdError> {
    match property {
        Some(value) => ClusterId::new(value),
        None => Ok(flag.clone()),
    }
}

/// Why a ServiceExport exports nothing (`Valid=False`, with these reasons).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// No Service of that namespace/name exists.
    #[error("no service with this namespace and name exists")]
    NoService,
    /// The Service's type cannot be exported (ExternalName, KEP-1645 "Service Types").
    #[error("services of type {service_type} cannot be exported")]
    InvalidServiceType { service_type: String },
}

/// Translates the exported Service and the EndpointSlices in the cluster (any; those of other
/// services and our own imported ones are skipped) into the export this cluster publishes.
/// `exported_at` is the ServiceExport's creationTimestamp (Unix seconds).
///
/// Every endpoint address is published with its `ready` condition (an absent condition means
/// ready, as in Kubernetes); consumers answer only ready ones. Endpoints appearing in several
/// slices (during a rollout) are published once.
pub fn export_of<'a>(
    service: Option<&Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    exported_at: Option<i64>,
    managed_by: &str,
) -> Result<Export, Invalid> {
    let service = service.ok_or(Invalid::NoService)?;
    let namespace = service.metadata.namespace.clone().unwrap_or_default();
    let name = service.metadata.name.clone().unwrap_or_default();
    let key = ServiceKey::new(&namespace, &name).map_err(|_| Invalid::NoService)?;
    let spec = service.spec.clone().unwrap_or_default();
    let service_type = spec.type_.as_deref().unwrap_or("ClusterIP");
    if !matches!(service_type, "ClusterIP" | "NodePort" | "LoadBalancer") {
        return Err(Invalid::InvalidServiceType {
            service_type: service_type.to_owned(),
        });
    }
    let headless = spec.cluster_ip.as_deref() == Some("None");
    let cluster_ips: Vec<IpAddr> = if headless {
        vec![]
    } else {
        let ips = spec
            .cluster_ips
            .clone()
            .unwrap_or_else(|| spec.cluster_ip.clone().into_iter().collect());
        ips.iter().filter_map(|ip| ip.parse().ok()).collect()
    };
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some(PortSpec {
                name: p.name.clone().filter(|n| !n.is_empty()),
                port: u16::try_from(p.port).ok()?,
                protocol: protocol(p.protocol.as_deref())?,
                app_protocol: p.app_protocol.clone(),
            })
        })
        .collect();
    let session_affinity = match spec.session_affinity.as_deref() {
        Some("ClientIP") => SessionAffinity::ClientIp {
            timeout_seconds: spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds),
        },
        _ => SessionAffinity::None,
    };
    let ip_families = spec
        .ip_families
        .iter()
        .flatten()
        .filter_map(|f| match f.as_str() {
            "IPv4" => Some(IpFamily::V4),
            "IPv6" => Some(IpFamily::V6),
            _ => None,
        })
        .collect();

    let mut endpoints: BTreeMap<IpAddr, Endpoint> = BTreeMap::new();
    for slice in slices {
        let labels = slice.metadata.labels.as_ref();
        let label = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
        if slice.metadata.namespace.as_deref() != Some(namespace.as_str())
            || label(SERVICE_NAME_LABEL) != Some(name.as_str())
            || label(MANAGED_BY_LABEL) == Some(managed_by)
        {
            continue;
        }
        for e in &slice.endpoints {
            let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            for address in e.addresses.iter().filter_map(|a| a.parse().ok()) {
                let endpoint = Endpoint {
                    address,
                    ready,
                    hostname: e.hostname.clone(),
                    zone: e.zone.clone(),
                };
                // A ready copy wins over an unready one of the same address.
                let keep = endpoints
                    .get(&address)
                    .is_none_or(|old| !old.ready && ready);
                if keep {
                    endpoints.insert(address, endpoint);
                }
            }
        }
    }

    Ok(Export {
        service: key,
        cluster_ips,
        ports,
        endpoints: endpoints.into_values().collect(),
        props: ServiceProps {
            kind: if headless {
                ServiceKind::Headless
            } else {
                ServiceKind::ClusterSetIp
            },
            session_affinity,
            ip_families,
            internal_traffic_policy: spec.internal_traffic_policy.clone(),
            traffic_distribution: spec.traffic_distribution.clone(),
            exported_at,
            ..ServiceProps::default()
        },
    })
}

fn protocol(p: Option<&str>) -> Option<Protocol> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        "SCTP" => Some(Protocol::Sctp),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const OURS: &str = crate::source::k8s::crd::MANAGED_BY;

    fn service(spec: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "hello", "namespace": "shop"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn slice(name: &str, labels: serde_json::Value, endpoints: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": "shop", "labels": labels},
            "addressType": "IPv4",
            "endpoints": endpoints,
        }))
        .unwrap()
    }

    /// The conformance fixture's Service (`conformance/k8s_objects.go`): tcp/42 and udp/42,
    /// ClientIP affinity with a 10 s timeout, dual-stack.
    fn conformance_hello() -> Service {
        service(json!({
            "type": "ClusterIP",
            "clusterIP": "10.96.0.10",
            "clusterIPs": ["10.96.0.10", "fd00::10"],
            "ipFamilies": ["IPv4", "IPv6"],
            "ipFamilyPolicy": "PreferDualStack",
            "ports": [
                {"name": "tcp", "port": 42, "protocol": "TCP", "appProtocol": "http"},
                {"name": "udp", "port": 42, "protocol": "UDP"},
            ],
            "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 10}},
            "internalTrafficPolicy": "Cluster",
            "trafficDistribution": "PreferClose",
        }))
    }

    #[test]
    fn a_cluster_ip_service_exports_every_mcs_property() {
        let export = export_of(Some(&conformance_hello()), [], Some(1_700_000_000), OURS).unwrap();
        assert_eq!(export.service.to_string(), "shop/hello");
        assert_eq!(
            export.cluster_ips,
            [
                "10.96.0.10".parse::<IpAddr>().unwrap(),
                "fd00::10".parse().unwrap()
            ]
        );
        assert_eq!(
            export.ports,
            [
                PortSpec {
                    name: Some("tcp".into()),
                    port: 42,
                    protocol: Protocol::Tcp,
                    app_protocol: Some("http".into()),
                },
                PortSpec {
                    name: Some("udp".into()),
                    port: 42,
                    protocol: Protocol::Udp,
                    app_protocol: None,
                },
            ]
        );
        assert_eq!(
            export.props,
            ServiceProps {
                kind: ServiceKind::ClusterSetIp,
                session_affinity: SessionAffinity::ClientIp {
                    timeout_seconds: Some(10)
                },
                ip_families: vec![IpFamily::V4, IpFamily::V6],
                internal_traffic_policy: Some("Cluster".into()),
                traffic_distribution: Some("PreferClose".into()),
                exported_at: Some(1_700_000_000),
                ..ServiceProps::default()
            }
        );
    }

    #[test]
    fn validity_and_kind_table() {
        // (what, service, expected kind or invalid reason)
        let cases: Vec<(&str, Option<Service>, Result<ServiceKind, Invalid>)> = vec![
            ("no service", None, Err(Invalid::NoService)),
            (
                "ExternalName",
                Some(service(
                    json!({"type": "ExternalName", "externalName": "example.com"}),
                )),
                Err(Invalid::InvalidServiceType {
                    service_type: "ExternalName".into(),
                }),
            ),
            (
                "headless",
                Some(service(
                    json!({"clusterIP": "None", "ports": [{"port": 80}]}),
                )),
                Ok(ServiceKind::Headless),
            ),
            (
                "type defaults to ClusterIP",
                Some(service(json!({"clusterIP": "10.96.0.1"}))),
                Ok(ServiceKind::ClusterSetIp),
            ),
            (
                "NodePort is a ClusterIP service too",
                Some(service(
                    json!({"type": "NodePort", "clusterIP": "10.96.0.1"}),
                )),
                Ok(ServiceKind::ClusterSetIp),
            ),
        ];
        for (what, svc, expected) in cases {
            let got = export_of(svc.as_ref(), [], None, OURS).map(|e| e.props.kind);
            assert_eq!(got, expected, "{what}");
        }
    }

    #[test]
    fn endpoints_come_from_the_services_own_slices_with_readiness_hostname_and_zone() {
        let own = json!({SERVICE_NAME_LABEL: "hello", MANAGED_BY_LABEL: "endpointslice-controller.k8s.io"});
        let slices = [
            slice(
                "hello-a",
                own.clone(),
                json!([
                    {"addresses": ["10.1.0.1"], "hostname": "web-0", "zone": "z1", "conditions": {"ready": true}},
                    {"addresses": ["10.1.0.2"], "conditions": {"ready": false}},
                    {"addresses": ["10.1.0.3"]},
                ]),
            ),
            // The same pod in a second slice during a rollout: published once, ready.
            slice(
                "hello-b",
                own,
                json!([{"addresses": ["10.1.0.2"], "conditions": {"ready": true}}]),
            ),
            slice(
                "other",
                json!({SERVICE_NAME_LABEL: "other"}),
                json!([{"addresses": ["10.1.0.9"]}]),
            ),
            // Our own imported slice for the same name must not be re-exported.
            slice(
                "imported",
                json!({SERVICE_NAME_LABEL: "hello", MANAGED_BY_LABEL: OURS}),
                json!([{"addresses": ["10.2.0.1"]}]),
            ),
        ];
        let export = export_of(Some(&conformance_hello()), &slices, None, OURS).unwrap();
        let got: Vec<(String, bool, Option<&str>, Option<&str>)> = export
            .endpoints
            .iter()
            .map(|e| {
                (
                    e.address.to_string(),
                    e.ready,
                    e.hostname.as_deref(),
                    e.zone.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("10.1.0.1".into(), true, Some("web-0"), Some("z1")),
                ("10.1.0.2".into(), true, None, None),
                ("10.1.0.3".into(), true, None, None),
            ]
        );
    }

    #[test]
    fn cluster_id_prefers_the_property_and_validates_it() {
        let flag = ClusterId::new("from-flag").unwrap();
        assert_eq!(cluster_id(None, &flag).unwrap().as_str(), "from-flag");
        assert_eq!(cluster_id(Some("c1"), &flag).unwrap().as_str(), "c1");
        assert!(
            cluster_id(Some("eu.west"), &flag).is_err(),
            "a subdomain is no label"
        );
        assert!(cluster_id(Some(""), &flag).is_err());
    }
}
