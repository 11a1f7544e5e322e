//! The Kubernetes user story against real API servers: three lab clusters, each with its own
//! etcd, kube-apiserver and kube-controller-manager (built from pinned Go modules by
//! tests/k8s/build.sh, cached), the Go node agent standing in for a kubelet, and the gateway
//! running `--source kube` as its ServiceAccount with exactly deploy/'s RBAC. Driven only
//! through kubectl; the steps live in `causeway_netlab::kube_story`.

use causeway_netlab::kube::KubeLab;
use causeway_netlab::kube_story;
use causeway_netlab::lab::LabSpec;

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(25)..].join("\n")
}

fn logs(kube: &KubeLab) -> String {
    let mut logs = String::new();
    for c in kube.lab().topology().clusters() {
        for d in ["apiserver", "controller-manager", "node-agent"] {
            let name = format!("c{c}-{d}");
            logs.push_str(&format!(
                "\n--- {name} ---\n{}",
                tail(&kube.daemon_log(&name))
            ));
        }
        logs.push_str(&format!(
            "\n--- c{c} gateway ---\n{}",
            tail(&kube.lab().gateway_log(c))
        ));
    }
    logs
}

#[test]
#[ignore = "needs root: netlab"]
fn kube_story_export_import_reach_withdraw_through_kubectl() {
    let mut kube = match KubeLab::up(LabSpec::new("cwk", env!("CARGO_BIN_EXE_causeway"))) {
        Ok(kube) => kube,
        Err(e) => panic!("the kube lab did not come up: {e:#}"),
    };
    println!("{}", kube.usage());
    let outcome = kube_story::run(&mut kube, &mut |line| println!("{line}"));
    match outcome {
        Ok(report) => {
            assert_eq!(
                report.import_latency.len(),
                2,
                "an import per other cluster"
            );
            for (c, latency) in &report.import_latency {
                println!("apply -> ServiceImport in c{c}: {} ms", latency.as_millis());
            }
        }
        Err(e) => panic!(
            "the story failed: {e:#}\n(logs in {}){}",
            kube.lab().log_dir().display(),
            logs(&kube)
        ),
    }
    install_is_accepted_by_a_real_api_server(&kube);
    kube.down().expect("tearing the kube lab down");
}

/// `causeway install … | kubectl apply -f -` against c1's real API server: server-side dry run
/// (admission, schema and CRD validation run; nothing is stored, so no gateway pod needs a
/// runtime), then the same with the ServiceMonitor left out by the flag.
fn install_is_accepted_by_a_real_api_server(kube: &KubeLab) {
    let t = kube.lab().topology();
    let install = std::process::Command::new(env!("CARGO_BIN_EXE_causeway"))
        .args(["install", "--cluster-id", "c1", "--broker"])
        .arg(t.broker_listen().to_string())
        .arg("--cidr")
        .arg(t.cluster_cidr(1))
        .output()
        .expect("running causeway install");
    assert!(
        install.status.success(),
        "{}",
        String::from_utf8_lossy(&install.stderr)
    );
    let yaml = String::from_utf8(install.stdout).expect("UTF-8 manifests");
    println!(
        "$ causeway install --cluster-id c1 ... | kubectl --context c1 apply --dry-run=server -f -"
    );
    let applied = kube
        .kubectl_ok(1, &["apply", "--dry-run=server", "-f", "-"], Some(&yaml))
        .unwrap_or_else(|e| {
            panic!("the real API server refused causeway install's objects: {e:#}")
        });
    let kinds = applied.lines().count();
    println!("{applied}");
    assert!(
        kinds >= 15,
        "expected every object applied, got:\n{applied}"
    );
    assert!(
        applied.contains("deployment.apps/causeway-gateway"),
        "{applied}"
    );
}
