//! Every manifest causeway ships validates offline against the Kubernetes OpenAPI schemas:
//! `causeway install` (run as a user would, with a TLS directory from `causeway certs`),
//! `causeway crds`, and `deploy/` rendered as kustomize would (base, monitoring, each overlay;
//! `manifests::render` implements the kustomize subset those files use, since no kustomize
//! binary can be installed here).
//!
//! The validator is `tests/validate-manifests.py`: kubernetes-validate (PyPI, installed by
//! `tests/install-deps.sh`) for built-in kinds, our own generated CRD schemas for ServiceExport
//! and ServiceImport instances, and a documented skip for the ServiceMonitor. A bad sample of
//! each kind must fail, so that the validator is known not to pass everything.

use std::path::{Path, PathBuf};
use std::process::Command;

use causeway::source::k8s::crd::{ServicePort, v1alpha1, v1beta1};
use causeway::source::k8s::manifests::{Disk, render, to_yaml};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the causeway binary; panics with its stderr when it fails.
fn causeway(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_causeway"))
        .args(args)
        .output()
        .expect("running causeway");
    assert!(
        out.status.success(),
        "causeway {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("causeway prints UTF-8")
}

/// Runs the validator; returns (success, output).
fn validate(files: &[PathBuf]) -> (bool, String) {
    let out = Command::new("python3")
        .arg(root().join("tests/validate-manifests.py"))
        .args(files)
        .output()
        .expect("python3 is needed to validate manifests (tests/install-deps.sh installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains("ModuleNotFoundError"),
        "the validator's Python modules are missing; run tests/install-deps.sh:\n{text}"
    );
    (out.status.success(), text)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("writing a manifest");
    path
}

/// Valid ServiceExport and ServiceImport objects of both versions, from our types.
fn samples() -> String {
    let import_spec = v1beta1::ServiceImportSpec {
        ports: vec![ServicePort {
            name: Some("http".into()),
            protocol: Some("TCP".into()),
            app_protocol: None,
            port: 80,
        }],
        ips: Some(vec!["10.42.0.1".into()]),
        ip_families: Some(vec!["IPv4".into()]),
        ..Default::default()
    };
    let mut import = v1beta1::ServiceImport::new("web", import_spec);
    import.metadata.namespace = Some("shop".into());
    import.status = Some(v1beta1::ServiceImportStatus {
        clusters: vec![v1beta1::ClusterStatus {
            cluster: "c1".into(),
        }],
        conditions: vec![],
    });
    let mut export = v1beta1::ServiceExport::new("web", Default::default());
    export.metadata.namespace = Some("shop".into());
    let mut old_export = v1alpha1::ServiceExport::new("web", Default::default());
    old_export.metadata.namespace = Some("shop".into());
    let values: Vec<serde_json::Value> = [
        serde_json::to_value(&import),
        serde_json::to_value(&export),
        serde_json::to_value(&old_export),
    ]
    .into_iter()
    .map(|v| v.expect("our objects serialize"))
    .collect();
    to_yaml(&values)
}

/// The MCS objects README.md shows users (its ```yaml blocks with our API group).
fn readme_mcs_examples() -> String {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("reading README.md");
    let blocks: Vec<&str> = readme
        .split("```yaml\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .filter(|b| b.contains("apiVersion: multicluster.x-k8s.io/"))
        .collect();
    assert!(!blocks.is_empty(), "README.md shows no ServiceExport");
    blocks.iter().map(|b| format!("---\n{b}")).collect()
}

/// One invalid object per way of validating.
const BAD: &str = r#"
apiVersion: multicluster.x-k8s.io/v1beta1
kind: ServiceImport
metadata: { name: web, namespace: shop }
spec: { type: Bogus, ports: [] }
---
apiVersion: multicluster.x-k8s.io/v1beta1
kind: ServiceImport
metadata: { name: web2, namespace: shop }
spec: { type: Headless }
---
apiVersion: apps/v1
kind: Deployment
metadata: { name: x, namespace: y }
spec: { replicas: two }
---
apiVersion: v1
kind: Service
metadata: { name: x, namespace: y }
spec: { bogus: 1 }
---
apiVersion: example.com/v1
kind: Unknown
metadata: { name: x }
"#;

#[test]
fn every_shipped_manifest_validates_against_the_kubernetes_schemas() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let d = |p: &str| dir.path().join(p).to_string_lossy().into_owned();
    causeway(&["certs", "init", "--out", &d("ca")]);
    causeway(&[
        "certs",
        "issue",
        "--cluster",
        "c1",
        "--ca-dir",
        &d("ca"),
        "--out",
        &d("c1-tls"),
    ]);
    let install = causeway(&[
        "install",
        "--cluster-id",
        "c1",
        "--broker",
        "203.0.113.10:7443,203.0.113.11:7443",
        "--cidr",
        "10.244.0.0/16,10.96.0.0/12",
        "--service-monitor",
        "--tls-dir",
        &d("c1-tls"),
        "--image",
        "registry.example/causeway:0.1.0",
    ]);
    assert!(
        install.contains("BEGIN PRIVATE KEY"),
        "the Secret carries the key"
    );

    let mut files = vec![
        write(dir.path(), "crds.yaml", &causeway(&["crds"])),
        write(dir.path(), "install.yaml", &install),
        write(dir.path(), "samples.yaml", &samples()),
        write(dir.path(), "readme.yaml", &readme_mcs_examples()),
    ];
    let deploy = Disk(root().join("deploy"));
    for kustomization in [
        "base",
        "monitoring",
        "overlays/example-c1",
        "overlays/example-c2",
    ] {
        let objects = render(&deploy, kustomization)
            .unwrap_or_else(|e| panic!("rendering deploy/{kustomization}: {e}"));
        let name = format!("{}.yaml", kustomization.replace('/', "-"));
        files.push(write(dir.path(), &name, &to_yaml(&objects)));
    }

    let (ok, output) = validate(&files);
    assert!(ok, "manifests failed validation:\n{output}");
    let valid = output.lines().filter(|l| l.starts_with("ok ")).count();
    let skipped: Vec<&str> = output
        .lines()
        .filter(|l| l.starts_with("skipped"))
        .collect();
    // The base has 17 objects (2 CRDs among them); install adds the Secret; `crds` prints 2;
    // 3 samples; README's ServiceExport; each overlay has the base's 17. The ServiceMonitor (in install, monitoring
    // and example-c1) is skipped.
    assert_eq!(valid, 18 + 2 + 3 + 1 + 17 + 17 + 17, "{output}");
    assert_eq!(skipped.len(), 3, "{output}");
    assert!(
        skipped.iter().all(|l| l.contains("ServiceMonitor")),
        "{output}"
    );
    for needle in [
        "ok      Secret/causeway-tls",
        "ok      Deployment/causeway-gateway",
        "ok      Deployment/causeway-dns",
        "ok      Service/causeway-gateway-admin",
        "ok      ServiceImport/web",
        "ok      ServiceExport/web",
        "readme.yaml",
        "ok      CustomResourceDefinition/serviceimports.multicluster.x-k8s.io",
    ] {
        assert!(output.contains(needle), "{needle}:\n{output}");
    }

    // The validator rejects each kind of mistake (with our CRDs present for the instances).
    let bad = write(dir.path(), "bad.yaml", BAD);
    let (ok, output) = validate(&[files[0].clone(), bad]);
    assert!(!ok, "bad manifests passed:\n{output}");
    assert_eq!(
        output.lines().filter(|l| l.starts_with("FAILED")).count(),
        5,
        "{output}"
    );
}
