//! The Helm chart in deploy/helm: `helm lint` is clean, and `helm template` renders the same
//! objects as `causeway install` with the same settings (compared as parsed objects, keyed by
//! kind, namespace and name). helm is built from its pinned Go module by tests/k8s/build.sh
//! (tests/run.sh builds it). The templates are generated from `causeway install` by
//! deploy/helm/generate.py, so a change to deploy/ without regenerating fails here.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use serde::Deserialize;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/helm");
const BUILD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/k8s/build.sh");

fn helm() -> PathBuf {
    let out = Command::new(BUILD)
        .args(["--path", "helm"])
        .output()
        .expect("running tests/k8s/build.sh --path helm");
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        path.exists(),
        "{} is not built: run tests/k8s/build.sh helm",
        path.display()
    );
    path
}

type Objects = BTreeMap<(String, String, String), serde_json::Value>;

fn objects(yaml: &str) -> Objects {
    let mut all = Objects::new();
    for doc in serde_norway::Deserializer::from_str(yaml) {
        let value = serde_json::Value::deserialize(doc).expect("a YAML document");
        if value.is_null() {
            continue;
        }
        let s = |p: &str| {
            value
                .pointer(p)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned()
        };
        let key = (s("/kind"), s("/metadata/namespace"), s("/metadata/name"));
        assert!(all.insert(key.clone(), value).is_none(), "{key:?} twice");
    }
    all
}

fn run(command: &mut Command) -> String {
    let out = command.output().expect("running a command");
    assert!(
        out.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// `causeway install ARGS` against `helm template --include-crds SETS`.
fn same_objects(install: &[&str], sets: &[&str]) {
    let installed = objects(&run(Command::new(env!("CARGO_BIN_EXE_causeway"))
        .arg("install")
        .args(install)));
    let mut helm = Command::new(helm());
    helm.args(["template", "causeway", CHART, "--include-crds"]);
    for set in sets {
        helm.args(["--set", set]);
    }
    let rendered = objects(&run(&mut helm));
    let only = |a: &Objects, b: &Objects| -> Vec<(String, String, String)> {
        a.keys().filter(|k| !b.contains_key(*k)).cloned().collect()
    };
    assert!(
        only(&installed, &rendered).is_empty() && only(&rendered, &installed).is_empty(),
        "only in install: {:?}\nonly in helm: {:?}",
        only(&installed, &rendered),
        only(&rendered, &installed)
    );
    for (key, object) in &installed {
        assert_eq!(
            Some(object),
            rendered.get(key),
            "{key:?} differs between causeway install and helm template"
        );
    }
    assert!(installed.len() >= 17, "{} objects", installed.len());
}

#[test]
#[ignore = "needs helm: tests/k8s/build.sh helm"]
fn helm_template_renders_what_causeway_install_prints() {
    same_objects(
        &[
            "--cluster-id",
            "c1",
            "--broker",
            "198.51.100.2:7443",
            "--cidr",
            "10.244.0.0/16,10.96.0.0/12",
        ],
        &[
            "clusterId=c1",
            "brokers={198.51.100.2:7443}",
            "cidrs={10.244.0.0/16,10.96.0.0/12}",
        ],
    );
    same_objects(
        &[
            "--cluster-id",
            "c2",
            "--broker",
            "198.51.100.2:7443,198.51.100.3:7443",
            "--cidr",
            "10.245.0.0/16",
            "--image",
            "registry.example/causeway:1.2",
            "--service-monitor",
        ],
        &[
            "clusterId=c2",
            "brokers={198.51.100.2:7443,198.51.100.3:7443}",
            "cidrs={10.245.0.0/16}",
            "image=registry.example/causeway:1.2",
            "serviceMonitor.enabled=true",
        ],
    );
}

#[test]
#[ignore = "needs helm: tests/k8s/build.sh helm"]
fn helm_lint_is_clean_and_required_values_are_required() {
    let out = run(Command::new(helm()).args([
        "lint",
        CHART,
        "--strict",
        "--set",
        "clusterId=c1",
        "--set",
        "brokers={198.51.100.2:7443}",
        "--set",
        "cidrs={10.244.0.0/16}",
    ]));
    assert!(out.contains("0 chart(s) failed"), "{out}");
    let missing = Command::new(helm())
        .args([
            "template",
            "causeway",
            CHART,
            "--set",
            "clusterId=c1",
            "--set",
            "cidrs={10.244.0.0/16}",
        ])
        .output()
        .expect("running helm");
    assert!(!missing.status.success(), "rendered without brokers");
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("brokers: at least one is required"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
    // Values the install command has no flag for change what they should.
    let custom = objects(&run(Command::new(helm()).args([
        "template",
        "causeway",
        CHART,
        "--set",
        "clusterId=c1",
        "--set",
        "brokers={198.51.100.2:7443}",
        "--set",
        "cidrs={10.244.0.0/16}",
        "--set",
        "gateway.replicas=3",
        "--set",
        "tls.secretName=my-tls",
        "--set",
        "dns.resources.limits.memory=1Gi",
    ])));
    let gateway = &custom[&(
        "Deployment".into(),
        "causeway-system".into(),
        "causeway-gateway".into(),
    )];
    assert_eq!(
        gateway.pointer("/spec/replicas"),
        Some(&serde_json::json!(3))
    );
    assert_eq!(
        gateway
            .pointer("/spec/template/spec/volumes")
            .and_then(|v| v.as_array())
            .and_then(|v| { v.iter().find_map(|v| v.pointer("/secret/secretName")) }),
        Some(&serde_json::json!("my-tls"))
    );
    let dns = &custom[&(
        "Deployment".into(),
        "causeway-system".into(),
        "causeway-dns".into(),
    )];
    assert_eq!(
        dns.pointer("/spec/template/spec/containers/0/resources/limits/memory"),
        Some(&serde_json::json!("1Gi"))
    );
}
