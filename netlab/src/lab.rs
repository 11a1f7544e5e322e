//! A whole lab: the topology built, certificates issued, the broker and one gateway per
//! cluster running, and the ways to look at it from inside a pod.
//!
//! [`Lab::up`] builds everything and waits until every gateway answers DNS from its pods;
//! [`Lab::bare`] builds only the namespaces (no binary needed). Dropping a `Lab` tears it down
//! (daemons stopped, namespaces and `/etc/netns` dirs removed; logs stay in the work dir).
//! The steps of the demo live in `story`; the daemons' supervision in `cluster`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{IpAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use anyhow::{Context, bail};
use ipnet::IpNet;

use crate::capture::Capture;
use crate::cluster::{self, CertFor, Daemon, STOP_GRACE};
use crate::ns;
use crate::probe;
use crate::topology::{Addressing, TUN_NAME, Topology, WAN_BRIDGE};
use crate::wait::poll_until;

/// Pods in every cluster of the lab.
pub const PODS_PER_CLUSTER: usize = 2;
/// How long the broker may take to bind its QUIC port after start.
const BROKER_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a gateway may take to answer DNS after start (key generation, TUN, broker dial).
const GATEWAY_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a pod's HTTP server may take to answer after start.
const SERVER_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on `exec`: generous, since commands run by the lab carry their own timeouts.
const EXEC_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on one `getent`: resolv.conf says 1 s × 2 attempts, and the A and AAAA lookups
/// may each take that.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);
/// curl's own whole-transfer limit, and our bound on the curl process around it.
const HTTP_TIMEOUT_SECS: u64 = 5;

/// What lab to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabSpec {
    /// Names every namespace (`P-c1-gw`) and the default work dir: lowercase letters and
    /// digits only. Two labs with different prefixes can run side by side.
    pub prefix: String,
    /// The `causeway` binary the lab runs (certs, broker, gateway, http-serve).
    pub causeway_bin: PathBuf,
    /// Where certificates, state, services dirs, logs and pid files go; default
    /// `/tmp/causeway-lab-<prefix>`. Cleared of a previous run's files on start.
    pub work_dir: Option<PathBuf>,
    pub clusters: usize,
    /// `(region, zone)` per cluster number, vouched for by its certificate (`certs issue
    /// --region --zone`) and passed to its gateway as `--region`/`--zone`; clusters not listed
    /// get neither (the failover lab makes c1 nearer to c2 than c3).
    pub localities: BTreeMap<usize, (String, String)>,
    /// Distinct CIDRs per cluster, or kind's defaults in every cluster.
    pub addressing: Addressing,
}

impl LabSpec {
    /// Three clusters, default work dir.
    pub fn new(prefix: &str, causeway_bin: impl Into<PathBuf>) -> Self {
        Self {
            prefix: prefix.to_owned(),
            causeway_bin: causeway_bin.into(),
            work_dir: None,
            clusters: 3,
            localities: BTreeMap::new(),
            addressing: Addressing::Distinct,
        }
    }
}

/// The work dir a lab with this prefix uses unless told otherwise.
pub fn default_work_dir(prefix: &str) -> PathBuf {
    PathBuf::from(format!("/tmp/causeway-lab-{prefix}"))
}

/// A running lab. See the module docs for its life cycle.
#[derive(Debug)]
pub struct Lab {
    spec: LabSpec,
    topology: Topology,
    work_dir: PathBuf,
    broker: Option<Daemon>,
    gateways: BTreeMap<usize, Daemon>,
    servers: Vec<Daemon>,
    /// Set by [`Lab::detach`]: dropping then leaves everything running.
    detached: bool,
    /// Each cluster's claimed ranges and their global ones, as the broker allocated them
    /// (read from a gateway's `causeway status` once every cluster registered; the broker
    /// keeps them across restarts).
    plan: BTreeMap<usize, Vec<(IpNet, IpNet)>>,
    /// Claims a gateway makes instead of its topology's CIDRs (see
    /// [`Lab::restart_gateway_claiming`]).
    claims: BTreeMap<usize, Vec<String>>,
}

impl Lab {
    /// Builds the namespaces only: no certificates, no daemons (the binary is not run).
    /// Leftovers of an earlier run with the same prefix are removed first.
    pub fn bare(spec: LabSpec) -> anyhow::Result<Self> {
        let topology = Topology::new(&spec.prefix, spec.clusters, PODS_PER_CLUSTER)?
            .with_addressing(spec.addressing);
        let work_dir = spec
            .work_dir
            .clone()
            .unwrap_or_else(|| default_work_dir(&spec.prefix));
        ns::destroy(&topology, STOP_GRACE).context("removing leftovers of an earlier lab")?;
        clear_work_dir(&work_dir)?;
        // Constructed before building so that a failure half way is torn down by Drop.
        let lab = Self {
            spec,
            topology,
            work_dir,
            broker: None,
            gateways: BTreeMap::new(),
            servers: Vec::new(),
            detached: false,
            plan: BTreeMap::new(),
            claims: BTreeMap::new(),
        };
        ns::create(&lab.topology).context("building the lab's namespaces")?;
        Ok(lab)
    }

    /// Builds the namespaces, issues certificates, starts the broker and every gateway, and
    /// returns once each gateway's DNS answers a query sent from one of its pods.
    pub fn up(spec: LabSpec) -> anyhow::Result<Self> {
        let mut lab = Self::bare(spec)?;
        lab.issue_certs()?;
        lab.start_broker()?;
        for c in lab.topology.clusters() {
            lab.spawn_gateway(c)?;
        }
        for c in lab.topology.clusters() {
            lab.wait_gateway_ready(c)?;
        }
        lab.wait_plan()?;
        Ok(lab)
    }

    /// Waits until the broker has given every cluster's claims their global ranges, as the
    /// c1 gateway's `causeway status` shows them, and keeps them for [`Lab::seen_from`].
    pub fn wait_plan(&mut self) -> anyhow::Result<()> {
        let ns = self.topology.gw_ns(1);
        let bin = self.spec.causeway_bin.clone();
        let want: BTreeMap<usize, Vec<IpNet>> = self
            .topology
            .clusters()
            .map(|c| {
                let cidrs = self.topology.cluster_cidrs(c);
                (c, cidrs.iter().filter_map(|s| s.parse().ok()).collect())
            })
            .collect();
        let plan = poll_until(
            "every cluster's global ranges",
            GATEWAY_READY_TIMEOUT,
            || {
                let output = ns::run(
                    &mut ns::exec_in(&ns, &[bin.as_os_str(), "status".as_ref()]),
                    EXEC_TIMEOUT,
                )
                .map_err(|e| e.to_string())?;
                let plan = parse_address_plan(&String::from_utf8_lossy(&output.stdout));
                let complete = want.iter().all(|(c, cidrs)| {
                    plan.get(&format!("c{c}"))
                        .is_some_and(|rows| cidrs.iter().all(|l| rows.iter().any(|(x, _)| x == l)))
                });
                if complete {
                    Ok(plan)
                } else {
                    Err(format!("plan so far: {plan:?}"))
                }
            },
        )?;
        self.plan = self
            .topology
            .clusters()
            .map(|c| (c, plan.get(&format!("c{c}")).cloned().unwrap_or_default()))
            .collect();
        Ok(())
    }

    /// The address through which cluster `from` reaches cluster `cluster`'s local address
    /// `local`: the same address within a cluster, else its global one under the plan (see
    /// [`Lab::wait_plan`]). Unchanged if no range covers it.
    pub fn seen_from(&self, from: usize, cluster: usize, local: IpAddr) -> IpAddr {
        if from == cluster {
            return local;
        }
        self.plan
            .get(&cluster)
            .into_iter()
            .flatten()
            .find_map(|(l, g)| remap(*l, *g, local))
            .unwrap_or(local)
    }

    /// [`Lab::seen_from`] for pod `pod` of `cluster`.
    pub fn pod_seen_from(&self, from: usize, cluster: usize, pod: usize) -> IpAddr {
        self.seen_from(
            from,
            cluster,
            IpAddr::V4(self.topology.pod_addr(cluster, pod)),
        )
    }

    /// The address plan as read from the gateways: cluster → (local, global) ranges.
    pub fn plan(&self) -> &BTreeMap<usize, Vec<(IpNet, IpNet)>> {
        &self.plan
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    pub fn spec(&self) -> &LabSpec {
        &self.spec
    }

    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    /// Runs `args` inside namespace `ns` and returns its output whatever its exit status.
    pub fn exec<S: AsRef<std::ffi::OsStr>>(&self, ns: &str, args: &[S]) -> anyhow::Result<Output> {
        Ok(ns::run(&mut ns::exec_in(ns, args), EXEC_TIMEOUT)?)
    }

    /// Resolves `name` from a pod with `getent hosts` (the pod's resolv.conf points at its
    /// gateway's DNS) and returns every address in the order the answer listed them,
    /// duplicates dropped. "Not found" is an empty list, not an error.
    pub fn resolve(&self, cluster: usize, pod: usize, name: &str) -> anyhow::Result<Vec<IpAddr>> {
        let ns = self.topology.pod_ns(cluster, pod);
        let output = ns::run(
            &mut ns::exec_in(&ns, &["getent", "hosts", name]),
            RESOLVE_TIMEOUT,
        )?;
        // getent: 0 found, 2 not found (NXDOMAIN, no data, or no answer in time).
        match output.status.code() {
            Some(0) => Ok(parse_getent_hosts(&String::from_utf8_lossy(&output.stdout))),
            Some(2) => Ok(Vec::new()),
            _ => bail!(
                "getent hosts {name} in {ns} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        }
    }

    /// Fetches `url` with curl from a pod and returns the body; fails on any transport
    /// error, timeout or non-2xx status.
    pub fn http_get(&self, cluster: usize, pod: usize, url: &str) -> anyhow::Result<String> {
        let ns = self.topology.pod_ns(cluster, pod);
        let max_time = HTTP_TIMEOUT_SECS.to_string();
        let args = [
            "curl",
            "-sS",
            "--fail",
            "--connect-timeout",
            "3",
            "--max-time",
            &max_time,
            url,
        ];
        let output = ns::run(
            &mut ns::exec_in(&ns, &args),
            Duration::from_secs(HTTP_TIMEOUT_SECS + 5),
        )?;
        if !output.status.success() {
            bail!(
                "curl {url} from {ns}: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Starts `causeway lab http-serve --listen 0.0.0.0:80 --body BODY` in a pod and waits
    /// until the pod itself gets the body back. Replaces a server already in that pod.
    pub fn start_http_server(
        &mut self,
        cluster: usize,
        pod: usize,
        body: &str,
    ) -> anyhow::Result<()> {
        let name = format!("c{cluster}-pod{pod}-http");
        self.servers.retain(|s| s.name() != name);
        let args: Vec<OsString> = [
            "lab",
            "http-serve",
            "--listen",
            "0.0.0.0:80",
            "--body",
            body,
        ]
        .map(OsString::from)
        .into();
        let mut server = Daemon::new(
            &name,
            &self.topology.pod_ns(cluster, pod),
            &self.spec.causeway_bin,
            args,
            &self.work_dir,
        );
        server.start()?;
        let url = format!("http://{}/", self.topology.pod_addr(cluster, pod));
        let result = poll_until(
            &format!("the HTTP server in c{cluster}-pod{pod}"),
            SERVER_READY_TIMEOUT,
            || {
                if let Some(status) = server.exit_status() {
                    return Err(format!(
                        "it exited ({status}); log: {}",
                        tail(&server.log())
                    ));
                }
                match self.http_get(cluster, pod, &url) {
                    Ok(got) if got == body => Ok(()),
                    Ok(got) => Err(format!("body {got:?}")),
                    Err(e) => Err(format!("{e:#}")),
                }
            },
        );
        self.servers.push(server);
        result
    }

    /// Kills the HTTP server in a pod (SIGKILL at once, as a crashing process), if one runs.
    pub fn kill_http_server(&mut self, cluster: usize, pod: usize) {
        let name = format!("c{cluster}-pod{pod}-http");
        for server in self.servers.iter_mut().filter(|s| s.name() == name) {
            server.kill();
        }
    }

    /// Kills a cluster's gateway (SIGKILL at once: no goodbye to peers or broker).
    pub fn kill_gateway(&mut self, cluster: usize) {
        if let Some(gateway) = self.gateways.get_mut(&cluster) {
            gateway.kill();
        }
    }

    /// The cluster's file-source directory (passed to its gateway as `--source file:DIR`).
    pub fn services_dir(&self, cluster: usize) -> PathBuf {
        self.cluster_dir(cluster).join("services")
    }

    /// Writes (atomically) a service file into a cluster's services dir.
    pub fn write_service(&self, cluster: usize, file_name: &str, yaml: &str) -> anyhow::Result<()> {
        cluster::write_service(&self.services_dir(cluster), file_name, yaml)
    }

    /// Removes a service file from a cluster's services dir.
    pub fn remove_service(&self, cluster: usize, file_name: &str) -> anyhow::Result<()> {
        cluster::remove_service(&self.services_dir(cluster), file_name)
    }

    /// Starts the broker (same state file every time) and waits until its port is bound.
    pub fn start_broker(&mut self) -> anyhow::Result<()> {
        let broker_dir = self.work_dir.join("broker");
        let args: Vec<OsString> = vec![
            "broker".into(),
            "--listen".into(),
            self.topology.broker_listen().to_string().into(),
            "--state".into(),
            broker_dir.join("broker.redb").into(),
            "--tls-dir".into(),
            broker_dir.join("tls").into(),
        ];
        let broker = self.broker.get_or_insert_with(|| {
            Daemon::new(
                "broker",
                &self.topology.broker_ns(),
                &self.spec.causeway_bin,
                args,
                &self.work_dir,
            )
        });
        broker.start()?;
        let ns = self.topology.broker_ns();
        let listen = self.topology.broker_listen().to_string();
        poll_until(
            "the broker to bind its QUIC port",
            BROKER_READY_TIMEOUT,
            || {
                if let Some(status) = broker.exit_status() {
                    return Err(format!(
                        "it exited ({status}); log: {}",
                        tail(&broker.log())
                    ));
                }
                let sockets = ns::run(&mut ns::exec_in(&ns, &["ss", "-Hnlu"]), EXEC_TIMEOUT)
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .map_err(|e| e.to_string())?;
                if sockets.contains(&listen) {
                    Ok(())
                } else {
                    Err(format!("no UDP socket on {listen}"))
                }
            },
        )
    }

    /// Stops the broker (SIGTERM, then SIGKILL after a grace period); its state file stays.
    pub fn stop_broker(&mut self) {
        if let Some(broker) = &mut self.broker {
            broker.stop(STOP_GRACE);
        }
    }

    /// The broker's pid while it runs.
    pub fn broker_pid(&self) -> Option<u32> {
        self.broker.as_ref().and_then(Daemon::pid)
    }

    /// Starts a cluster's gateway (again) and waits until its DNS answers from a pod.
    pub fn start_gateway(&mut self, cluster: usize) -> anyhow::Result<()> {
        self.spawn_gateway(cluster)?;
        self.wait_gateway_ready(cluster)
    }

    /// Restarts a cluster's gateway claiming `cidrs` (its `--cidr`) instead of its topology's;
    /// `None` goes back to the topology's. Returns once its DNS answers (which it does whether
    /// or not the broker accepts the claims).
    pub fn restart_gateway_claiming(
        &mut self,
        cluster: usize,
        cidrs: Option<Vec<String>>,
    ) -> anyhow::Result<()> {
        self.stop_gateway(cluster);
        self.gateways.remove(&cluster);
        match cidrs {
            Some(cidrs) => self.claims.insert(cluster, cidrs),
            None => self.claims.remove(&cluster),
        };
        self.start_gateway(cluster)
    }

    /// Every route of a cluster's gateway namespace, both families, every table, as `ip`
    /// prints them.
    pub fn route_tables(&self, cluster: usize) -> anyhow::Result<String> {
        let ns = self.topology.gw_ns(cluster);
        let mut out = String::new();
        for family in ["-4", "-6"] {
            let output = self.exec(&ns, &["ip", family, "route", "show", "table", "all"])?;
            if !output.status.success() {
                bail!(
                    "ip {family} route show table all in {ns}: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            out.push_str(&String::from_utf8_lossy(&output.stdout));
        }
        Ok(out)
    }

    /// `causeway status` of a cluster's gateway (read from its admin port, in its namespace).
    pub fn gateway_status(&self, cluster: usize) -> anyhow::Result<String> {
        let bin = self.spec.causeway_bin.clone();
        let output = self.exec(
            &self.topology.gw_ns(cluster),
            &[bin.as_os_str(), "status".as_ref()],
        )?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Stops a cluster's gateway; its state dir (WireGuard key) stays.
    pub fn stop_gateway(&mut self, cluster: usize) {
        if let Some(gateway) = self.gateways.get_mut(&cluster) {
            gateway.stop(STOP_GRACE);
        }
    }

    /// Whether a cluster's gateway process is alive (false if it exited or never started).
    pub fn gateway_running(&mut self, cluster: usize) -> bool {
        self.gateways
            .get_mut(&cluster)
            .is_some_and(Daemon::is_running)
    }

    pub fn gateway_log(&self, cluster: usize) -> String {
        self.gateways
            .get(&cluster)
            .map(Daemon::log)
            .unwrap_or_default()
    }

    pub fn broker_log(&self) -> String {
        self.broker.as_ref().map(Daemon::log).unwrap_or_default()
    }

    /// Where every daemon's log is.
    pub fn log_dir(&self) -> PathBuf {
        self.work_dir.join("logs")
    }

    /// Starts capturing every frame on the wan bridge into `<work>/captures/<name>.pcap`.
    pub fn capture_wan(&self, name: &str) -> anyhow::Result<Capture> {
        let dir = self.work_dir.join("captures");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Capture::start(
            &self.topology.wan_ns(),
            WAN_BRIDGE,
            &dir.join(format!("{name}.pcap")),
        )
    }

    /// Leaves the lab running when this value is dropped (for `causeway lab up`); `down`
    /// finds it again by prefix.
    pub fn detach(mut self) {
        self.detach_in_place();
    }

    /// [`Lab::detach`] for a lab owned by a larger one (the kube lab).
    pub(crate) fn detach_in_place(&mut self) {
        self.detached = true;
        for daemon in self.daemons_mut() {
            daemon.detach();
        }
    }

    /// Tears the lab down now, reporting failures (Drop does the same, silently).
    pub fn down(mut self) -> anyhow::Result<()> {
        self.down_in_place()
    }

    /// [`Lab::down`] for a lab owned by a larger one; dropping it afterwards does nothing.
    pub(crate) fn down_in_place(&mut self) -> anyhow::Result<()> {
        self.detached = true;
        self.teardown()
    }

    fn daemons_mut(&mut self) -> impl Iterator<Item = &mut Daemon> {
        self.servers
            .iter_mut()
            .chain(self.gateways.values_mut())
            .chain(self.broker.as_mut())
    }

    fn teardown(&mut self) -> anyhow::Result<()> {
        for daemon in self.daemons_mut() {
            daemon.stop(STOP_GRACE);
        }
        ns::destroy(&self.topology, STOP_GRACE).context("deleting the lab's namespaces")?;
        Ok(())
    }

    fn cluster_dir(&self, cluster: usize) -> PathBuf {
        self.work_dir.join(self.topology.cluster_id(cluster))
    }

    pub(crate) fn issue_certs(&self) -> anyhow::Result<()> {
        let bin = &self.spec.causeway_bin;
        let ca = self.work_dir.join("ca");
        cluster::certs_init(bin, &ca)?;
        cluster::certs_issue(
            bin,
            &ca,
            CertFor::Broker,
            &self.work_dir.join("broker").join("tls"),
        )?;
        for c in self.topology.clusters() {
            let id = self.topology.cluster_id(c);
            cluster::certs_issue(
                bin,
                &ca,
                CertFor::Cluster(
                    &id,
                    self.spec
                        .localities
                        .get(&c)
                        .map(|(r, z)| (r.as_str(), z.as_str())),
                ),
                &self.cluster_dir(c).join("tls"),
            )?;
        }
        Ok(())
    }

    fn spawn_gateway(&mut self, c: usize) -> anyhow::Result<()> {
        let services = self.services_dir(c);
        std::fs::create_dir_all(&services)
            .with_context(|| format!("creating {}", services.display()))?;
        let mut source = OsString::from("file:");
        source.push(&services);
        self.spawn_gateway_with(c, vec!["--source".into(), source], Vec::new())
    }

    /// Starts a cluster's gateway with `source_args` (`--source ...` and its companions) and
    /// `env` (e.g. KUBECONFIG) added to the lab's flags; does not wait for it.
    pub(crate) fn spawn_gateway_with(
        &mut self,
        c: usize,
        source_args: Vec<OsString>,
        env: Vec<OsString>,
    ) -> anyhow::Result<()> {
        let t = &self.topology;
        let dir = self.cluster_dir(c);
        let state = dir.join("state");
        std::fs::create_dir_all(&state).with_context(|| format!("creating {}", state.display()))?;
        let mut args: Vec<OsString> = Vec::new();
        let program = if env.is_empty() {
            self.spec.causeway_bin.clone()
        } else {
            // `env VAR=... causeway gateway ...`: env execs causeway, so the pid stays the same.
            args.extend(env);
            args.push(self.spec.causeway_bin.clone().into());
            PathBuf::from("/usr/bin/env")
        };
        args.extend([
            "gateway".into(),
            "--cluster-id".into(),
            t.cluster_id(c).into(),
            "--broker".into(),
            t.broker_listen().to_string().into(),
            "--tls-dir".into(),
            dir.join("tls").into(),
        ]);
        args.extend(source_args);
        args.extend::<[OsString; 10]>([
            "--wg-listen".into(),
            t.wg_listen(c).to_string().into(),
            "--cidr".into(),
            self.claims
                .get(&c)
                .cloned()
                .unwrap_or_else(|| t.cluster_cidrs(c))
                .join(",")
                .into(),
            "--dns-listen".into(),
            t.dns_listen(c).to_string().into(),
            "--state-dir".into(),
            state.into(),
            "--tun-name".into(),
            TUN_NAME.into(),
        ]);
        if let Some((region, zone)) = self.spec.localities.get(&c) {
            args.extend([
                "--region".into(),
                region.into(),
                "--zone".into(),
                zone.into(),
            ]);
        }
        let name = format!("{}-gw", t.cluster_id(c));
        let ns = t.gw_ns(c);
        let gateway = self
            .gateways
            .entry(c)
            .or_insert_with(|| Daemon::new(&name, &ns, &program, args, &self.work_dir));
        gateway.start()
    }

    pub(crate) fn wait_gateway_ready(&mut self, c: usize) -> anyhow::Result<()> {
        let pod_ns = self.topology.pod_ns(c, 1);
        let dns = self.topology.dns_listen(c);
        let Some(gateway) = self.gateways.get_mut(&c) else {
            bail!("gateway c{c} was never started")
        };
        poll_until(
            &format!("the c{c} gateway's DNS on {dns}"),
            GATEWAY_READY_TIMEOUT,
            || {
                if let Some(status) = gateway.exit_status() {
                    return Err(format!(
                        "it exited ({status}); log: {}",
                        tail(&gateway.log())
                    ));
                }
                let socket = ns::in_netns(&pod_ns, || UdpSocket::bind("0.0.0.0:0"))
                    .and_then(|bound| bound)
                    .map_err(|e| format!("opening a UDP socket in {pod_ns}: {e}"))?;
                probe::dns_answers(&socket, dns)
            },
        )
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.detached
            && let Err(e) = self.teardown()
        {
            eprintln!("netlab: tearing down lab {}: {e:#}", self.topology.prefix());
        }
    }
}

/// The `ADDRESS PLAN` table of `causeway status` (rows `CLUSTER LOCAL GLOBAL USE`): cluster
/// id → its (local, global) ranges.
pub fn parse_address_plan(status: &str) -> BTreeMap<String, Vec<(IpNet, IpNet)>> {
    let mut out: BTreeMap<String, Vec<(IpNet, IpNet)>> = BTreeMap::new();
    let rows = status
        .lines()
        .skip_while(|l| l.trim() != "ADDRESS PLAN")
        .skip(2)
        .take_while(|l| !l.trim().is_empty());
    for row in rows {
        let mut cells = row.split_whitespace();
        let (Some(cluster), Some(local), Some(global)) = (cells.next(), cells.next(), cells.next())
        else {
            continue;
        };
        if let (Ok(local), Ok(global)) = (local.parse(), global.parse()) {
            out.entry(cluster.to_owned())
                .or_default()
                .push((local, global));
        }
    }
    out
}

/// `ip` in `from`, moved to the same offset in `to` (same prefix length).
fn remap(from: IpNet, to: IpNet, ip: IpAddr) -> Option<IpAddr> {
    if !from.contains(&ip) || from.prefix_len() != to.prefix_len() {
        return None;
    }
    match (ip, from.hostmask(), to.network()) {
        (IpAddr::V4(ip), IpAddr::V4(host), IpAddr::V4(net)) => Some(IpAddr::V4(
            std::net::Ipv4Addr::from(u32::from(net) | (u32::from(ip) & u32::from(host))),
        )),
        (IpAddr::V6(ip), IpAddr::V6(host), IpAddr::V6(net)) => Some(IpAddr::V6(
            std::net::Ipv6Addr::from(u128::from(net) | (u128::from(ip) & u128::from(host))),
        )),
        _ => None,
    }
}

/// The addresses of `getent hosts` output ("ADDR NAME [ALIASES]" per line), in order, deduped.
pub fn parse_getent_hosts(stdout: &str) -> Vec<IpAddr> {
    let mut addresses = Vec::new();
    for address in stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse::<IpAddr>().ok())
    {
        if !addresses.contains(&address) {
            addresses.push(address);
        }
    }
    addresses
}

/// Removes the files a previous run left in the work dir (only the ones a lab makes).
fn clear_work_dir(work_dir: &Path) -> anyhow::Result<()> {
    let mut ours = vec!["ca", "broker", "logs", "pids", "captures"]
        .into_iter()
        .map(PathBuf::from)
        .collect::<Vec<_>>();
    // Any cluster count: a previous run may have had more clusters.
    ours.extend((1..=9).map(|c| PathBuf::from(format!("c{c}"))));
    for sub in ours {
        let path = work_dir.join(sub);
        match std::fs::remove_dir_all(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("clearing {}", path.display()));
            }
            _ => {}
        }
    }
    std::fs::create_dir_all(work_dir).with_context(|| format!("creating {}", work_dir.display()))
}

/// The last lines of a log, for error messages.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn getent_output_keeps_answer_order_and_drops_duplicates() {
        let out = "10.103.0.10     web.shop.svc.global\n10.101.0.10     web.shop.svc.global\n10.103.0.10 web\n";
        let want: Vec<IpAddr> = vec![
            "10.103.0.10".parse().unwrap(),
            "10.101.0.10".parse().unwrap(),
        ];
        assert_eq!(parse_getent_hosts(out), want);
        assert_eq!(parse_getent_hosts(""), Vec::<IpAddr>::new());
    }
}
