//! The command line: every subcommand and flag, parsed into validated types (`ClusterId`,
//! `IpNet`, `SocketAddr`), so that a bad flag is refused by name before anything starts.
//! `main` dispatches; `app` runs the daemons.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;

use crate::model::ClusterId;

/// causeway joins clusters into one network: a WireGuard tunnel between every pair of cluster
/// gateways, exported services synced through a broker, and a `svc.global` DNS zone in every
/// cluster that answers with the nearest ready endpoints.
///
/// Typical setup: `certs init` once, `certs issue` per cluster and for the broker, run one
/// `broker`, and one `gateway` per cluster. `lab demo` shows the whole story on one machine.
#[derive(Debug, Parser)]
#[command(name = "causeway", version, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log format: human-readable text or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "CAUSEWAY_LOG_FORMAT")]
    pub log_format: LogFormat,

    /// Log filter, in tracing's EnvFilter syntax (e.g. `info`, `causeway=debug`).
    #[arg(
        long,
        global = true,
        default_value = "info,hickory_server=warn,quinn=warn",
        env = "CAUSEWAY_LOG"
    )]
    pub log: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the clusterset's certificate authority and issue certificates from it.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Run the broker: the registry of clusters and exported services that gateways sync with.
    Broker(BrokerArgs),
    /// Run one cluster's gateway: tunnels to the other clusters, service sync and DNS.
    Gateway(Box<GatewayArgs>),
    /// A lab of three clusters built from network namespaces on this machine (Linux, root).
    #[command(subcommand)]
    Lab(LabCommand),
    /// Show a running gateway's connections, exports, imports and broker link (read from its
    /// admin port).
    Status(StatusArgs),
    /// Explain the answer a gateway's DNS gives for a name: every candidate endpoint with the
    /// reason it is in, out, or ranked where it is, and the age of the data.
    Explain(ExplainArgs),
    /// Check a running gateway end to end (broker, each peer's handshake and probe, DNS
    /// answering its own exports, CIDR overlaps, MTU); exits nonzero if any check fails.
    Diagnose(DiagnoseArgs),
    /// Print the MCS CRDs (ServiceExport, ServiceImport; generated from causeway's types) as a
    /// YAML stream, for `kubectl apply -f -`.
    Crds,
    /// Print everything one cluster runs (CRDs, namespace, RBAC, ConfigMap, the gateway, the DNS
    /// replicas and their Service), the same objects as deploy/, for `kubectl apply -f -`.
    Install(InstallArgs),
    /// Run a DNS replica: serve the same zones as a gateway, from the records the gateway
    /// publishes on its admin port (followed by long poll; the last good records stay served
    /// while the gateway is unreachable).
    Dns(DnsArgs),
}

#[derive(Debug, Args)]
pub struct DnsArgs {
    /// The gateway's admin port to follow, `http://HOST:PORT` (in Kubernetes, the
    /// causeway-gateway-admin Service, which only the ready leader backs).
    #[arg(long, value_name = "URL", env = "CAUSEWAY_DNS_FROM")]
    pub from: crate::replica::proto::AdminUrl,
    /// Address (UDP and TCP) to serve DNS on, bound once the first records have loaded.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:53")]
    pub listen: SocketAddr,
    /// Address of the replica's admin port: /healthz, /readyz (ready once records have
    /// loaded), /metrics.
    #[arg(long, value_name = "ADDR", default_value = crate::admin::DEFAULT_ADMIN_LISTEN, env = "CAUSEWAY_ADMIN_LISTEN")]
    pub admin_listen: SocketAddr,
    /// A resolver to forward queries outside the served zones to. Without it such queries
    /// are REFUSED.
    #[arg(long, value_name = "ADDR")]
    pub upstream: Option<SocketAddr>,
    /// UDP sockets to serve DNS with, each on a thread of its own (SO_REUSEPORT: the kernel
    /// spreads clients over them). Default: one per CPU this process may run on.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub udp_sockets: Option<u16>,
}

impl From<&DnsArgs> for crate::replica::run::ReplicaConfig {
    fn from(args: &DnsArgs) -> Self {
        Self {
            from: args.from.clone(),
            listen: args.listen,
            admin_listen: args.admin_listen,
            upstream: args.upstream,
            wait: crate::replica::proto::DEFAULT_WAIT,
            udp_sockets: args.udp_sockets.map(usize::from),
        }
    }
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// This cluster's id (a DNS label), as in its certificate.
    #[arg(long, value_name = "ID")]
    pub cluster_id: ClusterId,
    /// Broker address(es); repeat the flag or separate with commas.
    #[arg(
        long = "broker",
        value_name = "ADDR",
        required = true,
        value_delimiter = ','
    )]
    pub brokers: Vec<SocketAddr>,
    /// This cluster's pod and service ranges.
    #[arg(
        long = "cidr",
        value_name = "CIDR",
        required = true,
        value_delimiter = ','
    )]
    pub cidrs: Vec<IpNet>,
    /// The gateway's container image (default: the base's causeway:latest).
    #[arg(long, value_name = "IMAGE", value_parser = parse_image)]
    pub image: Option<String>,
    /// Also print the causeway-tls Secret from this directory (ca.crt, tls.crt, tls.key, from
    /// `certs issue --cluster ID`). Without it, create the Secret yourself.
    #[arg(long, value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Also print the ServiceMonitor (needs the Prometheus operator's CRD on the cluster).
    #[arg(long)]
    pub service_monitor: bool,
}

impl InstallArgs {
    /// The validated installation, with the TLS files read.
    pub fn to_install(&self) -> anyhow::Result<crate::source::k8s::manifests::Install> {
        use anyhow::Context as _;
        let tls = match &self.tls_dir {
            Some(dir) => Some(
                crate::source::k8s::manifests::read_tls(dir)
                    .with_context(|| format!("reading the TLS files in {}", dir.display()))?,
            ),
            None => None,
        };
        Ok(crate::source::k8s::manifests::Install {
            cluster_id: self.cluster_id.clone(),
            brokers: self.brokers.clone(),
            cidrs: self.cidrs.clone(),
            image: self.image.clone(),
            service_monitor: self.service_monitor,
            tls,
        })
    }
}

fn parse_image(s: &str) -> Result<String, String> {
    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err(format!("{s:?} is not an image reference"))
    } else {
        Ok(s.to_owned())
    }
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create a new clusterset CA (ca.crt, ca.key) in DIR. Refuses to overwrite one.
    Init {
        /// Directory to write the CA into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Issue a certificate signed by the CA: for a cluster's gateway (the cluster id is carried in
    /// the certificate, and the broker lets it write only that cluster's records) or for the broker.
    /// Writes DIR/ca.crt, DIR/tls.crt and DIR/tls.key, the layout --tls-dir expects.
    Issue {
        /// The cluster id to issue a gateway certificate for.
        #[arg(
            long,
            value_name = "ID",
            conflicts_with = "broker",
            required_unless_present = "broker"
        )]
        cluster: Option<ClusterId>,
        /// Issue the broker's server certificate instead.
        #[arg(long)]
        broker: bool,
        /// The region the certificate vouches for (a DNS label): the broker accepts a Hello
        /// from this cluster only with exactly this --region.
        #[arg(long, value_name = "REGION", conflicts_with = "broker")]
        region: Option<String>,
        /// The zone the certificate vouches for (a DNS label), as --region.
        #[arg(long, value_name = "ZONE", conflicts_with = "broker")]
        zone: Option<String>,
        /// Directory holding the CA (ca.crt, ca.key) made by `certs init`.
        #[arg(long, value_name = "DIR", default_value = "causeway-ca")]
        ca_dir: PathBuf,
        /// Directory to write the certificate into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Issue a new key and certificate for a cluster into its existing TLS directory, replacing
    /// the files atomically. The old certificate stays valid; a running gateway picks up the new
    /// files by itself. Prints both serials: add `serial:OLD` to the broker's --deny-list once
    /// every gateway of the cluster has moved.
    Rotate {
        /// The cluster whose certificate is in DIR.
        #[arg(long, value_name = "ID")]
        cluster: ClusterId,
        /// Directory holding the CA (ca.crt, ca.key) made by `certs init`.
        #[arg(long, value_name = "DIR", default_value = "causeway-ca")]
        ca_dir: PathBuf,
        /// The cluster's TLS directory (ca.crt, tls.crt, tls.key).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

impl CertsCommand {
    /// Runs the command and says what it did, in a sentence for the operator.
    pub fn run(self) -> Result<String, crate::certs::CertError> {
        use crate::certs::{init_ca, issue_broker, issue_cluster_at, rotate_cluster};
        use crate::model::Locality;
        Ok(match self {
            CertsCommand::Init { out } => {
                init_ca(&out)?;
                format!("Created the clusterset CA in {}", out.display())
            }
            CertsCommand::Issue {
                cluster: Some(id),
                ca_dir,
                out,
                region,
                zone,
                ..
            } => {
                let locality = Locality { region, zone };
                issue_cluster_at(&ca_dir, &id, &locality, &out)?;
                format!(
                    "Issued the certificate of cluster {id} ({locality}) into {}",
                    out.display()
                )
            }
            CertsCommand::Issue {
                cluster: None,
                ca_dir,
                out,
                ..
            } => {
                issue_broker(&ca_dir, &out)?;
                format!("Issued the broker's certificate into {}", out.display())
            }
            CertsCommand::Rotate {
                cluster,
                ca_dir,
                out,
            } => {
                let rotated = rotate_cluster(&ca_dir, &cluster, &out)?;
                format!(
                    "Rotated the certificate of cluster {cluster} in {}: serial {} replaces {} \
                 (deny serial:{} on the broker once the gateway has moved)",
                    out.display(),
                    rotated.new_serial,
                    rotated.old_serial,
                    rotated.old_serial
                )
            }
        })
    }
}

#[derive(Debug, Args)]
pub struct BrokerArgs {
    /// UDP address to serve QUIC on.
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "0.0.0.0:7443",
        env = "CAUSEWAY_BROKER_LISTEN"
    )]
    pub listen: SocketAddr,
    /// File of the embedded store; everything the broker accepted survives a restart.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/var/lib/causeway/broker.redb",
        env = "CAUSEWAY_BROKER_STATE"
    )]
    pub state: PathBuf,
    /// Where to keep the records instead of --state: `redb:PATH`, or
    /// `etcd://HOST:PORT[,HOST:PORT...]` for an etcd cluster that several broker replicas
    /// share (gateways list them all in --broker).
    #[arg(long, value_name = "LOCATION", env = "CAUSEWAY_BROKER_STORE")]
    pub store: Option<crate::broker::StoreLocation>,
    /// Directory with ca.crt, tls.crt, tls.key (from `certs issue --broker`).
    #[arg(long, value_name = "DIR", env = "CAUSEWAY_TLS_DIR")]
    pub tls_dir: PathBuf,
    /// Seconds a cluster's exports stay served after its gateway's session ended; then they are
    /// withheld (kept, not served) until it reconnects.
    #[arg(long, value_name = "SECONDS", default_value = "15", value_parser = parse_seconds)]
    pub lease: Duration,
    /// Seconds after its gateway's session ended that a cluster is removed altogether.
    #[arg(long, value_name = "SECONDS", default_value = "86400", value_parser = parse_seconds)]
    pub retention: Duration,
    /// Most services one cluster may export; a larger publish is refused whole.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub max_services: usize,
    /// Most endpoints one cluster may export, over all its services.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    pub max_endpoints: usize,
    /// Largest message a gateway may send, in bytes (at most 16 MiB); a larger one is refused.
    #[arg(long, value_name = "BYTES", default_value_t = 16 * 1024 * 1024,
          value_parser = clap::value_parser!(u32).range(1024..=16 * 1024 * 1024))]
    pub max_message_bytes: u32,
    /// Revocation deny list: lines `cluster:ID` or `serial:HEX`; re-read when it changes, and
    /// the sessions it denies are cut off.
    #[arg(long, value_name = "PATH", env = "CAUSEWAY_BROKER_DENY_LIST")]
    pub deny_list: Option<PathBuf>,
    /// The IPv4 range from which every cluster's claimed CIDRs get their clusterset-unique
    /// global ranges (same length as each claim; other clusters reach a cluster only through
    /// them). Must not overlap any cluster's own addresses. The default /10 holds three
    /// kind-sized clusters (a /16 of pods and a /12 of services each).
    #[arg(
        long,
        value_name = "CIDR",
        default_value = "100.64.0.0/10",
        env = "CAUSEWAY_GLOBAL_V4"
    )]
    pub global_v4: ipnet::Ipv4Net,
    /// The IPv6 range global ranges are cut from (see --global-v4).
    #[arg(
        long,
        value_name = "CIDR",
        default_value = "fd63:6175:7365::/48",
        env = "CAUSEWAY_GLOBAL_V6"
    )]
    pub global_v6: ipnet::Ipv6Net,
    /// A cluster's WireGuard endpoint address as the operator vouches for it, `ID=IP`
    /// (repeatable): for a gateway behind NAT or a load balancer. A cluster not listed must
    /// advertise the address its broker session comes from.
    #[arg(long = "endpoint", value_name = "ID=IP", value_parser = parse_vouched_endpoint)]
    pub endpoints: Vec<(ClusterId, std::net::IpAddr)>,
    /// A cluster's locality as the operator vouches for it, `ID=REGION[/ZONE]` (repeatable),
    /// for a cluster whose certificate carries none (`certs issue --region --zone`). A Hello's
    /// region and zone must equal what the certificate, else this list, vouches for; with
    /// neither, a Hello may claim no locality.
    #[arg(long = "locality", value_name = "ID=REGION[/ZONE]", value_parser = parse_vouched_locality)]
    pub localities: Vec<(ClusterId, crate::model::Locality)>,
}

fn parse_vouched_locality(s: &str) -> Result<(ClusterId, crate::model::Locality), String> {
    let (id, place) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not ID=REGION[/ZONE]"))?;
    let id = ClusterId::new(id).map_err(|e| e.to_string())?;
    let (region, zone) = match place.split_once('/') {
        Some((region, zone)) => (region, Some(zone)),
        None => (place, None),
    };
    for value in std::iter::once(region).chain(zone) {
        crate::model::bounds::label(value).map_err(|p| format!("{value:?}: {p}"))?;
    }
    Ok((
        id,
        crate::model::Locality {
            region: Some(region.to_owned()),
            zone: zone.map(str::to_owned),
        },
    ))
}

fn parse_vouched_endpoint(s: &str) -> Result<(ClusterId, std::net::IpAddr), String> {
    let (id, ip) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not ID=IP"))?;
    let id = ClusterId::new(id).map_err(|e| e.to_string())?;
    let ip = ip.parse().map_err(|e| format!("{ip:?}: {e}"))?;
    Ok((id, ip))
}

impl BrokerArgs {
    /// The broker's configuration: `--store` if given, else the redb file at `--state`.
    pub fn into_config(self) -> crate::broker::BrokerConfig {
        use crate::broker::{BrokerConfig, BrokerOptions, StateConfig, StoreLocation};
        BrokerConfig {
            listen: self.listen,
            store: self.store.unwrap_or(StoreLocation::Redb(self.state)),
            tls_dir: self.tls_dir,
            options: BrokerOptions {
                rules: StateConfig {
                    lease: self.lease,
                    retention: self.retention,
                    max_services: self.max_services,
                    max_endpoints: self.max_endpoints,
                    plan: crate::model::plan::PlanConfig {
                        v4: self.global_v4.trunc(),
                        v6: self.global_v6.trunc(),
                        ..Default::default()
                    },
                    endpoints: self.endpoints.into_iter().collect(),
                    localities: self.localities.into_iter().collect(),
                    ..Default::default()
                },
                max_message_bytes: self.max_message_bytes as usize,
                deny_list: self.deny_list,
                ..Default::default()
            },
        }
    }
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    match s.parse::<u64>() {
        Ok(secs) if secs > 0 => Ok(Duration::from_secs(secs)),
        _ => Err(format!("{s:?} is not a positive number of seconds")),
    }
}

#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// This cluster's id: a DNS label, and the one in the certificate under --tls-dir.
    #[arg(long, value_name = "ID", env = "CAUSEWAY_CLUSTER_ID")]
    pub cluster_id: ClusterId,
    /// Broker address(es), tried in order; repeat the flag or separate with commas.
    #[arg(
        long = "broker",
        value_name = "ADDR",
        required = true,
        value_delimiter = ',',
        env = "CAUSEWAY_BROKER"
    )]
    pub brokers: Vec<SocketAddr>,
    /// Directory with ca.crt, tls.crt, tls.key (from `certs issue --cluster ID`).
    #[arg(long, value_name = "DIR", env = "CAUSEWAY_TLS_DIR")]
    pub tls_dir: PathBuf,
    /// Where this cluster's services come from: `file:DIR`, a directory of YAML service files
    /// (see README, "The file source"), or `kube`, the MCS API of the cluster the gateway runs
    /// in (ServiceExports in, ServiceImports out; see README, "Kubernetes").
    #[arg(long, value_name = "SOURCE", env = "CAUSEWAY_SOURCE")]
    pub source: SourceSpec,
    /// With `--source kube`: where ClusterSetIP ServiceImports get their clusterset IPs, at most
    /// one range per IP family. They become the derived Services' cluster IPs, so they must lie
    /// in the cluster's service CIDR (its static lower band, KEP-3070). Without a range the
    /// API server assigns the derived Services' IPs and the imports take those.
    #[arg(
        long = "clusterset-ip-range",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub clusterset_ip_ranges: Vec<IpNet>,
    /// With `--source kube`: run only while holding the coordination.k8s.io Lease
    /// `--leader-elect-lease` (a standby replica takes over when the leader stops renewing).
    #[arg(long)]
    pub leader_elect: bool,
    /// Namespace of the leader-election Lease.
    #[arg(
        long,
        value_name = "NS",
        default_value = "causeway-system",
        env = "POD_NAMESPACE"
    )]
    pub leader_elect_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, value_name = "NAME", default_value = "causeway-gateway")]
    pub leader_elect_lease: String,
    /// This replica's identity in the Lease (default: the pod name, $POD_NAME, else $HOSTNAME).
    #[arg(long, value_name = "ID", env = "POD_NAME")]
    pub leader_elect_identity: Option<String>,
    /// UDP address WireGuard listens on.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:51820")]
    pub wg_listen: SocketAddr,
    /// The address other gateways reach this one's WireGuard port at (default: --wg-listen, which
    /// must then be a specific address, not 0.0.0.0).
    #[arg(long, value_name = "ADDR")]
    pub wg_advertise: Option<SocketAddr>,
    /// This cluster's pod and service ranges; other clusters route them into their tunnel to us.
    #[arg(
        long = "cidr",
        value_name = "CIDR",
        required = true,
        value_delimiter = ','
    )]
    pub cidrs: Vec<IpNet>,
    /// This cluster's region (answers prefer endpoints in the same region).
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
    /// This cluster's zone within its region (answers prefer the same zone).
    #[arg(long, value_name = "ZONE")]
    pub zone: Option<String>,
    /// Address (UDP and TCP) to serve the svc.global DNS zone on.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:53")]
    pub dns_listen: SocketAddr,
    /// The DNS zone served.
    #[arg(long, value_name = "ZONE", default_value = "svc.global")]
    pub dns_zone: String,
    /// The MCS DNS zone served beside --dns-zone from the same data, under the KEP-1645 DNS
    /// specification (`dns-version.ZONE`, `S.N.svc.ZONE`, no cluster-pinned names). Empty
    /// serves only --dns-zone.
    #[arg(long, value_name = "ZONE", default_value = "clusterset.local")]
    pub clusterset_zone: String,
    /// Most addresses one answer carries (the nearest ones; equally near ones rotate between
    /// queries), per family. A headless service's name in the MCS zone carries at most this
    /// many endpoints instead, the same ones for A and AAAA. 0 = no cap.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub dns_max_addresses: usize,
    /// UDP sockets to serve DNS with, each on a thread of its own (SO_REUSEPORT: the kernel
    /// spreads clients over them). Default: one per CPU this process may run on.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub dns_udp_sockets: Option<u16>,
    /// A resolver to forward queries outside the served zones to (e.g. the cluster's CoreDNS).
    /// Without it such queries are REFUSED.
    #[arg(long, value_name = "ADDR")]
    pub dns_upstream: Option<SocketAddr>,
    /// TTL of DNS answers, in seconds; also the SOA minimum (negative-answer TTL). Lower means
    /// faster failover for clients, more queries.
    #[arg(long, value_name = "SECONDS", default_value_t = 5)]
    pub dns_ttl: u32,
    /// Directory for this gateway's state (its WireGuard private key).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/causeway")]
    pub state_dir: PathBuf,
    /// Name of the TUN device carrying tunnel traffic.
    #[arg(long, value_name = "NAME", default_value = "cw0", value_parser = parse_ifname)]
    pub tun_name: String,
    /// MTU of the TUN device: the underlying link's MTU minus WireGuard's 80 bytes (IPv6 outer
    /// header) overhead; 1420 fits a 1500-byte link.
    #[arg(long, value_name = "BYTES", default_value_t = 1420, value_parser = clap::value_parser!(u16).range(1280..=9000))]
    pub mtu: u16,
    /// WireGuard persistent keepalive, in seconds (0 = off). Keeps NAT mappings alive.
    #[arg(long, value_name = "SECONDS", default_value_t = 25)]
    pub keepalive: u16,
    /// Source address for traffic this gateway itself sends into the tunnel; must lie in one of
    /// --cidr. Default: the --dns-listen address when it lies in one of --cidr.
    #[arg(long, value_name = "IP")]
    pub tunnel_source: Option<IpAddr>,
    /// Address of the admin port: /metrics, /healthz, /readyz and the JSON API that `causeway
    /// status`, `explain` and `diagnose` read. Keep it on loopback or a private network.
    #[arg(long, value_name = "ADDR", default_value = crate::admin::DEFAULT_ADMIN_LISTEN, env = "CAUSEWAY_ADMIN_LISTEN")]
    pub admin_listen: SocketAddr,
}

impl From<&GatewayArgs> for crate::source::k8s::run::RunConfig {
    fn from(args: &GatewayArgs) -> Self {
        Self {
            kube: matches!(args.source, SourceSpec::Kube),
            cluster_id: args.cluster_id.clone(),
            clusterset_ip_ranges: args.clusterset_ip_ranges.clone(),
            leader_elect: args.leader_elect,
            leader_elect_identity: args.leader_elect_identity.clone(),
            leader_elect_namespace: args.leader_elect_namespace.clone(),
            leader_elect_lease: args.leader_elect_lease.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    File(PathBuf),
    /// The Kubernetes MCS API of the cluster the gateway runs in (in-cluster or kubeconfig).
    Kube,
}

impl FromStr for SourceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "kube" {
            return Ok(SourceSpec::Kube);
        }
        match s.split_once(':') {
            Some(("file", dir)) if !dir.is_empty() => Ok(SourceSpec::File(PathBuf::from(dir))),
            Some(("file", _)) => {
                Err("`file:` needs a directory, e.g. file:/etc/causeway/services".into())
            }
            _ => Err(format!("unknown source {s:?}: expected file:DIR or kube")),
        }
    }
}

fn parse_ifname(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not an interface name (1-15 of [A-Za-z0-9._-])"
        ))
    }
}

/// How the lab's clusters are addressed.
#[derive(Debug, Clone, Copy, Args)]
pub struct LabShape {
    /// Make every cluster as kind makes them, pods 10.244.0.0/16 and services 10.96.0.0/12
    /// (the wan moves to 192.168.100.0/24): each is reached through the global ranges the
    /// broker gives it.
    #[arg(long)]
    pub same_cidrs: bool,
}

/// `lab demo` and `lab up`: the lab's shape, and whether its clusters run Kubernetes.
#[derive(Debug, Clone, Copy, Args)]
pub struct LabRun {
    #[command(flatten)]
    pub shape: LabShape,
    /// Every cluster runs a real Kubernetes control plane (built from pinned Go modules by
    /// tests/k8s/build.sh on first use, then cached) and the gateways run `--source kube`;
    /// `demo` tells the user story through kubectl, `up` prints how to use the kubeconfig.
    #[arg(long, conflicts_with = "same_cidrs")]
    pub kube: bool,
}

impl LabShape {
    pub fn addressing(self) -> causeway_netlab::Addressing {
        if self.same_cidrs {
            causeway_netlab::Addressing::SameCidrs
        } else {
            causeway_netlab::Addressing::Distinct
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build the lab, run the story (export, resolve and reach from another cluster, only
    /// WireGuard on the wire, nearest first, withdrawal, broker restart), print each step and
    /// tear everything down.
    Demo(LabRun),
    /// Build the lab and leave it running for exploration; prints how to get into a pod.
    Up(LabRun),
    /// Tear down a lab left by `lab up` (or a crashed run).
    Down,
    /// Measure failover from a client's seat: build a lab, kill c1's endpoint, kill c1's
    /// gateway, cut the c1-c2 wan, stop the broker, bring each back; print the table and
    /// write an SVG timeline.
    Failover {
        /// How many times to run every scenario (the p99s are over all rounds).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=100))]
        rounds: u16,
        /// Where to write the SVG timeline.
        #[arg(long, default_value = "failover.svg")]
        svg: std::path::PathBuf,
        #[command(flatten)]
        shape: LabShape,
    },
    /// The failover lab's client: resolve, GET, print one line per request (used by the lab).
    #[command(hide = true)]
    FailoverClient(FailoverClientArgs),
    /// A tiny HTTP server for lab pods (used by the lab itself).
    #[command(hide = true)]
    HttpServe {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        body: String,
    },
}

/// `lab failover-client`: what to resolve and GET, how often, how patiently.
#[derive(Debug, Args)]
pub struct FailoverClientArgs {
    #[arg(long)]
    pub name: String,
    #[arg(long, default_value_t = 80)]
    pub port: u16,
    #[arg(long, default_value_t = 50)]
    pub interval_ms: u64,
    #[arg(long, default_value_t = 500)]
    pub timeout_ms: u64,
}

/// How `status`, `explain` and `diagnose` print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

/// Where a gateway's admin port is, and how to print.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The gateway's admin address (its --admin-listen).
    #[arg(long, value_name = "ADDR", default_value = crate::admin::DEFAULT_ADMIN_LISTEN, env = "CAUSEWAY_ADMIN")]
    pub admin: SocketAddr,
    /// Tables for people, or the API's JSON document for scripts.
    #[arg(long, short, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// The query types `explain` asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExplainType {
    #[value(name = "A")]
    A,
    #[value(name = "AAAA")]
    Aaaa,
    #[value(name = "SRV")]
    Srv,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The name to explain: `<service>.<namespace>.svc.global` (for SRV,
    /// `_<port>._tcp.<service>.<namespace>.svc.global`).
    pub name: String,
    /// The query type.
    #[arg(long = "type", value_enum, default_value_t = ExplainType::A, ignore_case = true)]
    pub qtype: ExplainType,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, Args)]
pub struct DiagnoseArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// A valid gateway command line; each `(flag, value)` in `over` replaces that flag's value
    /// (or is added).
    fn gateway(over: &[(&str, &str)]) -> Result<Cli, clap::Error> {
        let mut flags = vec![
            ("--cluster-id", "c1"),
            ("--broker", "10.0.0.2:7443"),
            ("--tls-dir", "/t"),
            ("--source", "file:/s"),
            ("--cidr", "10.101.0.0/16"),
        ];
        for (flag, value) in over {
            match flags.iter_mut().find(|(f, _)| f == flag) {
                Some(slot) => slot.1 = value,
                None => flags.push((flag, value)),
            }
        }
        let args = flags.iter().flat_map(|(f, v)| [*f, *v]);
        Cli::try_parse_from(["causeway", "gateway"].into_iter().chain(args))
    }

    #[test]
    fn gateway_flags_parse_into_validated_types() {
        let cli = gateway(&[
            ("--cidr", "10.101.0.0/16,fd00::/64"),
            ("--broker", "10.0.0.2:7443,10.0.0.3:7443"),
        ])
        .unwrap();
        let Command::Gateway(args) = cli.command else {
            panic!("not a gateway")
        };
        assert_eq!(args.cluster_id.as_str(), "c1");
        assert_eq!(args.cidrs.len(), 2);
        assert_eq!(args.brokers.len(), 2);
        assert_eq!(args.source, SourceSpec::File("/s".into()));
        assert_eq!(args.dns_ttl, 5);
        assert_eq!(args.dns_max_addresses, 8);
        assert_eq!(args.dns_upstream, None);
        assert_eq!(args.dns_udp_sockets, None, "one per CPU unless asked");
    }

    #[test]
    fn kube_source_flags_parse() {
        let cli = gateway(&[
            ("--source", "kube"),
            ("--clusterset-ip-range", "10.96.255.0/24,fd00:96::/112"),
            ("--leader-elect-identity", "gw-0"),
        ])
        .unwrap();
        let Command::Gateway(args) = cli.command else {
            panic!("not a gateway")
        };
        assert_eq!(args.source, SourceSpec::Kube);
        assert_eq!(args.clusterset_ip_ranges.len(), 2);
        assert!(!args.leader_elect);
        assert_eq!(args.leader_elect_lease, "causeway-gateway");
        assert_eq!(args.leader_elect_identity.as_deref(), Some("gw-0"));
    }

    #[test]
    fn clusterset_zone_defaults_to_clusterset_local_and_may_be_emptied() {
        for (given, expected) in [
            (None, "clusterset.local"),
            (Some(""), ""),
            (Some("cs.test"), "cs.test"),
        ] {
            let over: Vec<(&str, &str)> = given
                .map(|z| ("--clusterset-zone", z))
                .into_iter()
                .collect();
            let Command::Gateway(args) = gateway(&over).unwrap().command else {
                panic!("not a gateway")
            };
            assert_eq!(args.clusterset_zone, expected, "{given:?}");
        }
    }

    #[test]
    fn bad_flags_are_refused_by_name() {
        let cases = [
            (("--cidr", "10.1.0.0/33"), "--cidr"),
            (("--cluster-id", "Bad_Id"), "not a DNS label"),
            (("--wg-listen", "nowhere"), "--wg-listen"),
            (("--source", "etcd"), "expected file:DIR or kube"),
            (("--tun-name", "a-name-that-is-too-long"), "interface name"),
            (("--mtu", "100"), "--mtu"),
            (("--dns-ttl", "-1"), "unexpected argument '-1'"),
            (("--dns-ttl", "five"), "--dns-ttl"),
            (("--dns-udp-sockets", "0"), "--dns-udp-sockets"),
        ];
        for (over, needle) in cases {
            let err = gateway(&[over]).unwrap_err().to_string();
            assert!(err.contains(needle), "{over:?}: {err}");
        }
    }

    /// Every `causeway ...` command line in README.md parses (shell continuations joined).
    #[test]
    fn readme_command_lines_parse() {
        let readme = include_str!("../README.md");
        let joined = readme.replace("\\\n", " ");
        let shell_blocks = joined
            .split("```sh\n")
            .skip(1)
            .filter_map(|b| b.split("```").next());
        let mut checked = 0;
        for line in shell_blocks
            .flat_map(str::lines)
            .map(str::trim)
            .filter(|l| l.starts_with("causeway "))
        {
            // Up to a comment, or to a pipe into another command (`| kubectl apply -f -`).
            let words: Vec<&str> = line
                .split('#')
                .next()
                .unwrap_or("")
                .split(" | ")
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect();
            Cli::try_parse_from(&words).unwrap_or_else(|e| panic!("README line {line:?}: {e}"));
            checked += 1;
        }
        assert!(
            checked >= 5,
            "found only {checked} command lines in README.md"
        );
    }

    #[test]
    fn broker_limits_and_lease_flags_parse() {
        let parse = |extra: &[&str]| {
            let base = ["causeway", "broker", "--tls-dir", "/t"];
            Cli::try_parse_from(base.iter().chain(extra)).map(|cli| match cli.command {
                Command::Broker(args) => args,
                _ => panic!("not a broker"),
            })
        };
        let args = parse(&[]).unwrap();
        assert_eq!(args.lease, Duration::from_secs(15));
        assert_eq!(args.max_services, 10_000);
        assert_eq!(args.deny_list, None);
        let args = parse(&[
            "--lease",
            "3",
            "--retention",
            "60",
            "--max-endpoints",
            "7",
            "--deny-list",
            "/d",
        ])
        .unwrap();
        assert_eq!(args.retention, Duration::from_secs(60));
        assert_eq!(args.max_endpoints, 7);
        assert_eq!(args.deny_list, Some("/d".into()));
        for bad in [
            &["--lease", "0"][..],
            &["--lease", "1.5"],
            &["--max-message-bytes", "100"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(
            Cli::try_parse_from([
                "causeway",
                "certs",
                "rotate",
                "--cluster",
                "c1",
                "--out",
                "d"
            ])
            .is_ok()
        );
    }

    #[test]
    fn install_flags_parse_and_bad_values_are_refused() {
        let parse = |extra: &[&str]| {
            let base = [
                "causeway",
                "install",
                "--cluster-id",
                "c1",
                "--cidr",
                "10.1.0.0/16",
            ];
            Cli::try_parse_from(base.iter().chain(extra)).map(|cli| match cli.command {
                Command::Install(args) => args,
                _ => panic!("not install"),
            })
        };
        let args = parse(&[
            "--broker",
            "10.0.0.2:7443,10.0.0.3:7443",
            "--service-monitor",
        ])
        .unwrap();
        assert_eq!(args.brokers.len(), 2);
        assert!(args.service_monitor);
        assert_eq!(args.image, None);
        let install = args.to_install().unwrap();
        assert_eq!(install.cluster_id.as_str(), "c1");
        assert!(install.tls.is_none());
        assert!(parse(&[]).is_err(), "--broker is required");
        assert!(parse(&["--broker", "x"]).is_err());
        assert!(parse(&["--broker", "10.0.0.2:7443", "--image", "a b"]).is_err());
        let missing = parse(&["--broker", "10.0.0.2:7443", "--tls-dir", "/nonexistent/tls"])
            .unwrap()
            .to_install()
            .unwrap_err();
        assert!(
            format!("{missing:#}").contains("/nonexistent/tls"),
            "{missing:#}"
        );
        assert!(Cli::try_parse_from(["causeway", "crds"]).is_ok());
    }

    #[test]
    fn certs_issue_needs_a_cluster_or_broker() {
        assert!(Cli::try_parse_from(["causeway", "certs", "issue", "--out", "x"]).is_err());
        assert!(
            Cli::try_parse_from(["causeway", "certs", "issue", "--broker", "--out", "x"]).is_ok()
        );
        let both = Cli::try_parse_from([
            "causeway",
            "certs",
            "issue",
            "--broker",
            "--cluster",
            "c1",
            "--out",
            "x",
        ]);
        assert!(both.is_err());
    }

    #[test]
    fn broker_locality_list_takes_id_region_and_optional_zone() {
        let table = [
            ("c1=eu/eu-a", Some(("c1", Some("eu"), Some("eu-a")))),
            ("c2=us", Some(("c2", Some("us"), None))),
            ("c1=EU/eu-a", None),
            ("c1", None),
            ("c1=eu/", None),
        ];
        for (arg, expected) in table {
            let got = parse_vouched_locality(arg).ok();
            let got = got
                .as_ref()
                .map(|(id, l)| (id.as_str(), l.region.as_deref(), l.zone.as_deref()));
            assert_eq!(got, expected, "{arg}");
        }
    }
}
