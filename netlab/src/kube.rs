//! `netlab --kube`: every lab cluster runs a real Kubernetes control plane, and its gateway
//! runs `--source kube` against it.
//!
//! Per cluster I, inside its gateway namespace `P-cI-gw`:
//! - etcd on 127.0.0.1:2379 (data in `<work>/cI/kube/etcd`);
//! - kube-apiserver on :6443 (RBAC, client-certificate admin, service-account token signing,
//!   service CIDR 10.10I.96.0/20, advertised on the pod bridge address 10.10I.0.1);
//! - kube-controller-manager with the controllers the lab needs (see [`CONTROLLERS`]);
//! - the gateway, as the `causeway-gateway` ServiceAccount bound to exactly deploy/'s RBAC,
//!   with `--clusterset-ip-range` in the static lower band of the service CIDR.
//!
//! On the host, one node agent per cluster (the lab's kubelet stand-in, Go, built by
//! tests/k8s/build.sh: `tests/k8s/kube/nodeagent`) registers the Node `cI`, runs pods in
//! namespaces `P-cI-kN` on the pod bridge (10.10I.0.64-250), serves the kubelet's exec port on
//! 10.10I.0.1:10250, and forwards host 127.0.0.1:(16440+I) to the API server, which is how
//! kubectl reaches it. `<work>/kubeconfig` has contexts `c1`, `c2`, `c3`.
//!
//! The binaries come from tests/k8s/build.sh (pinned versions, cached): the lab runs it, which
//! is a no-op once built. Only one kube lab can run at a time (the forward ports are fixed).

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::cluster::{Daemon, STOP_GRACE};
use crate::lab::{Lab, LabSpec};
use crate::ns;
use crate::topology::{PODS_BRIDGE, Topology};
use crate::wait::poll_until;

/// The pinned versions (also read by tests/k8s/build.sh).
const VERSIONS_ENV: &str = include_str!("../../tests/k8s/versions.env");
/// Where build.sh is in the source tree this netlab was compiled from.
const BUILD_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/k8s/build.sh");
/// deploy/'s RBAC and namespace: the gateway runs with exactly these.
const RBAC_YAML: &str = include_str!("../../deploy/base/rbac.yaml");
const NAMESPACE_YAML: &str = include_str!("../../deploy/base/namespace.yaml");

/// The kube-controller-manager controllers the lab runs (serviceaccount: every namespace's
/// `default` ServiceAccount, which pod admission requires).
pub const CONTROLLERS: &str = "endpointslice-controller,endpointslice-mirroring-controller,deployment-controller,replicaset-controller,statefulset-controller,namespace-controller,garbage-collector-controller,serviceaccount-controller,serviceaccount-token-controller,root-ca-certificate-publisher-controller,clusterrole-aggregation-controller,service-cidr-controller";
/// The API server's port inside each gateway namespace.
pub const API_PORT: u16 = 6443;
/// The kubelet (exec) port the node agent serves on the node address.
pub const KUBELET_PORT: u16 = 10250;
/// Host loopback port of cluster I's API server is this plus I.
pub const FORWARD_BASE_PORT: u16 = 16440;
/// The gateways' ServiceAccount (deploy/base/rbac.yaml).
const GATEWAY_SA: &str = "causeway-gateway";
const GATEWAY_NS: &str = "causeway-system";

/// A cold control plane start on a loaded 2-core machine.
const API_READY_TIMEOUT: Duration = Duration::from_secs(120);
const NODE_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// One kubectl call.
const KUBECTL_TIMEOUT: Duration = Duration::from_secs(60);
/// tests/k8s/build.sh when everything is cached takes well under a second; a cold build of
/// the control plane takes tens of minutes on 2 cores.
const BUILD_TIMEOUT: Duration = Duration::from_secs(90 * 60);

/// Where each binary is.
#[derive(Debug, Clone)]
pub struct KubeBins {
    pub etcd: PathBuf,
    pub apiserver: PathBuf,
    pub controller_manager: PathBuf,
    pub kubectl: PathBuf,
    pub node_agent: PathBuf,
    pub kubernetes_version: String,
}

impl KubeBins {
    /// Runs tests/k8s/build.sh (a no-op when cached; builds what is missing otherwise) and
    /// returns the binaries' paths.
    pub fn ensure_built() -> anyhow::Result<Self> {
        let script = Path::new(BUILD_SCRIPT);
        if !script.exists() {
            bail!(
                "the kube lab needs causeway's source tree (tests/k8s/build.sh builds the control plane); {} is missing",
                script.display()
            );
        }
        let mut build = Command::new(script);
        build.args(["kube", "agent"]).stderr(Stdio::inherit());
        ns::run_ok(&mut build, BUILD_TIMEOUT).context("building the Kubernetes control plane")?;
        let path = |name: &str| -> anyhow::Result<PathBuf> {
            let out = ns::run_ok(Command::new(script).args(["--path", name]), KUBECTL_TIMEOUT)?;
            let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if !path.exists() {
                bail!("{} was not built", path.display());
            }
            Ok(path)
        };
        Ok(Self {
            etcd: path("etcd")?,
            apiserver: path("kube-apiserver")?,
            controller_manager: path("kube-controller-manager")?,
            kubectl: path("kubectl")?,
            node_agent: path("node-agent")?,
            kubernetes_version: pinned("KUBERNETES").unwrap_or_default(),
        })
    }
}

/// A value of tests/k8s/versions.env.
pub fn pinned(name: &str) -> Option<String> {
    VERSIONS_ENV.lines().find_map(|line| {
        let (k, v) = line.split_once('=')?;
        (k.trim() == name).then(|| v.trim().to_owned())
    })
}

/// Cluster I's addresses in the kube lab (pure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeAddrs {
    pub node_ip: String,
    pub service_cidr: String,
    pub kubernetes_service_ip: String,
    pub clusterset_ip_range: String,
    pub pod_cidr: String,
    pub first_pod_ip: String,
    pub last_pod_ip: String,
    pub forward: String,
}

impl KubeAddrs {
    pub fn of(topology: &Topology, cluster: usize) -> Self {
        let b = 100 + cluster;
        Self {
            node_ip: topology.gw_pod_addr(cluster).to_string(),
            service_cidr: format!("10.{b}.96.0/20"),
            kubernetes_service_ip: format!("10.{b}.96.1"),
            // The /20's static lower band (KEP-3070) is its first 256 addresses.
            clusterset_ip_range: format!("10.{b}.96.128/25"),
            pod_cidr: format!("10.{b}.0.0/24"),
            first_pod_ip: format!("10.{b}.0.64"),
            last_pod_ip: format!("10.{b}.0.250"),
            forward: format!("127.0.0.1:{}", FORWARD_BASE_PORT + cluster as u16),
        }
    }
}

/// A kube lab: a [`Lab`] whose clusters run real control planes. Dropping it stops the kube
/// daemons, then tears the lab down.
#[derive(Debug)]
pub struct KubeLab {
    daemons: Vec<Daemon>,
    lab: Lab,
    bins: KubeBins,
    kubeconfig: PathBuf,
}

impl KubeLab {
    /// Builds the lab, starts every cluster's control plane and node agent, installs the CRDs
    /// and deploy/'s RBAC, and starts each gateway as its ServiceAccount; returns once every
    /// node is Ready and every gateway answers DNS.
    pub fn up(spec: LabSpec) -> anyhow::Result<Self> {
        if spec.addressing != crate::topology::Addressing::Distinct {
            bail!(
                "the kube lab needs distinct cluster CIDRs (its service ranges are 10.10I.96.0/20)"
            );
        }
        let bins = KubeBins::ensure_built()?;
        let lab = Lab::bare(spec)?;
        let kubeconfig = lab.work_dir().join("kubeconfig");
        let mut kube = Self {
            daemons: Vec::new(),
            lab,
            bins,
            kubeconfig,
        };
        kube.lab.issue_certs()?;
        kube.lab.start_broker()?;
        let clusters: Vec<usize> = kube.lab.topology().clusters().collect();
        for &c in &clusters {
            kube.write_pki(c)?;
            kube.start_control_plane(c)?;
        }
        kube.write_user_kubeconfig()?;
        for &c in &clusters {
            kube.wait_api_ready(c)?;
            kube.start_controller_manager_and_agent(c)?;
        }
        for &c in &clusters {
            kube.wait_node_ready(c)?;
            kube.install_causeway(c)?;
            kube.start_gateway(c)?;
        }
        for &c in &clusters {
            kube.lab.wait_gateway_ready(c)?;
        }
        Ok(kube)
    }

    pub fn lab(&self) -> &Lab {
        &self.lab
    }

    pub fn lab_mut(&mut self) -> &mut Lab {
        &mut self.lab
    }

    pub fn bins(&self) -> &KubeBins {
        &self.bins
    }

    /// The kubeconfig with contexts c1, c2, c3 (admin).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// `kubectl --kubeconfig K --context cI ARGS`, with `stdin` fed in; output whatever the
    /// exit status.
    pub fn kubectl(
        &self,
        cluster: usize,
        args: &[&str],
        stdin: Option<&str>,
    ) -> anyhow::Result<Output> {
        kubectl_in(&self.bins.kubectl, &self.kubeconfig, cluster, args, stdin)
    }

    /// Like [`Self::kubectl`], requiring success; returns stdout.
    pub fn kubectl_ok(
        &self,
        cluster: usize,
        args: &[&str],
        stdin: Option<&str>,
    ) -> anyhow::Result<String> {
        let out = self.kubectl(cluster, args, stdin)?;
        if !out.status.success() {
            bail!(
                "kubectl --context c{cluster} {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// How to use the lab's kubeconfig, for people.
    pub fn usage(&self) -> String {
        let kubectl_dir = self.bins.kubectl.parent().map(Path::display);
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Kubernetes {} in every cluster; use:",
            self.bins.kubernetes_version
        );
        let _ = writeln!(s, "  export KUBECONFIG={}", self.kubeconfig.display());
        let _ = writeln!(s, "  alias kubectl={}", self.bins.kubectl.display());
        let _ = writeln!(s, "  kubectl --context c1 get nodes,pods -A");
        if let Some(dir) = kubectl_dir {
            let _ = writeln!(s, "  (binaries in {dir})");
        }
        s
    }

    /// Leaves everything running (for `lab up --kube`).
    pub fn detach(mut self) {
        for d in &mut self.daemons {
            d.detach();
        }
        self.lab.detach_in_place();
    }

    fn cluster_dir(&self, c: usize) -> PathBuf {
        self.lab
            .work_dir()
            .join(self.lab.topology().cluster_id(c))
            .join("kube")
    }

    fn write_pki(&self, c: usize) -> anyhow::Result<()> {
        let dir = self.cluster_dir(c).join("pki");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let addrs = KubeAddrs::of(self.lab.topology(), c);
        let pki = Pki::new(&format!("lab c{c} kubernetes CA"))?;
        pki.write_ca(&dir)?;
        let ips = ["127.0.0.1", &addrs.node_ip, &addrs.kubernetes_service_ip];
        let dns = [
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ];
        pki.issue(&dir, "apiserver", "kube-apiserver", &[], &ips, &dns, true)?;
        pki.issue(
            &dir,
            "admin",
            "lab-admin",
            &["system:masters"],
            &[],
            &[],
            false,
        )?;
        pki.issue(
            &dir,
            "controller-manager",
            "system:kube-controller-manager",
            &[],
            &[],
            &[],
            false,
        )?;
        pki.issue(
            &dir,
            "apiserver-kubelet-client",
            "kube-apiserver-kubelet-client",
            &["system:masters"],
            &[],
            &[],
            false,
        )?;
        pki.issue(
            &dir,
            "kubelet",
            &format!("system:node:c{c}"),
            &["system:nodes"],
            &[&addrs.node_ip],
            &[],
            true,
        )?;
        let sa = KeyPair::generate().context("generating the service-account signing key")?;
        write_file(&dir.join("sa.key"), sa.serialize_pem().as_bytes(), 0o600)?;
        write_file(&dir.join("sa.pub"), sa.public_key_pem().as_bytes(), 0o644)?;
        // Inside the gateway namespace: the API server on loopback.
        let local = format!("https://127.0.0.1:{API_PORT}");
        for (name, user) in [
            ("admin", "admin"),
            ("controller-manager", "controller-manager"),
        ] {
            let yaml = kubeconfig_yaml(
                &[(format!("c{c}"), local.clone(), &dir, user)],
                &format!("c{c}"),
            )?;
            write_file(
                &dir.join(format!("{name}.kubeconfig")),
                yaml.as_bytes(),
                0o600,
            )?;
        }
        Ok(())
    }

    fn write_user_kubeconfig(&self) -> anyhow::Result<()> {
        let t = self.lab.topology();
        let dirs: Vec<(usize, PathBuf)> = t
            .clusters()
            .map(|c| (c, self.cluster_dir(c).join("pki")))
            .collect();
        let entries: Vec<(String, String, &Path, &str)> = dirs
            .iter()
            .map(|(c, dir)| {
                let addrs = KubeAddrs::of(t, *c);
                (
                    format!("c{c}"),
                    format!("https://{}", addrs.forward),
                    dir.as_path(),
                    "admin",
                )
            })
            .collect();
        let yaml = kubeconfig_yaml(&entries, "c1")?;
        write_file(&self.kubeconfig, yaml.as_bytes(), 0o600)
    }

    fn start_control_plane(&mut self, c: usize) -> anyhow::Result<()> {
        let t = self.lab.topology().clone();
        let dir = self.cluster_dir(c);
        let pki = dir.join("pki");
        let addrs = KubeAddrs::of(&t, c);
        let ns = t.gw_ns(c);
        let id = t.cluster_id(c);
        let etcd_dir = dir.join("etcd");
        let etcd_args = [
            format!("--name={id}"),
            format!("--data-dir={}", etcd_dir.display()),
            "--listen-client-urls=http://127.0.0.1:2379".to_owned(),
            "--advertise-client-urls=http://127.0.0.1:2379".to_owned(),
            "--listen-peer-urls=http://127.0.0.1:2380".to_owned(),
            "--initial-advertise-peer-urls=http://127.0.0.1:2380".to_owned(),
            format!("--initial-cluster={id}=http://127.0.0.1:2380"),
            "--listen-metrics-urls=".to_owned(),
            // A lab: losing the last writes of a crash is fine, 2 cores of fsync are not.
            "--unsafe-no-fsync=true".to_owned(),
            "--log-level=warn".to_owned(),
        ];
        self.spawn(
            &format!("{id}-etcd"),
            Some(&ns),
            &self.bins.etcd.clone(),
            &etcd_args,
        )?;
        let p = |f: &str| pki.join(f).display().to_string();
        let apiserver_args = [
            "--etcd-servers=http://127.0.0.1:2379".to_owned(),
            format!("--secure-port={API_PORT}"),
            "--bind-address=0.0.0.0".to_owned(),
            format!("--advertise-address={}", addrs.node_ip),
            format!("--service-cluster-ip-range={}", addrs.service_cidr),
            "--authorization-mode=RBAC".to_owned(),
            format!("--client-ca-file={}", p("ca.crt")),
            format!("--tls-cert-file={}", p("apiserver.crt")),
            format!("--tls-private-key-file={}", p("apiserver.key")),
            format!(
                "--kubelet-client-certificate={}",
                p("apiserver-kubelet-client.crt")
            ),
            format!("--kubelet-client-key={}", p("apiserver-kubelet-client.key")),
            format!("--kubelet-certificate-authority={}", p("ca.crt")),
            "--kubelet-preferred-address-types=InternalIP".to_owned(),
            format!("--service-account-issuer=https://kubernetes.default.svc.cluster.local/{id}"),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            "--allow-privileged=true".to_owned(),
            "--profiling=false".to_owned(),
            "--v=1".to_owned(),
        ];
        self.spawn(
            &format!("{id}-apiserver"),
            Some(&ns),
            &self.bins.apiserver.clone(),
            &apiserver_args,
        )
    }

    fn start_controller_manager_and_agent(&mut self, c: usize) -> anyhow::Result<()> {
        let t = self.lab.topology().clone();
        let dir = self.cluster_dir(c);
        let pki = dir.join("pki");
        let p = |f: &str| pki.join(f).display().to_string();
        let addrs = KubeAddrs::of(&t, c);
        let id = t.cluster_id(c);
        let kcm_args = [
            format!("--kubeconfig={}", p("controller-manager.kubeconfig")),
            format!("--controllers={CONTROLLERS}"),
            "--use-service-account-credentials=true".to_owned(),
            format!("--service-account-private-key-file={}", p("sa.key")),
            format!("--root-ca-file={}", p("ca.crt")),
            "--leader-elect=false".to_owned(),
            "--bind-address=127.0.0.1".to_owned(),
            "--profiling=false".to_owned(),
            "--v=1".to_owned(),
        ];
        self.spawn(
            &format!("{id}-controller-manager"),
            Some(&t.gw_ns(c)),
            &self.bins.controller_manager.clone(),
            &kcm_args,
        )?;
        let agent_args = [
            format!("--kubeconfig={}", p("admin.kubeconfig")),
            format!("--node-name={id}"),
            format!("--node-ip={}", addrs.node_ip),
            format!("--kubelet-port={KUBELET_PORT}"),
            format!("--tls-cert={}", p("kubelet.crt")),
            format!("--tls-key={}", p("kubelet.key")),
            format!("--client-ca={}", p("ca.crt")),
            format!("--gw-netns={}", t.gw_ns(c)),
            format!("--pod-cidr={}", addrs.pod_cidr),
            format!("--first-pod-ip={}", addrs.first_pod_ip),
            format!("--last-pod-ip={}", addrs.last_pod_ip),
            format!("--bridge={PODS_BRIDGE}"),
            format!("--pod-netns-prefix={}-{id}-k", t.prefix()),
            format!("--dns={}", addrs.node_ip),
            format!("--causeway={}", self.lab.spec().causeway_bin.display()),
            format!("--api-forward={}", addrs.forward),
            format!("--api-target=127.0.0.1:{API_PORT}"),
            format!("--kubelet-version={}", self.bins.kubernetes_version),
        ];
        self.spawn(
            &format!("{id}-node-agent"),
            None,
            &self.bins.node_agent.clone(),
            &agent_args,
        )
    }

    fn spawn(
        &mut self,
        name: &str,
        ns: Option<&str>,
        program: &Path,
        args: &[String],
    ) -> anyhow::Result<()> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        let work = self.lab.work_dir().to_owned();
        let mut daemon = match ns {
            Some(ns) => Daemon::new(name, ns, program, args, &work),
            None => Daemon::on_host(name, program, args, &work),
        };
        daemon.start()?;
        self.daemons.push(daemon);
        Ok(())
    }

    fn daemon_mut(&mut self, name: &str) -> Option<&mut Daemon> {
        self.daemons.iter_mut().find(|d| d.name() == name)
    }

    /// The log of a kube daemon (`c1-apiserver`, `c1-node-agent`...).
    pub fn daemon_log(&self, name: &str) -> String {
        self.daemons
            .iter()
            .find(|d| d.name() == name)
            .map(Daemon::log)
            .unwrap_or_default()
    }

    /// Stops a kube daemon (`c1-apiserver`, `c1-etcd`...): SIGTERM, then SIGKILL after a grace.
    pub fn stop_daemon(&mut self, name: &str) -> anyhow::Result<()> {
        let daemon = self
            .daemon_mut(name)
            .with_context(|| format!("no kube daemon {name}"))?;
        daemon.stop(STOP_GRACE);
        Ok(())
    }

    /// Starts a stopped kube daemon again with the same flags (and, for an API server or etcd,
    /// waits until the cluster's API server is ready).
    pub fn start_daemon(&mut self, name: &str) -> anyhow::Result<()> {
        self.daemon_mut(name)
            .with_context(|| format!("no kube daemon {name}"))?
            .start()?;
        let cluster = name
            .strip_prefix('c')
            .and_then(|rest| rest.split('-').next())
            .and_then(|n| n.parse::<usize>().ok());
        match cluster {
            Some(c) if name.ends_with("-apiserver") || name.ends_with("-etcd") => {
                self.wait_api_ready(c)
            }
            _ => Ok(()),
        }
    }

    fn wait_api_ready(&mut self, c: usize) -> anyhow::Result<()> {
        let ns = self.lab.topology().gw_ns(c);
        let name = format!("c{c}-apiserver");
        let etcd = format!("c{c}-etcd");
        poll_until(
            &format!("the c{c} API server's /readyz"),
            API_READY_TIMEOUT,
            || {
                for d in [&etcd, &name] {
                    if let Some(daemon) = self.daemon_mut(d)
                        && let Some(status) = daemon.exit_status()
                    {
                        return Err(format!(
                            "{d} exited ({status}); log: {}",
                            tail(&daemon.log())
                        ));
                    }
                }
                let url = format!("https://127.0.0.1:{API_PORT}/readyz");
                let out = ns::run(
                    &mut ns::exec_in(&ns, &["curl", "-sk", "--max-time", "3", &url]),
                    Duration::from_secs(5),
                )
                .map_err(|e| e.to_string())?;
                let body = String::from_utf8_lossy(&out.stdout);
                if body.trim() == "ok" {
                    Ok(())
                } else {
                    Err(format!("/readyz: {}", body.trim()))
                }
            },
        )
    }

    fn wait_node_ready(&mut self, c: usize) -> anyhow::Result<()> {
        let agent = format!("c{c}-node-agent");
        poll_until(&format!("node c{c} Ready"), NODE_READY_TIMEOUT, || {
            if let Some(daemon) = self.daemon_mut(&agent)
                && let Some(status) = daemon.exit_status()
            {
                return Err(format!(
                    "the node agent exited ({status}); log: {}",
                    tail(&daemon.log())
                ));
            }
            let out = self
                .kubectl(
                    c,
                    &[
                        "get",
                        "node",
                        &format!("c{c}"),
                        "-o",
                        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
                    ],
                    None,
                )
                .map_err(|e| format!("{e:#}"))?;
            match String::from_utf8_lossy(&out.stdout).trim() {
                "True" => Ok(()),
                _ => Err(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
            }
        })
    }

    /// `causeway crds | kubectl apply`, deploy/'s namespace and RBAC, and the ServiceAccount's
    /// token in a kubeconfig for the gateway.
    fn install_causeway(&self, c: usize) -> anyhow::Result<()> {
        let crds = ns::run_ok(
            Command::new(&self.lab.spec().causeway_bin).arg("crds"),
            KUBECTL_TIMEOUT,
        )
        .context("causeway crds")?;
        let crds = String::from_utf8_lossy(&crds.stdout).into_owned();
        self.kubectl_ok(c, &["apply", "--server-side", "-f", "-"], Some(&crds))?;
        self.kubectl_ok(
            c,
            &[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "crd/serviceexports.multicluster.x-k8s.io",
                "crd/serviceimports.multicluster.x-k8s.io",
            ],
            None,
        )?;
        self.kubectl_ok(c, &["apply", "-f", "-"], Some(NAMESPACE_YAML))?;
        self.kubectl_ok(c, &["apply", "-f", "-"], Some(RBAC_YAML))?;
        let token = self.kubectl_ok(
            c,
            &[
                "-n",
                GATEWAY_NS,
                "create",
                "token",
                GATEWAY_SA,
                "--duration=48h",
            ],
            None,
        )?;
        let pki = self.cluster_dir(c).join("pki");
        let ca = std::fs::read(pki.join("ca.crt")).context("reading the cluster CA")?;
        let yaml = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c{c}\n  cluster:\n    server: https://127.0.0.1:{API_PORT}\n    certificate-authority-data: {}\nusers:\n- name: {GATEWAY_SA}\n  user:\n    token: {}\ncontexts:\n- name: c{c}\n  context:\n    cluster: c{c}\n    user: {GATEWAY_SA}\n    namespace: {GATEWAY_NS}\ncurrent-context: c{c}\n",
            base64(&ca),
            token.trim()
        );
        write_file(&pki.join("gateway.kubeconfig"), yaml.as_bytes(), 0o600)
    }

    fn start_gateway(&mut self, c: usize) -> anyhow::Result<()> {
        let addrs = KubeAddrs::of(self.lab.topology(), c);
        let mut env = OsString::from("KUBECONFIG=");
        env.push(self.cluster_dir(c).join("pki").join("gateway.kubeconfig"));
        self.lab.spawn_gateway_with(
            c,
            vec![
                "--source".into(),
                "kube".into(),
                "--clusterset-ip-range".into(),
                addrs.clusterset_ip_range.into(),
            ],
            vec![env],
        )
    }

    /// Stops the gateways, then the kube daemons, then tears the lab down, reporting failures
    /// (Drop does the same, silently, stopping the kube daemons first).
    pub fn down(mut self) -> anyhow::Result<()> {
        // Gateways first, so that none logs its API server going away.
        let clusters: Vec<usize> = self.lab.topology().clusters().collect();
        for c in clusters {
            self.lab.stop_gateway(c);
        }
        for d in &mut self.daemons {
            d.stop(STOP_GRACE);
        }
        self.lab.down_in_place()
    }
}

/// Stops the node agents a detached kube lab left on the host (`lab down`): each pid file
/// `<work>/pids/cI-node-agent.pid` whose process still runs a node agent gets SIGTERM.
pub fn stop_host_daemons(work_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(work_dir.join("pids")) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with("-node-agent.pid") {
            continue;
        }
        let Some(pid) = std::fs::read_to_string(entry.path())
            .ok()
            .and_then(|s| s.trim().parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        // Only if that pid is still a node agent (pids are reused).
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if pid > 1 && String::from_utf8_lossy(&cmdline).contains("node-agent-") {
            // SAFETY: kill(2) has no memory-safety preconditions; the pid was checked above.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
    }
}

/// `kubectl --kubeconfig K --context cI ARGS` with an optional stdin.
pub fn kubectl_in(
    kubectl: &Path,
    kubeconfig: &Path,
    cluster: usize,
    args: &[&str],
    stdin: Option<&str>,
) -> anyhow::Result<Output> {
    let mut command = Command::new(kubectl);
    command
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--context")
        .arg(format!("c{cluster}"))
        .args(args);
    let shown = ns::describe(&command);
    let Some(input) = stdin else {
        return Ok(ns::run(&mut command, KUBECTL_TIMEOUT)?);
    };
    // ns::run gives the child no stdin: write it to a file and redirect.
    let file = tempfile_with(input)?;
    command.stdin(Stdio::from(
        std::fs::File::open(&file).with_context(|| format!("reopening {}", file.display()))?,
    ));
    let output = spawn_with_stdin(command, KUBECTL_TIMEOUT).with_context(|| shown.clone());
    let _ = std::fs::remove_file(&file);
    output
}

/// Runs a command whose stdin is already set, capturing output, with a deadline.
fn spawn_with_stdin(mut command: Command, timeout: Duration) -> anyhow::Result<Output> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning")?;
    let deadline = crate::wait::Deadline::after(timeout);
    loop {
        if child.try_wait()?.is_some() {
            return Ok(child.wait_with_output()?);
        }
        if deadline.passed() {
            let _ = child.kill();
            let _ = child.wait();
            bail!("timed out after {}s", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tempfile_with(contents: &str) -> anyhow::Result<PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        "netlab-kubectl-{}-{}.yaml",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// One cluster's CA (in memory while issuing).
struct Pki {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
    ca_key_pem: String,
}

impl Pki {
    fn new(common_name: &str) -> anyhow::Result<Self> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().context("generating a CA key")?;
        let cert = params.self_signed(&key).context("signing the CA")?;
        let ca_pem = cert.pem();
        let ca_key_pem = key.serialize_pem();
        Ok(Self {
            issuer: Issuer::new(params, key),
            ca_pem,
            ca_key_pem,
        })
    }

    fn write_ca(&self, dir: &Path) -> anyhow::Result<()> {
        write_file(&dir.join("ca.crt"), self.ca_pem.as_bytes(), 0o644)?;
        write_file(&dir.join("ca.key"), self.ca_key_pem.as_bytes(), 0o600)
    }

    /// Issues `<name>.crt`/`<name>.key`: a client certificate (CN user, O groups), and with
    /// `server` also a serving one for the IPs and names.
    #[allow(clippy::too_many_arguments)]
    fn issue(
        &self,
        dir: &Path,
        name: &str,
        common_name: &str,
        groups: &[&str],
        ips: &[&str],
        dns: &[&str],
        server: bool,
    ) -> anyhow::Result<()> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        for group in groups {
            dn.push(DnType::OrganizationName, *group);
        }
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if server {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        for ip in ips {
            params.subject_alt_names.push(SanType::IpAddress(
                ip.parse().with_context(|| format!("address {ip}"))?,
            ));
        }
        for name in dns {
            params
                .subject_alt_names
                .push(SanType::DnsName((*name).try_into().context("a DNS name")?));
        }
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().context("generating a key")?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .with_context(|| format!("signing {name}"))?;
        write_file(
            &dir.join(format!("{name}.crt")),
            cert.pem().as_bytes(),
            0o644,
        )?;
        write_file(
            &dir.join(format!("{name}.key")),
            key.serialize_pem().as_bytes(),
            0o600,
        )
    }
}

/// A kubeconfig with one context per entry (name, server, pki dir, user file stem), the
/// certificates embedded.
fn kubeconfig_yaml(
    entries: &[(String, String, &Path, &str)],
    current: &str,
) -> anyhow::Result<String> {
    let read = |dir: &Path, f: &str| -> anyhow::Result<String> {
        let bytes = std::fs::read(dir.join(f))
            .with_context(|| format!("reading {}", dir.join(f).display()))?;
        Ok(base64(&bytes))
    };
    let mut clusters = String::new();
    let mut users = String::new();
    let mut contexts = String::new();
    for (name, server, dir, user) in entries {
        let _ = write!(
            clusters,
            "- name: {name}\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\n",
            read(dir, "ca.crt")?
        );
        let _ = write!(
            users,
            "- name: {name}-{user}\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
            read(dir, &format!("{user}.crt"))?,
            read(dir, &format!("{user}.key"))?
        );
        let _ = write!(
            contexts,
            "- name: {name}\n  context:\n    cluster: {name}\n    user: {name}-{user}\n"
        );
    }
    Ok(format!(
        "apiVersion: v1\nkind: Config\nclusters:\n{clusters}users:\n{users}contexts:\n{contexts}current-context: {current}\n"
    ))
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// Standard base64 with padding (kubeconfig's `*-data` fields).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet_with_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xff, 0xfe]), "//4=");
    }

    #[test]
    fn kube_addresses_stay_inside_the_cluster_cidr_and_the_lower_band() {
        let t = Topology::new("cw", 3, 2).unwrap();
        let a = KubeAddrs::of(&t, 2);
        assert_eq!(a.node_ip, "10.102.0.1");
        assert_eq!(a.service_cidr, "10.102.96.0/20");
        assert_eq!(a.clusterset_ip_range, "10.102.96.128/25");
        assert_eq!(a.first_pod_ip, "10.102.0.64");
        assert_eq!(a.forward, "127.0.0.1:16442");
        assert_eq!(t.cluster_cidrs(2), ["10.102.0.0/16"]);
    }

    #[test]
    fn the_pinned_versions_are_read_from_versions_env() {
        assert!(pinned("KUBERNETES").is_some_and(|v| v.starts_with("v1.")));
        assert!(pinned("ETCD").is_some_and(|v| v.starts_with("v3.")));
        assert_eq!(pinned("NOPE"), None);
    }
}
