//! Table tests of `plan()`, and a pure clusterset "world": several clusters' observations,
//! a broker that holds every cluster's exports, and an API server that stores what each
//! cluster's plan applies, run to a fixed point. The MCS conformance checks are asserted on
//! this world (see `CONFORMANCE.md`).

use std::collections::BTreeSet;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use super::*;
use crate::source::k8s::crd::{
    LABEL_MANAGED_BY, LABEL_SERVICE_NAME, LABEL_SOURCE_CLUSTER, MANAGED_BY, ServiceImportType,
};
use crate::source::k8s::imports::derived_name;

pub(crate) fn at(second: i64) -> Timestamp {
    Timestamp::from_second(second).unwrap()
}

pub(crate) fn service_export(name: &str, created: i64, spec: Value) -> ServiceExport {
    serde_json::from_value(json!({
        "apiVersion": "multicluster.x-k8s.io/v1beta1", "kind": "ServiceExport",
        "metadata": {
            "name": name, "namespace": "shop", "generation": 1,
            "creationTimestamp": at(created).to_string(),
            // Dummy metadata that must not be propagated (conformance fixture).
            "labels": {"dummy": "export-label"},
        },
        "spec": spec,
    }))
    .unwrap()
}

pub(crate) fn service(name: &str, spec: Value) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "shop", "labels": {"dummy": "service-label"}},
        "spec": spec,
    }))
    .unwrap()
}

/// The conformance suite's `hello`: tcp/42 and udp/42, ClientIP affinity (10 s), one family
/// unless `dual`, `internalTrafficPolicy: Cluster`, `trafficDistribution: PreferClose`.
pub(crate) fn hello(cluster_ip: &str, dual: bool) -> Value {
    let mut spec = json!({
        "type": "ClusterIP",
        "clusterIP": cluster_ip,
        "clusterIPs": [cluster_ip],
        "ipFamilies": ["IPv4"],
        "ipFamilyPolicy": "PreferDualStack",
        "ports": [
            {"name": "tcp", "port": 42, "protocol": "TCP"},
            {"name": "udp", "port": 42, "protocol": "UDP"},
        ],
        "sessionAffinity": "ClientIP",
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 10}},
        "internalTrafficPolicy": "Cluster",
        "trafficDistribution": "PreferClose",
    });
    if dual {
        spec["clusterIPs"] = json!([cluster_ip, "fd00::42"]);
        spec["ipFamilies"] = json!(["IPv4", "IPv6"]);
    }
    spec
}

pub(crate) fn pods(service: &str, endpoints: Value) -> EndpointSlice {
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{service}-abcde"), "namespace": "shop",
            "labels": {"kubernetes.io/service-name": service,
                       LABEL_MANAGED_BY: "endpointslice-controller.k8s.io"},
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "tcp", "port": 8080, "protocol": "TCP"}],
    }))
    .unwrap()
}

pub(crate) fn id(s: &str) -> ClusterId {
    ClusterId::new(s).unwrap()
}

/// One cluster of the world: what its API server holds.
#[derive(Clone)]
pub(crate) struct Cluster {
    pub settings: Settings,
    pub observed: Observed,
    pub last: Plan,
}

impl Cluster {
    pub fn new(name: &str) -> Self {
        Self {
            settings: Settings {
                cluster: id(name),
                clusterset_ranges: vec![
                    "10.255.0.0/24".parse().unwrap(),
                    "fd00:255::/120".parse().unwrap(),
                ],
            },
            observed: Observed {
                namespaces: BTreeSet::from(["shop".to_owned(), "default".to_owned()]),
                ..Observed::default()
            },
            last: Plan::default(),
        }
    }

    pub fn with(
        mut self,
        se: ServiceExport,
        svc: Option<Service>,
        slice: Option<EndpointSlice>,
    ) -> Self {
        self.observed.service_exports.push(Arc::new(se));
        self.observed.services.extend(svc.map(Arc::new));
        self.observed.slices.extend(slice.map(Arc::new));
        self
    }

    pub fn unexport(&mut self, name: &str) {
        self.observed
            .service_exports
            .retain(|se| se.metadata.name.as_deref() != Some(name));
    }

    pub fn import(&self, name: &str) -> Option<&ServiceImport> {
        self.observed
            .service_imports
            .iter()
            .map(|si| &**si)
            .find(|si| si.metadata.name.as_deref() == Some(name))
    }

    pub fn condition(&self, export: &str, type_: &str) -> Option<Condition> {
        self.observed
            .service_exports
            .iter()
            .find(|se| se.metadata.name.as_deref() == Some(export))?
            .status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .cloned()
    }

    pub fn mcs_slices(&self, service: &str) -> Vec<&EndpointSlice> {
        self.observed
            .slices
            .iter()
            .map(|s| &**s)
            .filter(|s| {
                s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_SERVICE_NAME))
                    == Some(&service.to_owned())
            })
            .collect()
    }

    /// Stores what the plan applies and deletes, as the API server would.
    fn store(&mut self, plan: &Plan) {
        let o = &mut self.observed;
        for status in &plan.export_statuses {
            for se in &mut o.service_exports {
                if se.metadata.name == status.metadata.name {
                    Arc::make_mut(se).status = status.status.clone();
                }
            }
        }
        let key = |m: &ObjectMeta| (m.namespace.clone(), m.name.clone());
        let mut imports: Vec<Arc<ServiceImport>> = plan
            .imports
            .iter()
            .map(|si| {
                let mut si = si.clone();
                si.status = plan
                    .import_statuses
                    .iter()
                    .find(|s| key(&s.metadata) == key(&si.metadata))
                    .and_then(|s| s.status.clone());
                Arc::new(si)
            })
            .collect();
        // Imports of ours that the plan neither wants nor deletes stay (none should).
        for si in &o.service_imports {
            let wanted = imports
                .iter()
                .any(|n| key(&n.metadata) == key(&si.metadata));
            let deleted = plan.deletes.iter().any(|d| {
                d.kind == ObjectKind::ServiceImport && Some(&d.name) == si.metadata.name.as_ref()
            });
            if !wanted && !deleted {
                imports.push(si.clone());
            }
        }
        o.service_imports = imports;
        let ours = |s: &EndpointSlice| {
            s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_MANAGED_BY))
                == Some(&MANAGED_BY.to_owned())
        };
        o.slices.retain(|s| !ours(s));
        o.slices.extend(plan.slices.iter().cloned().map(Arc::new));
        let derived = |s: &Service| {
            s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("app.kubernetes.io/managed-by"))
                == Some(&"causeway".to_owned())
        };
        o.services.retain(|s| !derived(s));
        o.services
            .extend(plan.services.iter().cloned().map(Arc::new));
    }
}

/// Runs every cluster's controller and the broker until nothing changes (at most 5 rounds).
/// `withheld`: clusters whose broker lease expired (their exports leave the view).
pub(crate) fn converge(clusters: &mut [Cluster], withheld: &[&str], now: i64) {
    for _ in 0..5 {
        let mut view = ClusterSetView::default();
        for c in clusters.iter() {
            if withheld.contains(&c.settings.cluster.as_str()) {
                continue;
            }
            for e in &c.last.exports {
                view.exports
                    .insert((c.settings.cluster.clone(), e.service.clone()), e.clone());
            }
        }
        let mut changed = false;
        for c in clusters.iter_mut() {
            let p = plan(&c.observed, Some(&view), &c.settings, at(now));
            changed |= p != c.last;
            c.store(&p);
            c.last = p;
        }
        if !changed {
            return;
        }
    }
    panic!("the world does not converge");
}

fn status_of(c: &Option<Condition>) -> Option<(&str, &str)> {
    c.as_ref().map(|c| (c.status.as_str(), c.reason.as_str()))
}

#[test]
fn before_the_first_sync_exports_are_published_but_nothing_is_imported_or_deleted() {
    let mut c1 = Cluster::new("c1").with(
        service_export("hello", 100, json!({})),
        Some(service("hello", hello("10.96.0.10", false))),
        None,
    );
    // A leftover import from before a restart must survive until the view is known.
    c1.observed.service_imports.push(Arc::new(ServiceImport {
        metadata: ObjectMeta {
            name: Some("old".into()),
            namespace: Some("shop".into()),
            ..Default::default()
        },
        ..Default::default()
    }));
    let p = plan(&c1.observed, None, &c1.settings, at(200));
    assert_eq!(p.exports.len(), 1);
    assert!(p.imports.is_empty() && p.slices.is_empty() && p.services.is_empty());
    assert!(
        p.deletes.is_empty(),
        "no garbage collection before the first sync"
    );
    let conditions = &p.export_statuses[0].status.as_ref().unwrap().conditions;
    let got: Vec<(&str, &str, &str)> = conditions
        .iter()
        .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
        .collect();
    assert_eq!(
        got,
        [("Valid", "True", "Valid"), ("Ready", "Unknown", "Pending")],
        "no Conflict before the clusterset is known"
    );
}

#[test]
fn export_conditions_table() {
    // (what, service, expected (Valid, Ready, Conflict) status/reason)
    type Case<'a> = (&'a str, Option<Service>, [Option<(&'a str, &'a str)>; 3]);
    let cases: Vec<Case> = vec![
        (
            "a ClusterIP service is valid, exported, without conflict",
            Some(service("hello", hello("10.96.0.10", false))),
            [
                Some(("True", "Valid")),
                Some(("True", "Exported")),
                Some(("False", "NoConflicts")),
            ],
        ),
        (
            "no service",
            None,
            [
                Some(("False", "NoService")),
                Some(("False", "Failed")),
                None,
            ],
        ),
        (
            "ExternalName",
            Some(service(
                "hello",
                json!({"type": "ExternalName", "externalName": "example.com"}),
            )),
            [
                Some(("False", "InvalidServiceType")),
                Some(("False", "Failed")),
                None,
            ],
        ),
    ];
    for (what, svc, expected) in cases {
        let mut world =
            [Cluster::new("c1").with(service_export("hello", 100, json!({})), svc, None)];
        converge(&mut world, &[], 200);
        let got = ["Valid", "Ready", "Conflict"].map(|t| world[0].condition("hello", t));
        assert_eq!(got.each_ref().map(status_of), expected, "{what}");
        for c in got.iter().flatten() {
            assert_eq!(c.observed_generation, Some(1), "{what}");
            assert!(
                !c.message.is_empty(),
                "{what}: metav1.Condition needs a message"
            );
        }
    }
}

#[test]
fn a_condition_keeps_its_transition_time_while_its_status_holds() {
    let mut world = [Cluster::new("c1").with(
        service_export("hello", 100, json!({})),
        Some(service("hello", hello("10.96.0.10", false))),
        None,
    )];
    converge(&mut world, &[], 200);
    let first = world[0].condition("hello", "Valid").unwrap();
    converge(&mut world, &[], 900);
    assert_eq!(
        world[0]
            .condition("hello", "Valid")
            .unwrap()
            .last_transition_time,
        first.last_transition_time
    );
    // The Service goes: Valid flips, and the time moves.
    world[0].observed.services.clear();
    converge(&mut world, &[], 950);
    let flipped = world[0].condition("hello", "Valid").unwrap();
    assert_eq!(flipped.status, "False");
    assert_eq!(flipped.last_transition_time.0, at(950));
}

#[test]
fn a_cluster_set_ip_import_gets_ips_slices_and_a_derived_service() {
    let mut world = [Cluster::new("c1").with(
        service_export("hello", 100, json!({})),
        Some(service("hello", hello("10.96.0.10", true))),
        Some(pods(
            "hello",
            json!([{"addresses": ["10.1.0.5"], "conditions": {"ready": true}}]),
        )),
    )];
    converge(&mut world, &[], 200);
    let si = world[0].import("hello").expect("imported");
    assert_eq!(si.spec.type_, ServiceImportType::ClusterSetIp);
    assert_eq!(
        si.spec.ips.as_deref(),
        Some(&["10.255.0.1".to_owned(), "fd00:255::1".to_owned()][..])
    );
    let derived = derived_name(&ServiceKey::new("shop", "hello").unwrap());
    let svc = world[0]
        .observed
        .services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(derived.as_str()))
        .expect("a derived service");
    let spec = svc.spec.as_ref().unwrap();
    assert_eq!(
        spec.cluster_ips, si.spec.ips,
        "kube-proxy routes the clusterset IPs"
    );
    assert_eq!(spec.ip_family_policy.as_deref(), Some("RequireDualStack"));
    assert_eq!(spec.selector, None, "its endpoints are our slices");
    let slices = world[0].mcs_slices("hello");
    let got: Vec<(&str, &str, Vec<&str>, Option<bool>)> = slices
        .iter()
        .map(|s| {
            (
                s.metadata.name.as_deref().unwrap(),
                s.address_type.as_str(),
                s.endpoints
                    .iter()
                    .map(|e| e.addresses[0].as_str())
                    .collect(),
                s.endpoints[0].conditions.as_ref().unwrap().ready,
            )
        })
        .collect();
    let v4 = format!("{derived}-c1-ipv4");
    let v6 = format!("{derived}-c1-ipv6");
    assert_eq!(
        got,
        [
            (v4.as_str(), "IPv4", vec!["10.96.0.10"], Some(true)),
            (v6.as_str(), "IPv6", vec!["fd00::42"], Some(true)),
        ],
        "a ClusterSetIP slice holds the source cluster's cluster IPs"
    );
    let labels = slices[0].metadata.labels.as_ref().unwrap();
    assert_eq!(labels["kubernetes.io/service-name"], derived);
    assert_eq!(labels[LABEL_SOURCE_CLUSTER], "c1");
    assert_eq!(labels[LABEL_MANAGED_BY], MANAGED_BY);
}

#[test]
fn clusterset_ips_survive_a_restart_and_are_never_reused_while_held() {
    let mut world = [Cluster::new("c1").with(
        service_export("b", 100, json!({})),
        Some(service("b", hello("10.96.0.11", false))),
        None,
    )];
    converge(&mut world, &[], 200);
    assert_eq!(
        world[0].import("b").unwrap().spec.ips.as_deref(),
        Some(&["10.255.0.1".to_owned()][..])
    );
    // A restart: a fresh controller (no memory) plans from what the cluster holds, and a
    // new service "a" sorts before "b" but must not take b's address.
    let mut restarted = world[0].clone();
    restarted.last = Plan::default();
    restarted = restarted.with(
        service_export("a", 300, json!({})),
        Some(service("a", hello("10.96.0.12", false))),
        None,
    );
    let mut world = [restarted];
    converge(&mut world, &[], 400);
    assert_eq!(
        world[0].import("b").unwrap().spec.ips.as_deref(),
        Some(&["10.255.0.1".to_owned()][..])
    );
    assert_eq!(
        world[0].import("a").unwrap().spec.ips.as_deref(),
        Some(&["10.255.0.2".to_owned()][..])
    );
}

#[test]
fn without_a_range_the_ips_are_the_derived_services_assigned_cluster_ips() {
    let mut c1 = Cluster::new("c1").with(
        service_export("hello", 100, json!({})),
        Some(service("hello", hello("10.96.0.10", false))),
        None,
    );
    c1.settings.clusterset_ranges.clear();
    let mut world = [c1];
    converge(&mut world, &[], 200);
    assert_eq!(
        world[0].import("hello").unwrap().spec.ips,
        None,
        "not assigned yet"
    );
    // The API server assigns the derived Service a cluster IP.
    for s in &mut world[0].observed.services {
        if s.metadata
            .name
            .as_deref()
            .is_some_and(|n| n.starts_with("derived-"))
        {
            Arc::make_mut(s).spec.as_mut().unwrap().cluster_ips = Some(vec!["10.96.7.7".into()]);
        }
    }
    let p = plan(
        &world[0].observed,
        Some(&ClusterSetView::default()),
        &world[0].settings,
        at(300),
    );
    assert_eq!(
        p.imports[0].spec.ips.as_deref(),
        Some(&["10.96.7.7".to_owned()][..])
    );
    assert_eq!(
        p.services[0].spec.as_ref().unwrap().cluster_ips,
        None,
        "not pinned: the API server owns it"
    );
}

#[test]
fn a_headless_import_has_pods_with_hostnames_and_no_ips_or_derived_service() {
    let mut world = [Cluster::new("c1").with(
        service_export("db", 100, json!({})),
        Some(service(
            "db",
            json!({"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}),
        )),
        Some(pods(
            "db",
            json!([
                {"addresses": ["10.1.0.5"], "hostname": "db-0", "zone": "z1"},
                {"addresses": ["10.1.0.6"], "hostname": "db-1", "conditions": {"ready": false}},
            ]),
        )),
    )];
    converge(&mut world, &[], 200);
    let si = world[0].import("db").unwrap();
    assert_eq!(si.spec.type_, ServiceImportType::Headless);
    assert_eq!(si.spec.ips, None);
    assert!(world[0].last.services.is_empty());
    let slices = world[0].mcs_slices("db");
    let [slice] = &slices[..] else {
        panic!("one slice: {slices:?}")
    };
    type Row<'a> = (&'a str, Option<&'a str>, Option<&'a str>, Option<bool>);
    let got: Vec<Row> = slice
        .endpoints
        .iter()
        .map(|e| {
            (
                e.addresses[0].as_str(),
                e.hostname.as_deref(),
                e.zone.as_deref(),
                e.conditions.as_ref().unwrap().ready,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("10.1.0.5", Some("db-0"), Some("z1"), Some(true)),
            ("10.1.0.6", Some("db-1"), None, Some(false)),
        ]
    );
    assert!(
        !slice
            .metadata
            .labels
            .as_ref()
            .unwrap()
            .contains_key("kubernetes.io/service-name"),
        "no derived Service to attach to"
    );
}

#[test]
fn imports_go_only_to_existing_namespaces() {
    let mut c2 = Cluster::new("c2");
    c2.observed.namespaces = BTreeSet::from(["default".to_owned()]);
    let mut world = [
        Cluster::new("c1").with(
            service_export("hello", 100, json!({})),
            Some(service("hello", hello("10.96.0.10", false))),
            None,
        ),
        c2,
    ];
    converge(&mut world, &[], 200);
    assert!(world[0].import("hello").is_some());
    assert!(
        world[1].import("hello").is_none(),
        "c2 has no namespace shop"
    );
}

#[test]
fn a_withheld_clusters_slices_go_and_the_import_goes_with_the_last_export() {
    let mut world = [
        Cluster::new("c1").with(
            service_export("hello", 100, json!({})),
            Some(service("hello", hello("10.96.0.10", false))),
            None,
        ),
        Cluster::new("c2").with(
            service_export("hello", 150, json!({})),
            Some(service("hello", hello("10.96.1.10", false))),
            None,
        ),
        Cluster::new("c3"),
    ];
    converge(&mut world, &[], 200);
    let sources = |c: &Cluster| -> Vec<String> {
        c.mcs_slices("hello")
            .iter()
            .map(|s| s.metadata.labels.as_ref().unwrap()[LABEL_SOURCE_CLUSTER].clone())
            .collect()
    };
    assert_eq!(sources(&world[2]), ["c1", "c2"]);
    // c2's lease at the broker expires: c3 drops c2's slices, keeps the import.
    converge(&mut world, &["c2"], 300);
    assert_eq!(sources(&world[2]), ["c1"]);
    let clusters: Vec<&str> = world[2]
        .import("hello")
        .unwrap()
        .status
        .as_ref()
        .unwrap()
        .clusters
        .iter()
        .map(|c| c.cluster.as_str())
        .collect();
    assert_eq!(clusters, ["c1"]);
    // c1 unexports: nothing is left anywhere.
    world[0].unexport("hello");
    converge(&mut world, &["c2"], 400);
    assert!(world[2].import("hello").is_none());
    assert!(world[2].mcs_slices("hello").is_empty());
    assert!(
        world[2].observed.services.is_empty(),
        "the derived Service went too"
    );
}

#[test]
fn foreign_slices_and_services_are_never_deleted() {
    let mut c1 = Cluster::new("c1");
    c1.observed.slices.push(Arc::new(pods("web", json!([]))));
    c1.observed
        .services
        .push(Arc::new(service("web", json!({"clusterIP": "10.96.0.1"}))));
    let p = plan(
        &c1.observed,
        Some(&ClusterSetView::default()),
        &c1.settings,
        at(1),
    );
    assert!(p.deletes.is_empty(), "{:?}", p.deletes);
}

#[test]
fn plan_is_deterministic_and_idempotent() {
    let mut world = [
        Cluster::new("c1").with(
            service_export("hello", 100, json!({})),
            Some(service("hello", hello("10.96.0.10", true))),
            None,
        ),
        Cluster::new("c2").with(
            service_export("hello", 150, json!({})),
            Some(service("hello", hello("10.96.1.10", false))),
            None,
        ),
    ];
    converge(&mut world, &[], 200);
    let view = {
        let mut v = ClusterSetView::default();
        for c in &world {
            for e in &c.last.exports {
                v.exports
                    .insert((c.settings.cluster.clone(), e.service.clone()), e.clone());
            }
        }
        v
    };
    for c in &world {
        let again = plan(&c.observed, Some(&view), &c.settings, at(999));
        assert_eq!(again, c.last, "a converged plan is a fixed point");
    }
}

#[test]
fn service_import_ready_condition_table() {
    let ready = |c: &Cluster, name: &str| -> (String, String) {
        let si = c.import(name).expect("imported");
        let cond = &si.status.as_ref().unwrap().conditions[0];
        assert_eq!(cond.type_, "Ready");
        (cond.status.clone(), cond.reason.clone())
    };
    let mut v6_only = hello("fd00::10", false);
    v6_only["clusterIPs"] = json!(["fd00::10"]);
    v6_only["ipFamilies"] = json!(["IPv6"]);
    let mut c1 = Cluster::new("c1")
        .with(
            service_export("hello", 100, json!({})),
            Some(service("hello", hello("10.96.0.10", false))),
            None,
        )
        .with(
            service_export("six", 100, json!({})),
            Some(service("six", v6_only)),
            None,
        )
        .with(
            service_export("db", 100, json!({})),
            Some(service("db", json!({"clusterIP": "None"}))),
            None,
        );
    c1.settings.clusterset_ranges = vec!["10.255.0.0/24".parse().unwrap()];
    let mut world = [c1];
    converge(&mut world, &[], 200);
    assert_eq!(ready(&world[0], "hello"), ("True".into(), "Ready".into()));
    assert_eq!(
        ready(&world[0], "db"),
        ("True".into(), "Ready".into()),
        "headless"
    );
    assert_eq!(
        ready(&world[0], "six"),
        ("False".into(), "IPFamilyNotSupported".into()),
        "no IPv6 range here"
    );

    let mut no_range = world[0].clone();
    no_range.settings.clusterset_ranges.clear();
    no_range.observed.service_imports.clear();
    no_range.observed.services.retain(|s| {
        !s.metadata
            .name
            .as_deref()
            .is_some_and(|n| n.starts_with("derived-"))
    });
    let mut world = [no_range];
    converge(&mut world, &[], 300);
    assert_eq!(
        ready(&world[0], "hello"),
        ("False".into(), "Pending".into()),
        "until the API server assigns the derived Service's IPs"
    );
}
