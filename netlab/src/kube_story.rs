//! The Kubernetes user story, through kubectl only: what `lab demo --kube` prints and
//! tests/lab_kube.rs asserts. Every step prints the kubectl command a user would type.
//!
//! 1. c1: apply a Deployment (2 replicas of agnhost serve-hostname), a Service and a
//!    ServiceExport in namespace `shop` (the namespace exists in every cluster).
//! 2. c2 and c3: the ServiceImport appears (time from apply measured per cluster) with type,
//!    ports and a clusterset IP, `status.clusters` [c1], and the MCS EndpointSlices with labels.
//! 3. c1: the ServiceExport is Valid and Ready, with no Conflict.
//! 4. From a c2 pod (`kubectl exec`): `getent hosts` of the svc.global and clusterset.local
//!    names answers, and curl reaches a c1 pod through the tunnel.
//! 5. Scaling the Deployment to 0 withdraws the service (no endpoints, no svc.global answer).
//! 6. Deleting the ServiceExport removes the ServiceImport everywhere.

use std::time::Duration;

use anyhow::{Context, bail};

use crate::kube::KubeLab;
use crate::wait::{Deadline, poll_until};

/// The image the story's pods run (the node agent's table: an HTTP server answering the pod's
/// name on --port).
pub const WEB_IMAGE: &str = "registry.k8s.io/e2e-test-images/agnhost:2.53";
/// How long an import may take to appear (a cold gateway's first sync included).
const IMPORT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long pods may take to become Ready.
const PODS_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a withdrawal may take to reach DNS (record TTLs included).
const WITHDRAW_TIMEOUT: Duration = Duration::from_secs(60);

/// What the web service's manifests are (the user's `web.yaml`).
pub fn web_yaml() -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  replicas: 2
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      containers:
        - name: web
          image: {WEB_IMAGE}
          args: [serve-hostname, --port=80]
          ports: [{{containerPort: 80, name: http}}]
          readinessProbe:
            httpGet: {{path: /, port: http}}
            periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: http, protocol: TCP}}]
---
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata:
  name: web
  namespace: shop
"#
    )
}

/// The client pod in c2 the story execs into.
pub fn client_yaml() -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: shop
spec:
  containers:
    - name: client
      image: {WEB_IMAGE}
      args: [pause]
"#
    )
}

/// What the story measured.
#[derive(Debug, Clone, Default)]
pub struct StoryReport {
    /// Per importing cluster: time from `kubectl apply` returning to its ServiceImport existing.
    pub import_latency: Vec<(usize, Duration)>,
    pub lines: Vec<String>,
}

/// Runs the story; `say` gets each line as it happens (commands as typed, then outcomes).
pub fn run(kube: &mut KubeLab, say: &mut dyn FnMut(&str)) -> anyhow::Result<StoryReport> {
    let mut report = StoryReport::default();
    let mut out = |line: String, report: &mut StoryReport| {
        say(&line);
        report.lines.push(line);
    };
    let clusters: Vec<usize> = kube.lab().topology().clusters().collect();
    let importers: Vec<usize> = clusters.iter().copied().filter(|&c| c != 1).collect();
    let web = kube.lab().work_dir().join("web.yaml");
    std::fs::write(&web, web_yaml()).with_context(|| format!("writing {}", web.display()))?;

    out(
        "Step 1: c1 exports web (a Deployment of 2, its Service, a ServiceExport)".into(),
        &mut report,
    );
    for &c in &clusters {
        out(
            format!("  $ kubectl --context c{c} create namespace shop"),
            &mut report,
        );
        let o = kube.kubectl(c, &["create", "namespace", "shop"], None)?;
        if !o.status.success() && !String::from_utf8_lossy(&o.stderr).contains("AlreadyExists") {
            bail!(
                "creating namespace shop in c{c}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
    }
    out(
        format!(
            "  $ kubectl --context c1 -n shop apply -f {}",
            web.display()
        ),
        &mut report,
    );
    let applied = kube.kubectl_ok(1, &["-n", "shop", "apply", "-f", "-"], Some(&web_yaml()))?;
    // A stopwatch: the deadline itself is never checked.
    let applied_at = Deadline::after(Duration::from_secs(24 * 3600));
    for line in applied.lines() {
        out(format!("    {line}"), &mut report);
    }

    out(
        "Step 2: the ServiceImport appears in c2 and c3".into(),
        &mut report,
    );
    let mut pending: Vec<usize> = importers.clone();
    poll_until(
        "the ServiceImport web in every other cluster",
        IMPORT_TIMEOUT,
        || {
            pending.retain(|&c| {
                let found = kube
                    .kubectl(
                        c,
                        &["-n", "shop", "get", "serviceimport", "web", "-o", "name"],
                        None,
                    )
                    .map(|o| o.status.success())
                    .unwrap_or(false);
                if found {
                    report.import_latency.push((c, applied_at.elapsed()));
                }
                !found
            });
            if pending.is_empty() {
                Ok(())
            } else {
                Err(format!("not yet in {pending:?}"))
            }
        },
    )?;
    for (c, latency) in report.import_latency.clone() {
        out(
            format!(
                "  apply -> ServiceImport in c{c}: {} ms",
                latency.as_millis()
            ),
            &mut report,
        );
    }
    wait_pods_ready(kube, 1, 2)?;
    for &c in &importers {
        out(
            format!("  $ kubectl --context c{c} -n shop get serviceimport web -o yaml"),
            &mut report,
        );
        let summary = check_import(kube, c)?;
        out(format!("    {summary}"), &mut report);
        out(
            format!(
                "  $ kubectl --context c{c} -n shop get endpointslices -l multicluster.kubernetes.io/service-name=web --show-labels"
            ),
            &mut report,
        );
        let slices = check_slices(kube, c, true)?;
        out(format!("    {slices}"), &mut report);
    }

    out(
        "Step 3: on c1 the ServiceExport is Valid and Ready, with no Conflict".into(),
        &mut report,
    );
    out(
        "  $ kubectl --context c1 -n shop get serviceexport web -o yaml".into(),
        &mut report,
    );
    let conditions = poll_until("ServiceExport web Valid and Ready", IMPORT_TIMEOUT, || {
        let c = conditions(kube, 1, "serviceexport")?;
        let get = |t: &str| c.iter().find(|(k, _)| k == t).map(|(_, v)| v.as_str());
        match (get("Valid"), get("Ready"), get("Conflict")) {
            (Some("True"), Some("True"), None | Some("False")) => Ok(c),
            _ => Err(format!("conditions {c:?}")),
        }
    })?;
    out(
        format!("    conditions: {}", show_conditions(&conditions)),
        &mut report,
    );

    out(
        "Step 4: from a c2 pod, the names answer and curl reaches c1 through the tunnel".into(),
        &mut report,
    );
    let client = kube.lab().work_dir().join("client.yaml");
    std::fs::write(&client, client_yaml())
        .with_context(|| format!("writing {}", client.display()))?;
    out(
        format!(
            "  $ kubectl --context c2 -n shop apply -f {}",
            client.display()
        ),
        &mut report,
    );
    kube.kubectl_ok(2, &["-n", "shop", "apply", "-f", "-"], Some(&client_yaml()))?;
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
    )?;
    let c1_pods = pod_names(kube, 1)?;
    for name in ["web.shop.svc.global", "web.shop.svc.clusterset.local"] {
        out(
            format!("  $ kubectl --context c2 -n shop exec client -- getent hosts {name}"),
            &mut report,
        );
        let answer = poll_until(&format!("{name} to answer in c2"), IMPORT_TIMEOUT, || {
            let o = kube
                .kubectl(
                    2,
                    &[
                        "-n", "shop", "exec", "client", "--", "getent", "hosts", name,
                    ],
                    None,
                )
                .map_err(|e| format!("{e:#}"))?;
            let text = String::from_utf8_lossy(&o.stdout).trim().to_owned();
            if o.status.success() && !text.is_empty() {
                Ok(text)
            } else {
                Err(format!(
                    "exit {}: {}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim()
                ))
            }
        })?;
        for line in answer.lines() {
            out(format!("    {line}"), &mut report);
        }
    }
    for name in ["web.shop.svc.global", "web.shop.svc.clusterset.local"] {
        let url = format!("http://{name}/");
        out(
            format!("  $ kubectl --context c2 -n shop exec client -- curl -s {url}"),
            &mut report,
        );
        let body = kube.kubectl_ok(
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
                &url,
            ],
            None,
        )?;
        if !c1_pods.iter().any(|p| p == body.trim()) {
            bail!("curl {url} from c2 answered {body:?}, not one of c1's pods {c1_pods:?}");
        }
        out(
            format!("    {} (a c1 pod, through the tunnel)", body.trim()),
            &mut report,
        );
    }

    out(
        "Step 5: scaling web to 0 in c1 withdraws it".into(),
        &mut report,
    );
    out(
        "  $ kubectl --context c1 -n shop scale deployment web --replicas=0".into(),
        &mut report,
    );
    kube.kubectl_ok(
        1,
        &["-n", "shop", "scale", "deployment", "web", "--replicas=0"],
        None,
    )?;
    poll_until("web withdrawn from c2's DNS", WITHDRAW_TIMEOUT, || {
        let o = kube
            .kubectl(
                2,
                &[
                    "-n",
                    "shop",
                    "exec",
                    "client",
                    "--",
                    "getent",
                    "hosts",
                    "web.shop.svc.global",
                ],
                None,
            )
            .map_err(|e| format!("{e:#}"))?;
        let text = String::from_utf8_lossy(&o.stdout).trim().to_owned();
        if text.is_empty() {
            Ok(())
        } else {
            Err(format!("still answers {text}"))
        }
    })?;
    out(
        "    c2: getent hosts web.shop.svc.global answers nothing".into(),
        &mut report,
    );
    let slices = check_slices(kube, 2, false)?;
    out(format!("    c2: {slices}"), &mut report);

    out(
        "Step 6: deleting the ServiceExport removes the ServiceImport everywhere".into(),
        &mut report,
    );
    out(
        "  $ kubectl --context c1 -n shop delete serviceexport web".into(),
        &mut report,
    );
    kube.kubectl_ok(1, &["-n", "shop", "delete", "serviceexport", "web"], None)?;
    let mut left = importers.clone();
    poll_until(
        "the ServiceImport gone from every cluster",
        IMPORT_TIMEOUT,
        || {
            left.retain(|&c| {
                kube.kubectl(
                    c,
                    &["-n", "shop", "get", "serviceimport", "web", "-o", "name"],
                    None,
                )
                .map(|o| o.status.success())
                .unwrap_or(true)
            });
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("still in {left:?}"))
            }
        },
    )?;
    out(
        format!(
            "    no ServiceImport web in {}",
            importers
                .iter()
                .map(|c| format!("c{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        &mut report,
    );
    Ok(report)
}

fn wait_pods_ready(kube: &KubeLab, c: usize, n: usize) -> anyhow::Result<()> {
    poll_until(&format!("{n} ready web pods in c{c}"), PODS_TIMEOUT, || {
        let o = kube
            .kubectl(c, &["-n", "shop", "get", "pods", "-l", "app=web", "-o",
                "jsonpath={range .items[*]}{.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}"], None)
            .map_err(|e| format!("{e:#}"))?;
        let text = String::from_utf8_lossy(&o.stdout);
        let ready = text.lines().filter(|l| l.trim() == "True").count();
        if ready == n {
            Ok(())
        } else {
            Err(format!("{ready} ready"))
        }
    })
}

fn pod_names(kube: &KubeLab, c: usize) -> anyhow::Result<Vec<String>> {
    let out = kube.kubectl_ok(
        c,
        &[
            "-n",
            "shop",
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ],
        None,
    )?;
    Ok(out.split_whitespace().map(str::to_owned).collect())
}

/// Checks the ServiceImport in cluster c: ClusterSetIP, port 80/TCP, one IP in c's
/// clusterset range, status.clusters [c1], Ready=True; returns a one-line summary.
fn check_import(kube: &KubeLab, c: usize) -> anyhow::Result<String> {
    let range_prefix = format!("10.{}.96.", 100 + c);
    poll_until(
        &format!("the c{c} ServiceImport complete"),
        IMPORT_TIMEOUT,
        || {
            let get = |path: &str| -> Result<String, String> {
                kube.kubectl_ok(
                    c,
                    &[
                        "-n",
                        "shop",
                        "get",
                        "serviceimport",
                        "web",
                        "-o",
                        &format!("jsonpath={path}"),
                    ],
                    None,
                )
                .map_err(|e| format!("{e:#}"))
            };
            let kind = get("{.spec.type}")?;
            let ports = get("{range .spec.ports[*]}{.name}/{.port}/{.protocol} {end}")?;
            let ips = get("{.spec.ips[*]}")?;
            let clusters = get("{.status.clusters[*].cluster}")?;
            let ready = get("{.status.conditions[?(@.type==\"Ready\")].status}")?;
            let ok = kind == "ClusterSetIP"
                && ready == "True"
                && ports.trim() == "http/80/TCP"
                && ips.split_whitespace().count() == 1
                && ips.starts_with(&range_prefix)
                && clusters.trim() == "c1";
            let summary = format!(
                "type {kind}, ports {}, ips {ips}, status.clusters [{clusters}], Ready={ready}",
                ports.trim()
            );
            if ok { Ok(summary) } else { Err(summary) }
        },
    )
}

/// Checks the MCS EndpointSlices in cluster c: labelled for web from c1, not managed by the
/// endpointslice controller. A ClusterSetIP import's slice has one endpoint per exporting
/// cluster, that cluster's Service IP as its global address (its kube-proxy spreads over the
/// pods), ready while any of
/// its pods is: `ready` says which is wanted (false: unready or no slice at all).
fn check_slices(kube: &KubeLab, c: usize, ready: bool) -> anyhow::Result<String> {
    let c1_service_ip = kube.kubectl_ok(
        1,
        &[
            "-n",
            "shop",
            "get",
            "service",
            "web",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
        None,
    )?;
    let c1_service_ip = c1_service_ip.trim().to_owned();
    let want = format!("{c1_service_ip}={ready}");
    poll_until(
        &format!("c{c}'s MCS EndpointSlice with {want} (as its global address)"),
        IMPORT_TIMEOUT,
        || {
            let text = kube
            .kubectl_ok(c, &["-n", "shop", "get", "endpointslices", "-l", "multicluster.kubernetes.io/service-name=web", "-o",
                "jsonpath={range .items[*]}{.metadata.labels.multicluster\\.kubernetes\\.io/source-cluster} {.metadata.labels.endpointslice\\.kubernetes\\.io/managed-by} {range .endpoints[*]}{.addresses[0]}={.conditions.ready},{end}{\"\\n\"}{end}"], None)
            .map_err(|e| format!("{e:#}"))?;
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            if lines.is_empty() && !ready {
                return Ok("no MCS EndpointSlice left".to_owned());
            }
            let [line] = lines.as_slice() else {
                return Err(format!("{} slices: {text}", lines.len()));
            };
            let mut words = line.split_whitespace();
            let source = words.next().unwrap_or_default();
            let managed = words.next().unwrap_or_default();
            let endpoints = words.next().unwrap_or_default().trim_end_matches(',');
            if source != "c1" || managed.is_empty() || managed == "endpointslice-controller.k8s.io"
            {
                return Err(format!(
                    "slice labels source-cluster={source} managed-by={managed}"
                ));
            }
            let summary = format!(
                "slice from {source} (managed-by {managed}): {endpoints} (c1's Service IP {c1_service_ip}, as its global address)"
            );
            let (address, state) = endpoints.split_once('=').unwrap_or_default();
            if global_of(address, &c1_service_ip) && state == ready.to_string() {
                Ok(summary)
            } else {
                Err(summary)
            }
        },
    )
}

/// Whether `global` is `local`'s address in the clusterset's global ranges (README, "The
/// address plan"): inside 100.64.0.0/10, with the host part of the cluster's /16 kept.
fn global_of(global: &str, local: &str) -> bool {
    let (Ok(g), Ok(l)) = (
        global.parse::<std::net::Ipv4Addr>(),
        local.parse::<std::net::Ipv4Addr>(),
    ) else {
        return false;
    };
    let (g, l) = (g.octets(), l.octets());
    g[0] == 100 && (64..128).contains(&g[1]) && g[2..] == l[2..]
}

fn conditions(kube: &KubeLab, c: usize, kind: &str) -> Result<Vec<(String, String)>, String> {
    let text = kube
        .kubectl_ok(
            c,
            &[
                "-n",
                "shop",
                "get",
                kind,
                "web",
                "-o",
                "jsonpath={range .status.conditions[*]}{.type}={.status}{\"\\n\"}{end}",
            ],
            None,
        )
        .map_err(|e| format!("{e:#}"))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect())
}

fn show_conditions(c: &[(String, String)]) -> String {
    c.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}
