//! The MCS conformance suite's checks (kubernetes-sigs/mcs-api `conformance/`, listed in
//! `shared/mcs-api/NOTES.md` §7), each asserted by a test of ours on the controller's outcome.
//!
//! The suite runs against real clusters; here two (or three) clusters' controllers and the
//! broker run as the pure world of `plan::tests` (each cluster's API server stores what its
//! plan applies; the broker holds every cluster's exports) until nothing changes. Fixtures
//! follow `conformance/k8s_objects.go`: Service `hello` with `tcp/42` and `udp/42`,
//! `ClientIP` affinity (10 s), `internalTrafficPolicy: Cluster`, `trafficDistribution:
//! PreferClose`, dummy labels that must not propagate; cluster 1 exports first (the suite
//! waits 1.1 s before cluster 2, so creation timestamps differ). `CONFORMANCE.md` maps each
//! check to its test and lists what these tests cannot cover.

use std::net::IpAddr;

use serde_json::{Value, json};

use super::crd::{
    LABEL_MANAGED_BY, LABEL_SERVICE_NAME, LABEL_SOURCE_CLUSTER, ServiceImportType, ServicePort,
};
use super::plan::tests::{Cluster, converge, hello, pods, service, service_export};

/// Clusters c1 and c2; each entry: (c1's Service spec, c2's Service spec); `None` = not
/// exported there. c1's export is older.
fn world(c1: Option<Value>, c2: Option<Value>) -> [Cluster; 2] {
    let mut out = [Cluster::new("c1"), Cluster::new("c2")];
    for (i, (spec, created)) in [(c1, 100), (c2, 102)].into_iter().enumerate() {
        if let Some(spec) = spec {
            out[i] = out[i].clone().with(
                service_export("hello", created, json!({})),
                Some(service("hello", spec)),
                Some(pods(
                    "hello",
                    json!([{"addresses": [format!("10.{}.0.5", i + 1)], "hostname": "hello-0",
                            "conditions": {"ready": true}}]),
                )),
            );
        }
    }
    out
}

fn condition(c: &Cluster, type_: &str) -> Option<(String, String)> {
    c.condition("hello", type_).map(|c| (c.status, c.reason))
}

/// A ServiceImport port as the suite compares it: name, protocol, port, appProtocol.
type Port = (Option<String>, Option<String>, i32, Option<String>);

fn ports(c: &Cluster) -> Vec<Port> {
    let mut ports: Vec<ServicePort> = c.import("hello").expect("imported").spec.ports.clone();
    ports.sort_by(|a, b| a.name.cmp(&b.name));
    ports
        .into_iter()
        .map(|p| (p.name, p.protocol, p.port, p.app_protocol))
        .collect()
}

fn port(name: &str, protocol: &str, port: i32) -> Port {
    (Some(name.into()), Some(protocol.into()), port, None)
}

fn headless() -> Value {
    let mut spec = hello("None", false);
    spec["clusterIPs"] = json!(["None"]);
    spec
}

#[test]
fn check_01_service_import_exists_while_any_cluster_exports() {
    let mut w = world(
        Some(hello("10.96.0.10", false)),
        Some(hello("10.96.1.10", false)),
    );
    converge(&mut w, &[], 200);
    w[0].unexport("hello");
    converge(&mut w, &[], 300);
    assert!(
        w.iter().all(|c| c.import("hello").is_some()),
        "c2 still exports"
    );
    w[1].unexport("hello");
    converge(&mut w, &[], 400);
    assert!(w.iter().all(|c| c.import("hello").is_none()));
}

#[test]
fn check_02_only_exported_labels_and_annotations_propagate() {
    let mut w = world(Some(hello("10.96.0.10", false)), None);
    let mut se = (*w[0].observed.service_exports[0]).clone();
    se.spec.exported_labels = Some([("team".to_owned(), "a".to_owned())].into());
    se.spec.exported_annotations = Some([("note".to_owned(), "x".to_owned())].into());
    w[0].observed.service_exports[0] = se.into();
    converge(&mut w, &[], 200);
    for c in &w {
        let si = c.import("hello").unwrap();
        let labels = si.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels, [("team".to_owned(), "a".to_owned())].into());
        let annotations = si.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(annotations.get("note").map(String::as_str), Some("x"));
        assert!(
            !annotations.contains_key("dummy"),
            "never the Service's own metadata"
        );
    }
}

#[test]
fn check_03_conflicting_exported_labels_conflict_on_both_and_the_oldest_wins() {
    let mut w = world(
        Some(hello("10.96.0.10", false)),
        Some(hello("10.96.1.10", false)),
    );
    for (i, value) in ["a", "b"].into_iter().enumerate() {
        let mut se = (*w[i].observed.service_exports[0]).clone();
        se.spec.exported_labels = Some([("team".to_owned(), value.to_owned())].into());
        se.spec.exported_annotations = Some([("note".to_owned(), value.to_owned())].into());
        w[i].observed.service_exports[0] = se.into();
    }
    converge(&mut w, &[], 200);
    for c in &w {
        let (status, reason) = condition(c, "Conflict").unwrap();
        assert_eq!(status, "True");
        assert!(reason.contains("LabelsConflict") && reason.contains("AnnotationsConflict"));
        let si = c.import("hello").unwrap();
        assert_eq!(
            si.metadata.labels.as_ref().unwrap()["team"],
            "a",
            "c1 is older"
        );
    }
}

#[test]
fn check_04_cluster_ip_service_imports_as_cluster_set_ip_everywhere_and_goes_on_unexport() {
    let mut w = world(Some(hello("10.96.0.10", false)), None);
    converge(&mut w, &[], 200);
    assert_eq!(
        condition(&w[0], "Valid"),
        Some(("True".into(), "Valid".into()))
    );
    for c in &w {
        assert_eq!(
            c.import("hello").unwrap().spec.type_,
            ServiceImportType::ClusterSetIp
        );
    }
    w[0].unexport("hello");
    converge(&mut w, &[], 300);
    assert!(w.iter().all(|c| c.import("hello").is_none()));
}

#[test]
fn check_05_06_07_affinity_traffic_policy_and_distribution_match_the_service() {
    let mut w = world(Some(hello("10.96.0.10", false)), None);
    converge(&mut w, &[], 200);
    for c in &w {
        let spec = &c.import("hello").unwrap().spec;
        assert_eq!(spec.session_affinity.as_deref(), Some("ClientIP"));
        let timeout = spec
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds);
        assert_eq!(timeout, Some(10));
        assert_eq!(spec.internal_traffic_policy.as_deref(), Some("Cluster"));
        assert_eq!(spec.traffic_distribution.as_deref(), Some("PreferClose"));
    }
}

#[test]
fn check_08_one_clusterset_ip_per_ip_family() {
    for dual in [false, true] {
        let mut w = world(Some(hello("10.96.0.10", dual)), None);
        converge(&mut w, &[], 200);
        for c in &w {
            let spec = &c.import("hello").unwrap().spec;
            let ips = spec.ips.clone().unwrap_or_default();
            let families = spec.ip_families.clone().unwrap_or_default();
            assert!(!ips.is_empty());
            assert_eq!(ips.len(), families.len(), "dual {dual}");
            for (ip, family) in ips.iter().zip(&families) {
                let ip: IpAddr = ip.parse().expect("a valid IP");
                let got = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
                assert_eq!(got, family, "ips follow ipFamilies' order");
            }
        }
    }
}

#[test]
fn check_09_ports_match_the_exported_service() {
    let mut spec = hello("10.96.0.10", false);
    spec["ports"][0]["appProtocol"] = json!("http");
    let mut w = world(Some(spec), None);
    converge(&mut w, &[], 200);
    for c in &w {
        let mut tcp = port("tcp", "TCP", 42);
        tcp.3 = Some("http".into());
        assert_eq!(ports(c), [tcp, port("udp", "UDP", 42)]);
    }
}

#[test]
fn check_10_an_added_port_unions_and_conflicts_on_both() {
    let mut c2 = hello("10.96.1.10", false);
    c2["ports"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "stcp", "port": 142, "protocol": "SCTP"}));
    let mut w = world(Some(hello("10.96.0.10", false)), Some(c2));
    converge(&mut w, &[], 200);
    for c in &w {
        assert_eq!(condition(c, "Conflict").unwrap().0, "True");
        assert_eq!(
            ports(c),
            [
                port("stcp", "SCTP", 142),
                port("tcp", "TCP", 42),
                port("udp", "UDP", 42)
            ]
        );
    }
}

#[test]
fn check_11_a_conflicting_port_conflicts_on_both_and_the_oldest_wins() {
    let mut c2 = hello("10.96.1.10", false);
    c2["ports"][0]["port"] = json!(43);
    let mut w = world(Some(hello("10.96.0.10", false)), Some(c2));
    converge(&mut w, &[], 200);
    for c in &w {
        assert_eq!(
            condition(c, "Conflict"),
            Some(("True".into(), "PortConflict".into()))
        );
        assert_eq!(ports(c), [port("tcp", "TCP", 42), port("udp", "UDP", 42)]);
    }
}

#[test]
fn check_12_13_headless_imports_as_headless_without_ips_and_goes_on_unexport() {
    let mut w = world(Some(headless()), None);
    converge(&mut w, &[], 200);
    for c in &w {
        let spec = &c.import("hello").unwrap().spec;
        assert_eq!(spec.type_, ServiceImportType::Headless);
        assert_eq!(spec.ips, None);
    }
    w[0].unexport("hello");
    converge(&mut w, &[], 300);
    assert!(w.iter().all(|c| c.import("hello").is_none()));
}

#[test]
fn check_14_external_name_is_invalid_and_never_imported() {
    let mut w = world(
        Some(json!({"type": "ExternalName", "externalName": "example.com"})),
        None,
    );
    converge(&mut w, &[], 200);
    assert_eq!(
        condition(&w[0], "Valid"),
        Some(("False".into(), "InvalidServiceType".into()))
    );
    assert!(w.iter().all(|c| c.import("hello").is_none()));
}

#[test]
fn check_15_conflicting_headlessness_conflicts_on_both_and_the_oldest_type_wins() {
    let mut w = world(Some(hello("10.96.0.10", false)), Some(headless()));
    converge(&mut w, &[], 200);
    for c in &w {
        let (status, reason) = condition(c, "Conflict").unwrap();
        assert_eq!(status, "True");
        assert!(reason.contains("TypeConflict"), "{reason}");
        assert_eq!(
            c.import("hello").unwrap().spec.type_,
            ServiceImportType::ClusterSetIp
        );
    }
}

#[test]
fn check_16_an_mcs_endpoint_slice_per_family_with_the_labels_and_gone_on_unexport() {
    let mut w = world(Some(hello("10.96.0.10", true)), None);
    converge(&mut w, &[], 200);
    for c in &w {
        let slices = c.mcs_slices("hello");
        for family in ["IPv4", "IPv6"] {
            let slice = slices
                .iter()
                .find(|s| s.address_type == family)
                .unwrap_or_else(|| panic!("a {family} slice"));
            let labels = slice.metadata.labels.as_ref().unwrap();
            assert_eq!(labels[LABEL_SERVICE_NAME], "hello");
            assert!(labels.contains_key(LABEL_SOURCE_CLUSTER));
            assert_ne!(labels[LABEL_MANAGED_BY], "endpointslice-controller.k8s.io");
            assert!(!slice.endpoints.is_empty());
        }
    }
    w[0].unexport("hello");
    converge(&mut w, &[], 300);
    assert!(w.iter().all(|c| c.mcs_slices("hello").is_empty()));
}

#[test]
fn check_17_19_a_service_that_is_not_exported_gets_no_import_slice_or_address() {
    // c2 has the same Service but does not export it (17: nothing exported at all; 19: only
    // the exporting cluster's endpoints are imported).
    let mut w = world(None, None);
    w[1].observed
        .services
        .push(service("hello", hello("10.96.1.10", false)).into());
    converge(&mut w, &[], 200);
    assert!(
        w.iter()
            .all(|c| c.import("hello").is_none() && c.mcs_slices("hello").is_empty())
    );

    let mut w = world(Some(hello("10.96.0.10", false)), None);
    w[1].observed
        .services
        .push(service("hello", hello("10.96.1.10", false)).into());
    converge(&mut w, &[], 200);
    for c in &w {
        let sources: Vec<&str> = c
            .mcs_slices("hello")
            .iter()
            .map(|s| s.metadata.labels.as_ref().unwrap()[LABEL_SOURCE_CLUSTER].as_str())
            .collect();
        assert_eq!(sources, ["c1"]);
    }
}

#[test]
fn check_20_21_a_conflicting_port_routes_only_to_clusters_exposing_it() {
    // c2 names its port 42 differently (21) and exposes 4242 under tcp (20): each slice
    // carries only the merged ports its own cluster has, so kube-proxy sends :42 to c1 only.
    let mut c2 = hello("10.96.1.10", false);
    c2["ports"] = json!([{"name": "tcp", "port": 4242, "protocol": "TCP"},
                         {"name": "other", "port": 4343, "protocol": "TCP"}]);
    let mut w = world(Some(hello("10.96.0.10", false)), Some(c2));
    converge(&mut w, &[], 200);
    let slice_ports = |c: &Cluster, source: &str| -> Vec<i32> {
        c.mcs_slices("hello")
            .iter()
            .filter(|s| s.metadata.labels.as_ref().unwrap()[LABEL_SOURCE_CLUSTER] == source)
            .flat_map(|s| s.ports.clone().unwrap_or_default())
            .filter_map(|p| p.port)
            .collect()
    };
    for c in &w {
        assert_eq!(slice_ports(c, "c1"), [42, 42], "tcp/42 and udp/42");
        assert_eq!(
            slice_ports(c, "c2"),
            [4343],
            "c2's tcp/4242 lost to c1's tcp/42"
        );
    }
}

#[test]
fn check_26_headless_slices_carry_ready_endpoints_with_hostnames_and_a_dns_label_cluster() {
    let mut w = world(Some(headless()), None);
    converge(&mut w, &[], 200);
    for c in &w {
        let slices = c.mcs_slices("hello");
        let slice = slices.first().expect("a slice");
        let cluster = &slice.metadata.labels.as_ref().unwrap()[LABEL_SOURCE_CLUSTER];
        assert!(
            crate::model::ClusterId::new(cluster.clone()).is_ok(),
            "a DNS label"
        );
        let endpoint = &slice.endpoints[0];
        assert_eq!(endpoint.hostname.as_deref(), Some("hello-0"));
        assert_eq!(endpoint.conditions.as_ref().unwrap().ready, Some(true));
    }
}
