use std::collections::BTreeMap;
use std::path::PathBuf;

use super::*;
use crate::model::fixtures::id;

fn deploy_dir() -> Disk {
    Disk(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy"))
}

fn c1() -> Install {
    Install {
        cluster_id: id("c1"),
        brokers: vec!["203.0.113.10:7443".parse().unwrap()],
        cidrs: vec![
            "10.244.0.0/16".parse().unwrap(),
            "10.96.0.0/12".parse().unwrap(),
        ],
        image: None,
        service_monitor: true,
        tls: None,
    }
}

/// Objects keyed by their id, for order-insensitive comparison (kustomize orders by kind).
fn by_id(objects: Vec<Value>) -> BTreeMap<String, Value> {
    objects.into_iter().map(|o| (object_id(&o), o)).collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name}"))
}

/// A tree of in-memory files, for renderer tests.
struct Mem(Vec<(&'static str, &'static str)>);

impl Files for Mem {
    fn read(&self, path: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, t)| (*t).to_owned())
    }
}

const CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm, namespace: ns}\ndata: {a: '1', list: '[]'}\n";

fn render_with(kustomization: &'static str) -> Result<Vec<Value>, RenderError> {
    let files = Mem(vec![
        ("o/kustomization.yaml", kustomization),
        ("b/cm.yaml", CM),
    ]);
    render(&files, "o")
}

#[test]
fn install_prints_the_same_objects_as_the_example_overlays() {
    let overlay = render(&deploy_dir(), "overlays/example-c1").unwrap();
    assert_eq!(by_id(install(&c1()).unwrap()), by_id(overlay));

    let c2 = Install {
        cluster_id: id("c2"),
        brokers: vec![
            "203.0.113.10:7443".parse().unwrap(),
            "203.0.113.11:7443".parse().unwrap(),
        ],
        cidrs: vec![
            "10.245.0.0/16".parse().unwrap(),
            "10.97.0.0/12".parse().unwrap(),
        ],
        image: Some("registry.example/causeway:0.1.0".into()),
        service_monitor: false,
        tls: None,
    };
    let overlay = render(&deploy_dir(), "overlays/example-c2").unwrap();
    assert_eq!(by_id(install(&c2).unwrap()), by_id(overlay));
}

#[test]
fn install_fills_in_the_cluster_and_optional_parts() {
    let objects = install(&c1()).unwrap();
    let config = find(&objects, "ConfigMap", "causeway-config");
    assert_eq!(config["data"]["cluster-id"], "c1");
    assert_eq!(config["data"]["broker"], "203.0.113.10:7443");
    assert_eq!(config["data"]["cidr"], "10.244.0.0/16,10.96.0.0/12");
    find(&objects, "ServiceMonitor", "causeway-gateway");
    assert!(objects.iter().all(|o| o["kind"] != "Secret"));
    for object in &objects {
        assert_eq!(
            object["metadata"]["labels"]["app.kubernetes.io/part-of"],
            "causeway",
            "{}",
            object_id(object)
        );
    }

    let tls = TlsFiles {
        ca_crt: "CA".into(),
        tls_crt: "CRT".into(),
        tls_key: "KEY".into(),
    };
    let objects = install(&Install {
        service_monitor: false,
        tls: Some(tls),
        image: Some("example/causeway:1".into()),
        ..c1()
    })
    .unwrap();
    assert!(objects.iter().all(|o| o["kind"] != "ServiceMonitor"));
    let secret = find(&objects, "Secret", "causeway-tls");
    assert_eq!(secret["metadata"]["namespace"], "causeway-system");
    assert_eq!(secret["stringData"]["tls.key"], "KEY");
    let gateway = find(&objects, "Deployment", "causeway-gateway");
    assert_eq!(
        gateway["spec"]["template"]["spec"]["containers"][0]["image"],
        "example/causeway:1"
    );
    let dns = find(&objects, "Deployment", "causeway-dns");
    assert_eq!(
        dns["spec"]["template"]["spec"]["containers"][0]["image"],
        "example/causeway:1"
    );
}

/// The CRDs in deploy/base are exactly what the Rust types generate.
#[test]
fn deploy_base_crds_are_the_generated_ones() {
    let on_disk = deploy_dir()
        .read("base/crds.yaml")
        .expect("deploy/base/crds.yaml exists");
    assert!(
        on_disk == crate::source::k8s::crd::crds_yaml().unwrap(),
        "deploy/base/crds.yaml is stale: run `cargo run -- crds > deploy/base/crds.yaml`"
    );
}

/// `install` renders the compiled-in copy of deploy/: every file of base and monitoring must be
/// in it (the copy itself is `include_str!`, so it cannot differ from the disk).
#[test]
fn every_deploy_file_is_embedded() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy");
    for dir in ["base", "monitoring"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let path = format!("{dir}/{name}");
            assert!(
                EMBEDDED.iter().any(|(p, _)| *p == path),
                "{path} is not in manifests::EMBEDDED"
            );
        }
    }
}

#[test]
fn the_gateway_runs_as_the_issue_asks() {
    let objects = install(&c1()).unwrap();
    let gateway = find(&objects, "Deployment", "causeway-gateway");
    let pod = &gateway["spec"]["template"]["spec"];
    assert_eq!(gateway["spec"]["replicas"], 2);
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["nodeSelector"]["causeway.dev/gateway"], "true");
    assert_eq!(pod["serviceAccountName"], "causeway-gateway");
    let container = &pod["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for arg in ["gateway", "--source=kube", "--leader-elect"] {
        assert!(args.contains(&arg), "{arg} missing from {args:?}");
    }
    assert_eq!(
        container["securityContext"]["capabilities"]["add"],
        json!(["NET_ADMIN", "NET_BIND_SERVICE"])
    );
    assert_eq!(
        container["securityContext"]["capabilities"]["drop"],
        json!(["ALL"])
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let tun = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "tun")
        .unwrap();
    assert_eq!(tun["hostPath"]["path"], "/dev/net/tun");
    let tls = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "tls")
        .unwrap();
    assert_eq!(tls["secret"]["secretName"], "causeway-tls");
    // The DNS Service reaches the DNS replicas' DNS port; the replicas follow the gateway's
    // admin port through a Service over the gateway pods (only the Ready leader backs it).
    let dns = find(&objects, "Service", "causeway-dns");
    let replicas = find(&objects, "Deployment", "causeway-dns");
    assert_eq!(
        dns["spec"]["selector"],
        replicas["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(dns["spec"]["ports"][0]["port"], 53);
    assert_eq!(replicas["spec"]["replicas"], 2);
    let container = &replicas["spec"]["template"]["spec"]["containers"][0];
    let dns_port = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == dns["spec"]["ports"][0]["targetPort"])
        .expect("the DNS Service's target port is a named port of the replicas");
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.contains(&format!("--listen=0.0.0.0:{}", dns_port["containerPort"]).as_str()),
        "{args:?}"
    );
    let admin = find(&objects, "Service", "causeway-gateway-admin");
    assert_eq!(
        admin["spec"]["selector"],
        gateway["spec"]["selector"]["matchLabels"]
    );
    let from = args.iter().find_map(|a| a.strip_prefix("--from=")).unwrap();
    assert_eq!(
        from,
        format!(
            "http://causeway-gateway-admin.causeway-system.svc:{}",
            admin["spec"]["ports"][0]["port"]
        )
    );
    // The admin Service must not be scraped twice by the ServiceMonitor's selector.
    assert_ne!(
        admin["metadata"]["labels"]["app.kubernetes.io/name"],
        "causeway-gateway"
    );
}

/// Every verb of every rule, as `group/resource verb` (resourceNames appended).
fn grants(role: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for rule in role["rules"].as_array().unwrap() {
        let names = rule["resourceNames"]
            .as_array()
            .map(|n| format!(" {n:?}"))
            .unwrap_or_default();
        for group in rule["apiGroups"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                for verb in rule["verbs"].as_array().unwrap() {
                    out.push(format!(
                        "{}/{} {}{names}",
                        group.as_str().unwrap(),
                        resource.as_str().unwrap(),
                        verb.as_str().unwrap()
                    ));
                }
            }
        }
    }
    out.sort();
    out
}

#[test]
fn rbac_is_least_privilege() {
    let objects = install(&c1()).unwrap();
    let controller = grants(find(&objects, "ClusterRole", "causeway-gateway"));
    let expected: Vec<String> = [
        "/namespaces list",
        "/namespaces watch",
        "/services create",
        "/services delete",
        "/services list",
        "/services patch",
        "/services watch",
        "about.k8s.io/clusterproperties get",
        "discovery.k8s.io/endpointslices create",
        "discovery.k8s.io/endpointslices delete",
        "discovery.k8s.io/endpointslices list",
        "discovery.k8s.io/endpointslices patch",
        "discovery.k8s.io/endpointslices watch",
        "multicluster.x-k8s.io/serviceexports list",
        "multicluster.x-k8s.io/serviceexports watch",
        "multicluster.x-k8s.io/serviceexports/status patch",
        "multicluster.x-k8s.io/serviceimports create",
        "multicluster.x-k8s.io/serviceimports delete",
        "multicluster.x-k8s.io/serviceimports list",
        "multicluster.x-k8s.io/serviceimports patch",
        "multicluster.x-k8s.io/serviceimports watch",
        "multicluster.x-k8s.io/serviceimports/status patch",
    ]
    .map(String::from)
    .to_vec();
    assert_eq!(controller, expected);
    let leases = grants(find(&objects, "Role", "causeway-gateway-leader-election"));
    assert_eq!(
        leases,
        [
            "coordination.k8s.io/leases create",
            "coordination.k8s.io/leases get [String(\"causeway-gateway\")]",
            "coordination.k8s.io/leases update [String(\"causeway-gateway\")]",
        ]
    );
    // Users, through the aggregated roles, never write ServiceImports; nobody gets a wildcard.
    for role in objects.iter().filter(|o| o["kind"] == "ClusterRole") {
        let all = grants(role);
        assert!(!all.iter().any(|g| g.contains('*')), "{all:?}");
        let aggregated = role["metadata"]["labels"]
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.starts_with("rbac.authorization.k8s.io/aggregate-to-"));
        if aggregated {
            for grant in all.iter().filter(|g| g.contains("serviceimports")) {
                assert!(
                    grant.ends_with(" get")
                        || grant.ends_with(" list")
                        || grant.ends_with(" watch"),
                    "users may only read ServiceImports: {grant}"
                );
            }
        }
    }
    let view = find(&objects, "ClusterRole", "causeway-mcs-view");
    assert_eq!(
        view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"],
        "true"
    );
    for binding in ["ClusterRoleBinding", "RoleBinding"] {
        let b = objects.iter().find(|o| o["kind"] == binding).unwrap();
        assert_eq!(b["subjects"][0]["name"], "causeway-gateway");
        assert_eq!(b["subjects"][0]["namespace"], "causeway-system");
    }
}

#[test]
fn json_patch_operations() {
    let patch = |ops: &str| {
        let mut object = json!({"a": {"list": [1, 2], "k": "v"}});
        let ops: Value = serde_norway::from_str(ops).unwrap();
        let mut result = Ok(());
        for op in ops.as_array().unwrap() {
            result = result.and_then(|()| apply_op(&mut object, op));
        }
        result.map(|()| object)
    };
    let cases = [
        (
            r#"[{op: add, path: /a/list/-, value: 3}]"#,
            Ok(json!({"a": {"list": [1, 2, 3], "k": "v"}})),
        ),
        (
            r#"[{op: add, path: /a/list/0, value: 0}]"#,
            Ok(json!({"a": {"list": [0, 1, 2], "k": "v"}})),
        ),
        (
            r#"[{op: add, path: /a/n, value: {x: 1}}]"#,
            Ok(json!({"a": {"list": [1, 2], "k": "v", "n": {"x": 1}}})),
        ),
        (
            r#"[{op: replace, path: /a/k, value: w}, {op: remove, path: /a/list/1}]"#,
            Ok(json!({"a": {"list": [1], "k": "w"}})),
        ),
        (
            r#"[{op: replace, path: /a/missing, value: 1}]"#,
            Err("no such location"),
        ),
        (r#"[{op: remove, path: /a/list/5}]"#, Err("not an index")),
        (
            r#"[{op: add, path: /nowhere/x, value: 1}]"#,
            Err("does not exist"),
        ),
        (
            r#"[{op: move, from: /a/k, path: /b}]"#,
            Err("unsupported operation"),
        ),
        (r#"[{op: add, path: /a/x}]"#, Err("no value")),
    ];
    for (ops, expected) in cases {
        match (patch(ops), expected) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{ops}"),
            (Err(got), Err(want)) => assert!(got.contains(want), "{ops}: {got}"),
            (got, want) => panic!("{ops}: got {got:?}, expected {want:?}"),
        }
    }
}

#[test]
fn the_renderer_refuses_what_it_does_not_implement() {
    let ok = render_with(
        "resources: [../b/cm.yaml]\nlabels: [{pairs: {x: y}}]\npatches:\n  - target: {kind: ConfigMap, name: cm}\n    patch: '[{op: replace, path: /data/a, value: \"2\"}]'\n",
    )
    .unwrap();
    assert_eq!(ok[0]["data"]["a"], "2");
    assert_eq!(ok[0]["metadata"]["labels"]["x"], "y");

    let cases: [(&'static str, &str); 7] = [
        (
            "resources: [../b/cm.yaml]\nnamespace: other\n",
            "unsupported kustomization field \"namespace\"",
        ),
        (
            "resources: [../b/cm.yaml]\nlabels: [{pairs: {x: y}, includeSelectors: true}]\n",
            "labels.includeSelectors",
        ),
        (
            "resources: [../b/missing.yaml]\n",
            "b/missing.yaml: no such file",
        ),
        ("resources: [../b/cm.yaml, ../b/cm.yaml]\n", "defined twice"),
        (
            "resources: [../b/cm.yaml]\npatches: [{target: {kind: ConfigMap, name: other}, patch: '[]'}]\n",
            "targets ConfigMap/other",
        ),
        (
            "resources: [../b/cm.yaml]\npatches: [{path: strategic.yaml}]\n",
            "no target",
        ),
        (
            "resources: [../b/cm.yaml]\npatches: [{target: {kind: ConfigMap, name: cm, namespace: ns}, patch: '[]'}]\n",
            "unsupported target field",
        ),
    ];
    for (kustomization, expected) in cases {
        let err = render_with(kustomization).unwrap_err().to_string();
        assert!(err.contains(expected), "{kustomization}: {err}");
    }
}

#[test]
fn paths_resolve_dot_dot_within_the_tree() {
    assert_eq!(join("overlays/example-c1", "../../base"), "base");
    assert_eq!(join("base", "./crds.yaml"), "base/crds.yaml");
    assert_eq!(join("", "../../x"), "x");
}
