//! The Kubernetes user story against real API servers: three lab clusters, each with its own
//! etcd, kube-apiserver and kube-controller-manager (built from pinned Go modules by
//! tests/k8s/build.sh, cached), the Go node agent standing in for a kubelet, and the gateway
//! running `--source kube` as its ServiceAccount with exactly deploy/'s RBAC. Driven only
//! through kubectl; the steps live in `causeway_netlab::kube_story`.

use causeway_netlab::kube::KubeLab;
use causeway_netlab::kube_story;
use causeway_netlab::lab::LabSpec;
use causeway_netlab::wait::poll_until;
use std::time::Duration;

/// The tests of this file run one at a time: each builds a whole kube lab with the same prefix
/// and host forward ports (and three control planes are plenty for 2 cores).
static ONE_LAB_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

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
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
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
    helm_install_is_accepted_by_a_real_api_server(&kube);
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
        .arg(t.cluster_cidrs(1).join(","))
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

/// What must not change across control-plane restarts: the c2 ServiceImport's uid (never
/// deleted and re-created), its MCS slices, and the c1 ServiceExport's conditions with their
/// transition times (no flapping).
fn snapshot(kube: &KubeLab) -> (String, String, String) {
    let get = |c: usize, what: &[&str]| -> String {
        kube.kubectl_ok(c, what, None)
            .unwrap_or_else(|e| panic!("{e:#}"))
    };
    let uid = get(
        2,
        &[
            "-n",
            "shop",
            "get",
            "serviceimport",
            "web",
            "-o",
            "jsonpath={.metadata.uid}",
        ],
    );
    let slices = get(
        2,
        &[
            "-n",
            "shop",
            "get",
            "endpointslices",
            "-l",
            "multicluster.kubernetes.io/service-name=web",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}:{.metadata.uid}:{.endpoints[*].addresses[0]} {end}",
        ],
    );
    let conditions = get(
        1,
        &[
            "-n",
            "shop",
            "get",
            "serviceexport",
            "web",
            "-o",
            "jsonpath={range .status.conditions[*]}{.type}={.status}@{.lastTransitionTime} {end}",
        ],
    );
    (uid, slices, conditions)
}

const API_YAML: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: shop}\nspec:\n  selector: {app: web}\n  ports: [{name: http, port: 8080, targetPort: 80}]\n---\napiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceExport\nmetadata: {name: api, namespace: shop}\n";

fn wait_import(kube: &KubeLab, c: usize, name: &str, present: bool) {
    let what = format!(
        "ServiceImport {name} {} in c{c}",
        if present { "present" } else { "gone" }
    );
    poll_until(&what, Duration::from_secs(60), || {
        let out = kube
            .kubectl(
                c,
                &["-n", "shop", "get", "serviceimport", name, "-o", "name"],
                None,
            )
            .map_err(|e| format!("{e:#}"))?;
        if out.status.success() == present {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    })
    .unwrap_or_else(|e| panic!("{e:#}{}", logs(kube)));
}

#[test]
#[ignore = "needs root: netlab"]
fn kube_gateways_ride_out_api_server_restarts_and_a_stopped_etcd() {
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut kube = match KubeLab::up(LabSpec::new("cwk", env!("CARGO_BIN_EXE_causeway"))) {
        Ok(kube) => kube,
        Err(e) => panic!("the kube lab did not come up: {e:#}"),
    };
    for c in kube.lab().topology().clusters() {
        kube.kubectl_ok(c, &["create", "namespace", "shop"], None)
            .expect("namespace shop");
    }
    kube.kubectl_ok(1, &["apply", "-f", "-"], Some(&kube_story::web_yaml()))
        .expect("apply web");
    kube.kubectl_ok(2, &["apply", "-f", "-"], Some(&kube_story::client_yaml()))
        .expect("apply client");
    kube.kubectl_ok(
        2,
        &[
            "-n",
            "shop",
            "wait",
            "--for=condition=Ready",
            "pod/client",
            "--timeout=60s",
        ],
        None,
    )
    .expect("client ready");
    wait_import(&kube, 2, "web", true);
    poll_until("ServiceExport web Ready", Duration::from_secs(60), || {
        let (_, _, conditions) = snapshot(&kube);
        if conditions.contains("Ready=True") {
            Ok(())
        } else {
            Err(conditions)
        }
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let before = snapshot(&kube);
    println!("before: {before:?}");

    // 1. Both API servers restart under their running gateways.
    for name in ["c1-apiserver", "c2-apiserver"] {
        kube.stop_daemon(name).expect("stopping");
    }
    for name in ["c1-apiserver", "c2-apiserver"] {
        kube.start_daemon(name)
            .unwrap_or_else(|e| panic!("restarting {name}: {e:#}"));
    }
    // The gateways resumed: a new export after the restart reaches c2...
    kube.kubectl_ok(1, &["apply", "-f", "-"], Some(API_YAML))
        .expect("apply api");
    wait_import(&kube, 2, "api", true);
    // ...and nothing that existed was re-created or flapped.
    let after = snapshot(&kube);
    println!("after the API server restarts: {after:?}");
    assert_eq!(
        before, after,
        "the import, its slices or the export's conditions changed across the restart"
    );

    // 2. c1's etcd stops: its gateway keeps serving DNS and the tunnel from its last state.
    kube.stop_daemon("c1-etcd").expect("stopping etcd");
    let answer = kube
        .lab()
        .resolve(1, 1, "web.shop.svc.global")
        .expect("resolving in c1");
    assert!(
        !answer.is_empty(),
        "c1's DNS stopped answering without etcd"
    );
    let body = kube
        .kubectl_ok(
            2,
            &[
                "-n",
                "shop",
                "exec",
                "client",
                "--",
                "curl",
                "-sS",
                "--max-time",
                "5",
                "http://web.shop.svc.global/",
            ],
            None,
        )
        .unwrap_or_else(|e| panic!("curl from c2 while c1's etcd is down: {e:#}"));
    assert!(
        body.starts_with("web-"),
        "curl answered {body:?}, not a c1 web pod"
    );
    println!(
        "c1 etcd down: c1 DNS answers {answer:?}, c2 reaches {}",
        body.trim()
    );
    // ...and catches up when etcd returns.
    kube.start_daemon("c1-etcd")
        .unwrap_or_else(|e| panic!("restarting etcd: {e:#}"));
    kube.kubectl_ok(1, &["-n", "shop", "delete", "serviceexport", "api"], None)
        .expect("delete export api");
    wait_import(&kube, 2, "api", false);
    assert_eq!(
        before,
        snapshot(&kube),
        "web changed across the etcd outage"
    );
    kube.down().expect("tearing the kube lab down");
}

/// One export's round trip with a time limit per wait: c1 exports `api`, c2 imports it, c1
/// withdraws it, c2 drops it. `Err` names the wait that stalled.
fn round_trip(kube: &KubeLab, limit: Duration) -> Result<(), String> {
    let wait = |c: usize, present: bool| {
        poll_until(
            &format!("api {} in c{c}", if present { "imported" } else { "gone" }),
            limit,
            || {
                let out = kube
                    .kubectl(
                        c,
                        &["-n", "shop", "get", "serviceimport", "api", "-o", "name"],
                        None,
                    )
                    .map_err(|e| format!("{e:#}"))?;
                if out.status.success() == present {
                    Ok(())
                } else {
                    Err("not yet".to_owned())
                }
            },
        )
        .map_err(|e| format!("{e:#}"))
    };
    kube.kubectl_ok(1, &["apply", "-f", "-"], Some(API_YAML))
        .map_err(|e| format!("{e:#}"))?;
    wait(2, true)?;
    poll_until("ServiceExport api Valid", limit, || {
        let out = kube
            .kubectl_ok(
                1,
                &[
                    "-n",
                    "shop",
                    "get",
                    "serviceexport",
                    "api",
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Valid\")].status}",
                ],
                None,
            )
            .map_err(|e| format!("{e:#}"))?;
        if out.trim() == "True" {
            Ok(())
        } else {
            Err(out)
        }
    })
    .map_err(|e| format!("{e:#}"))?;
    kube.kubectl_ok(1, &["-n", "shop", "delete", "serviceexport", "api"], None)
        .map_err(|e| format!("{e:#}"))?;
    wait(2, false)
}

/// The first log line that says the API server forbade something.
fn forbidden_line(log: &str) -> Option<String> {
    log.lines()
        .find(|l| l.contains("forbidden") || l.contains("Forbidden"))
        .map(|l| l.chars().take(300).collect())
}

#[test]
#[ignore = "needs root: netlab"]
fn kube_gateway_without_each_verb_of_its_cluster_role_says_so_and_never_crashes() {
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut kube = match KubeLab::up(LabSpec::new("cwk", env!("CARGO_BIN_EXE_causeway"))) {
        Ok(kube) => kube,
        Err(e) => panic!("the kube lab did not come up: {e:#}"),
    };
    for c in kube.lab().topology().clusters() {
        kube.kubectl_ok(c, &["create", "namespace", "shop"], None)
            .expect("namespace shop");
    }
    round_trip(&kube, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("with deploy/'s RBAC: {e}{}", logs(&kube)));
    let role_json = kube
        .kubectl_ok(
            1,
            &["get", "clusterrole", "causeway-gateway", "-o", "json"],
            None,
        )
        .expect("reading the ClusterRole");
    let role: serde_json::Value = serde_json::from_str(&role_json).expect("ClusterRole JSON");
    let rules = role["rules"].as_array().expect("rules").clone();
    // Replaced without a resourceVersion: the same role in both clusters, no conflicts.
    let mut original = role.clone();
    original["metadata"] = serde_json::json!({"name": "causeway-gateway"});
    let original = original.to_string();
    let mut table = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let resources = rule["resources"][0].as_str().unwrap_or_default().to_owned();
        for verb in rule["verbs"].as_array().expect("verbs") {
            let verb = verb.as_str().unwrap_or_default().to_owned();
            let mut less = role.clone();
            let mut reduced = rules.clone();
            let verbs: Vec<serde_json::Value> = rules[i]["verbs"]
                .as_array()
                .expect("verbs")
                .iter()
                .filter(|v| v.as_str() != Some(&verb))
                .cloned()
                .collect();
            if verbs.is_empty() {
                reduced.remove(i);
            } else {
                reduced[i]["verbs"] = verbs.into();
            }
            less["rules"] = reduced.into();
            less["metadata"] = serde_json::json!({"name": "causeway-gateway"});
            for c in [1, 2] {
                kube.kubectl_ok(c, &["replace", "-f", "-"], Some(&less.to_string()))
                    .expect("replacing the ClusterRole");
            }
            let marks: Vec<usize> = [1, 2]
                .iter()
                .map(|&c| kube.lab().gateway_log(c).len())
                .collect();
            for c in [1, 2] {
                kube.lab_mut().stop_gateway(c);
                kube.lab_mut()
                    .start_gateway(c)
                    .unwrap_or_else(|e| panic!("gateway c{c} without {verb} {resources}: {e:#}"));
            }
            let outcome = round_trip(&kube, Duration::from_secs(8));
            let since: Vec<String> = [1, 2]
                .iter()
                .zip(&marks)
                .map(|(&c, &m)| {
                    kube.lab()
                        .gateway_log(c)
                        .get(m..)
                        .unwrap_or_default()
                        .to_owned()
                })
                .collect();
            let said = since
                .iter()
                .zip(["c1", "c2"])
                .find_map(|(log, c)| forbidden_line(log).map(|l| format!("{c}: {l}")));
            for c in [1, 2] {
                assert!(
                    kube.lab_mut().gateway_running(c),
                    "gateway c{c} crashed without {verb} {resources}:\n{}",
                    since[c - 1]
                );
            }
            let seen = match (&outcome, &said) {
                (Ok(()), None) => "works: not needed by an export's round trip".to_owned(),
                (Ok(()), Some(line)) => format!("works, and logs {line}"),
                (Err(stalled), Some(line)) => format!("stalls at {stalled:.60}; logs {line}"),
                (Err(stalled), None) => panic!(
                    "without {verb} {resources} the round trip stalls ({stalled}) and no gateway says why:\n{}\n{}",
                    since[0], since[1]
                ),
            };
            println!("without {verb:>6} {resources:<28} {seen}");
            table.push((verb.clone(), resources.clone(), seen));
            // Back to deploy/'s RBAC, and the leftovers of a stalled round trip cleared.
            for c in [1, 2] {
                kube.kubectl_ok(c, &["replace", "-f", "-"], Some(&original))
                    .expect("restoring the ClusterRole");
            }
            let _ = kube.kubectl(
                1,
                &[
                    "-n",
                    "shop",
                    "delete",
                    "serviceexport",
                    "api",
                    "--ignore-not-found",
                ],
                None,
            );
            for c in [1, 2] {
                kube.lab_mut().stop_gateway(c);
                kube.lab_mut()
                    .start_gateway(c)
                    .unwrap_or_else(|e| panic!("gateway c{c}: {e:#}"));
            }
            round_trip(&kube, Duration::from_secs(60)).unwrap_or_else(|e| {
                panic!("after restoring {verb} {resources}: {e}{}", logs(&kube))
            });
        }
    }
    assert!(table.len() >= 15, "every verb tried: {table:?}");
    // Least privilege, checked against the real server: removing any verb is noticed.
    let unused: Vec<String> = table
        .iter()
        .filter(|(_, _, seen)| seen.starts_with("works: not needed"))
        .map(|(verb, resources, _)| format!("{verb} {resources}"))
        .collect();
    assert!(
        unused.is_empty(),
        "deploy/'s ClusterRole grants verbs the gateway does not use: {unused:?}"
    );
    kube.down().expect("tearing the kube lab down");
}

/// `helm install` of deploy/helm into c3, server-side dry run (the lab already made the
/// namespace and RBAC, so the release takes them over; nothing is stored, so no gateway pod
/// needs a runtime).
fn helm_install_is_accepted_by_a_real_api_server(kube: &KubeLab) {
    let build = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/k8s/build.sh");
    let out = std::process::Command::new(build)
        .args(["--path", "helm"])
        .output()
        .expect("tests/k8s/build.sh --path helm");
    let helm = std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        helm.exists(),
        "{} is not built: run tests/k8s/build.sh helm",
        helm.display()
    );
    let t = kube.lab().topology();
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/helm");
    println!(
        "$ helm install causeway deploy/helm --kube-context c3 --namespace causeway-system --set clusterId=c3 ... --dry-run=server --take-ownership"
    );
    let out = std::process::Command::new(&helm)
        .args(["install", "causeway", chart, "--kubeconfig"])
        .arg(kube.kubeconfig())
        .args([
            "--kube-context",
            "c3",
            "--namespace",
            "causeway-system",
            "--dry-run=server",
            "--take-ownership",
        ])
        .args(["--set", "clusterId=c3", "--set"])
        .arg(format!("brokers={{{}}}", t.broker_listen()))
        .arg("--set")
        .arg(format!("cidrs={{{}}}", t.cluster_cidrs(3).join(",")))
        .output()
        .expect("running helm");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "helm install refused: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("STATUS: pending-install"), "{stdout}");
    println!("{}", stdout.lines().take(5).collect::<Vec<_>>().join("\n"));
}
