//! The file source: a directory of YAML files describing this cluster's services, for running
//! causeway without Kubernetes (the lab runs this).
//!
//! Owns the file format, its validation, and the rule that a broken file keeps serving its last
//! good content. `FileSet` is the pure core (file contents in, services out); `watch` is its shell
//! (inotify through `notify`, plus a slow rescan as a safety net).
//!
//! Format: every `*.yaml`/`*.yml` file (hidden files are ignored, so editors' and atomic writers'
//! temporary files never count) holds one or more `---`-separated documents:
//!
//! ```yaml
//! name: web
//! namespace: shop
//! export: true          # only exported services leave the cluster (MCS: a ServiceExport exists)
//! clusterIPs: [10.101.128.10]  # optional: the service's own address(es); none means headless
//! ports:
//!   - name: http
//!     port: 80
//!     protocol: TCP     # TCP (default), UDP or SCTP
//! endpoints:
//!   - address: 10.101.0.10
//!     ready: true       # default true
//!     hostname: web-0   # optional
//! probe:                # optional: this cluster's gateway checks each ready endpoint itself
//!   http: {path: /, status: 200}   # or `tcp: {}`; `port` defaults to the first TCP port
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::health::LocalExport;
use crate::health::prober::{
    Check, DEFAULT_HEALTHY_THRESHOLD, DEFAULT_INTERVAL, DEFAULT_TIMEOUT,
    DEFAULT_UNHEALTHY_THRESHOLD, ProbeConfig,
};
use crate::model::{
    Endpoint, Export, IdError, PortSpec, Protocol, ServiceKey, ServiceKind, ServiceProps,
    check_dns_label,
};

/// Why a file (or the directory) could not be used. The file is named in every variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("cannot read service directory {}: {message}", dir.display())]
    ReadDir { dir: PathBuf, message: String },
    #[error("cannot read {}: {message}", file.display())]
    ReadFile { file: PathBuf, message: String },
    #[error("{}: document {document}: {message}", file.display())]
    Parse {
        file: PathBuf,
        document: usize,
        message: String,
    },
    #[error("{}: document {document}: {problem}", file.display())]
    Invalid {
        file: PathBuf,
        document: usize,
        problem: Problem,
    },
    #[error("{}: service {service} is already defined in {}", file.display(), first.display())]
    Duplicate {
        file: PathBuf,
        service: ServiceKey,
        first: PathBuf,
    },
}

/// A semantic problem inside one otherwise well-formed document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error(transparent)]
    Id(#[from] IdError),
    #[error("port {port} is not a valid port number")]
    PortZero { port: u16 },
    #[error("port name {name:?} is not a DNS label")]
    PortName { name: String },
    #[error("port {port}/{protocol} is listed twice")]
    DuplicatePort { port: u16, protocol: Protocol },
    #[error("a service with more than one port must name every port")]
    UnnamedPort,
    #[error("clusterIPs {ips:?}: give at most one address per IP family")]
    ClusterIps { ips: Vec<IpAddr> },
    #[error("endpoint hostname {hostname:?} is not a DNS label")]
    Hostname { hostname: String },
    #[error("probe: {problem}")]
    Probe { problem: &'static str },
}

/// A service this cluster runs, exported or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalService {
    pub export: bool,
    pub spec: Export,
    /// The active check the gateway runs against each ready endpoint, if any.
    pub probe: Option<ProbeConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceDoc {
    name: String,
    namespace: String,
    #[serde(default)]
    export: bool,
    #[serde(default, rename = "clusterIPs")]
    cluster_ips: Vec<IpAddr>,
    #[serde(default)]
    ports: Vec<PortDoc>,
    #[serde(default)]
    endpoints: Vec<EndpointDoc>,
    probe: Option<ProbeDoc>,
}

/// `probe:`: at most one of `tcp`/`http` (neither means TCP), then the schedule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ProbeDoc {
    tcp: Option<TcpProbeDoc>,
    http: Option<HttpProbeDoc>,
    interval_ms: Option<u64>,
    timeout_ms: Option<u64>,
    healthy_threshold: Option<u32>,
    unhealthy_threshold: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TcpProbeDoc {
    port: Option<u16>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpProbeDoc {
    port: Option<u16>,
    path: Option<String>,
    status: Option<u16>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PortDoc {
    name: Option<String>,
    port: u16,
    #[serde(default)]
    protocol: Protocol,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointDoc {
    address: IpAddr,
    #[serde(default = "default_ready")]
    ready: bool,
    hostname: Option<String>,
}

fn default_ready() -> bool {
    true
}

/// Parses one file's contents into services. Pure: the path is only used in errors.
pub fn parse_file(file: &Path, contents: &str) -> Result<Vec<LocalService>, Error> {
    let mut services = Vec::new();
    for (index, document) in serde_norway::Deserializer::from_str(contents).enumerate() {
        let document_no = index + 1;
        let value = serde_norway::Value::deserialize(document).map_err(|e| Error::Parse {
            file: file.to_owned(),
            document: document_no,
            message: e.to_string(),
        })?;
        if value.is_null() {
            continue; // an empty document, e.g. a trailing `---`
        }
        let doc: ServiceDoc = serde_norway::from_value(value).map_err(|e| Error::Parse {
            file: file.to_owned(),
            document: document_no,
            message: e.to_string(),
        })?;
        let service = validate(doc).map_err(|problem| Error::Invalid {
            file: file.to_owned(),
            document: document_no,
            problem,
        })?;
        services.push(service);
    }
    Ok(services)
}

fn validate(doc: ServiceDoc) -> Result<LocalService, Problem> {
    let service = ServiceKey::new(doc.namespace, doc.name)?;
    let mut ports = Vec::with_capacity(doc.ports.len());
    for p in doc.ports {
        if p.port == 0 {
            return Err(Problem::PortZero { port: p.port });
        }
        if let Some(name) = &p.name {
            check_dns_label("port name", name, false)
                .map_err(|_| Problem::PortName { name: name.clone() })?;
        }
        let spec = PortSpec {
            name: p.name,
            port: p.port,
            protocol: p.protocol,
            app_protocol: None,
        };
        if ports
            .iter()
            .any(|q: &PortSpec| q.port == spec.port && q.protocol == spec.protocol)
        {
            return Err(Problem::DuplicatePort {
                port: spec.port,
                protocol: spec.protocol,
            });
        }
        ports.push(spec);
    }
    if ports.len() > 1 && ports.iter().any(|p| p.name.is_none()) {
        return Err(Problem::UnnamedPort);
    }
    let mut endpoints = Vec::with_capacity(doc.endpoints.len());
    for e in doc.endpoints {
        if let Some(hostname) = &e.hostname {
            check_dns_label("hostname", hostname, false).map_err(|_| Problem::Hostname {
                hostname: hostname.clone(),
            })?;
        }
        endpoints.push(Endpoint {
            address: e.address,
            ready: e.ready,
            hostname: e.hostname,
            zone: None,
        });
    }
    let families_distinct = match doc.cluster_ips.as_slice() {
        [] | [_] => true,
        [a, b] => a.is_ipv4() != b.is_ipv4(),
        _ => false,
    };
    if !families_distinct {
        return Err(Problem::ClusterIps {
            ips: doc.cluster_ips,
        });
    }
    let probe = doc
        .probe
        .map(|p| validate_probe(p, &ports))
        .transpose()
        .map_err(|problem| Problem::Probe { problem })?;
    let kind = if doc.cluster_ips.is_empty() {
        ServiceKind::Headless
    } else {
        ServiceKind::ClusterSetIp
    };
    Ok(LocalService {
        export: doc.export,
        probe,
        spec: Export {
            service,
            cluster_ips: doc.cluster_ips,
            ports,
            endpoints,
            props: ServiceProps {
                kind,
                ..ServiceProps::default()
            },
        },
    })
}

fn validate_probe(doc: ProbeDoc, ports: &[PortSpec]) -> Result<ProbeConfig, &'static str> {
    let first_tcp = ports
        .iter()
        .find(|p| p.protocol == Protocol::Tcp)
        .map(|p| p.port);
    let port = |given: Option<u16>| match given.or(first_tcp) {
        Some(0) => Err("port 0 is not a valid port number"),
        Some(port) => Ok(port),
        None => Err("give a port: the service has no TCP port to default to"),
    };
    let check = match (doc.tcp, doc.http) {
        (Some(_), Some(_)) => return Err("give either tcp or http, not both"),
        (None, Some(http)) => {
            let path = http.path.unwrap_or_else(|| "/".to_owned());
            if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err("http path must start with '/' and hold no spaces");
            }
            let status = http.status.unwrap_or(200);
            if !(100..=599).contains(&status) {
                return Err("http status must be 100 to 599");
            }
            Check::Http {
                port: port(http.port)?,
                path,
                status,
            }
        }
        (tcp, None) => Check::Tcp {
            port: port(tcp.and_then(|t| t.port))?,
        },
    };
    let interval = doc
        .interval_ms
        .map_or(DEFAULT_INTERVAL, Duration::from_millis);
    let timeout = doc
        .timeout_ms
        .map_or(DEFAULT_TIMEOUT, Duration::from_millis);
    if interval.is_zero() || timeout.is_zero() {
        return Err("intervalMs and timeoutMs must be at least 1");
    }
    let healthy_threshold = doc.healthy_threshold.unwrap_or(DEFAULT_HEALTHY_THRESHOLD);
    let unhealthy_threshold = doc
        .unhealthy_threshold
        .unwrap_or(DEFAULT_UNHEALTHY_THRESHOLD);
    if healthy_threshold == 0 || unhealthy_threshold == 0 {
        return Err("healthyThreshold and unhealthyThreshold must be at least 1");
    }
    Ok(ProbeConfig {
        check,
        interval,
        timeout,
        healthy_threshold,
        unhealthy_threshold,
    })
}

/// Whether a directory entry is a service file (not hidden, `.yaml` or `.yml`).
pub fn is_service_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

/// The pure core: the last good content of every file, and the errors of the latest read.
///
/// Feed it with `handle_scan` (every file's current contents); read `exports()` and `errors()`.
/// A file that fails to parse keeps contributing its last good services, so a typo never
/// withdraws a running service. A file that disappears withdraws its services.
#[derive(Debug, Default)]
pub struct FileSet {
    good: BTreeMap<PathBuf, Vec<LocalService>>,
    errors: Vec<Error>,
}

impl FileSet {
    /// Replaces the view with a new scan: `files` maps each service file present to its
    /// contents (or the read error). Returns whether the exported set changed.
    pub fn handle_scan(&mut self, files: BTreeMap<PathBuf, Result<String, Error>>) -> bool {
        let before = self.local_exports();
        self.errors.clear();
        self.good.retain(|path, _| files.contains_key(path));
        for (path, contents) in files {
            match contents.and_then(|c| parse_file(&path, &c)) {
                Ok(services) => {
                    self.good.insert(path, services);
                }
                Err(e) => self.errors.push(e),
            }
        }
        // A service defined in two files: the first file (in path order) wins, the second errs.
        let mut seen: BTreeMap<ServiceKey, PathBuf> = BTreeMap::new();
        for (path, services) in &mut self.good {
            services.retain(|s| match seen.get(&s.spec.service) {
                Some(first) => {
                    self.errors.push(Error::Duplicate {
                        file: path.clone(),
                        service: s.spec.service.clone(),
                        first: first.clone(),
                    });
                    false
                }
                None => {
                    seen.insert(s.spec.service.clone(), path.clone());
                    true
                }
            });
        }
        before != self.local_exports()
    }

    /// The exported services with their probes, ordered by key.
    pub fn local_exports(&self) -> Vec<LocalExport> {
        let mut out: Vec<LocalExport> = self
            .good
            .values()
            .flatten()
            .filter(|s| s.export)
            .map(|s| LocalExport {
                export: s.spec.clone(),
                probe: s.probe.clone(),
            })
            .collect();
        out.sort_by(|a, b| a.export.service.cmp(&b.export.service));
        out
    }

    /// The services marked `export: true`, ordered by key.
    pub fn exports(&self) -> Vec<Export> {
        let mut out: Vec<Export> = self
            .good
            .values()
            .flatten()
            .filter(|s| s.export)
            .map(|s| s.spec.clone())
            .collect();
        out.sort_by(|a, b| a.service.cmp(&b.service));
        out
    }

    pub fn errors(&self) -> &[Error] {
        &self.errors
    }
}

/// Reads every service file of `dir`. A missing directory is an error of the scan as a whole.
pub fn scan_dir(dir: &Path) -> Result<BTreeMap<PathBuf, Result<String, Error>>, Error> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::ReadDir {
        dir: dir.to_owned(),
        message: e.to_string(),
    })?;
    let mut files = BTreeMap::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if !is_service_file(&path) || !path.is_file() {
            continue;
        }
        let contents = std::fs::read_to_string(&path).map_err(|e| Error::ReadFile {
            file: path.clone(),
            message: e.to_string(),
        });
        files.insert(path, contents);
    }
    Ok(files)
}

/// How long to wait after a change event before rescanning, so that a burst of events (an
/// editor's save, a `kubectl cp`) costs one scan. Well under the 1 s promise.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// A full rescan even without events, in case inotify missed something (directory replaced).
const RESCAN: Duration = Duration::from_secs(5);

/// The shell: watches `dir` and publishes the exported services whenever they change.
///
/// Returns after the first scan, so the receiver already holds the directory's exports; a
/// first scan that cannot read the directory is an error (startup errors exit).
pub async fn watch(
    dir: PathBuf,
    shutdown: CancellationToken,
) -> anyhow::Result<watch::Receiver<Vec<Export>>> {
    watch_as(dir, shutdown, FileSet::exports).await
}

/// As [`watch`], but publishes each exported service with its `probe:` config, for
/// `health::driver`, which runs the probes and publishes the exports the broker and DNS see.
pub async fn watch_probed(
    dir: PathBuf,
    shutdown: CancellationToken,
) -> anyhow::Result<watch::Receiver<Vec<LocalExport>>> {
    watch_as(dir, shutdown, FileSet::local_exports).await
}

async fn watch_as<T: Send + Sync + 'static>(
    dir: PathBuf,
    shutdown: CancellationToken,
    view: fn(&FileSet) -> T,
) -> anyhow::Result<watch::Receiver<T>> {
    use anyhow::Context as _;
    use notify::Watcher as _;

    let mut set = FileSet::default();
    let first = scan_dir(&dir)?;
    set.handle_scan(first);
    report(&set, &dir);
    let (tx, rx) = watch::channel(view(&set));

    let (event_tx, mut events) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let _ = event_tx.send(event.is_ok());
    })
    .context("starting the file watcher")?;
    watcher
        .watch(&dir, notify::RecursiveMode::NonRecursive)
        .with_context(|| format!("watching {}", dir.display()))?;

    tokio::spawn(async move {
        let _watcher = watcher; // dropped (and unwatched) when this task ends
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(_) = events.recv() => {
                    tokio::time::sleep(DEBOUNCE).await;
                    while events.try_recv().is_ok() {}
                }
                _ = tokio::time::sleep(RESCAN) => {}
            }
            match scan_dir(&dir) {
                Ok(files) => {
                    let changed = set.handle_scan(files);
                    report(&set, &dir);
                    if changed {
                        info!(dir = %dir.display(), exports = set.exports().len(), "Service files changed");
                        tx.send_replace(view(&set));
                    }
                }
                Err(e) => warn!(error = %e, "Keeping the last good services"),
            }
        }
        debug!("file source stopped");
    });
    Ok(rx)
}

fn report(set: &FileSet, dir: &Path) {
    for e in set.errors() {
        warn!(dir = %dir.display(), error = %e, "Service file rejected; its last good content is kept");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &str = "name: web\nnamespace: shop\nexport: true\nports:\n  - name: http\n    port: 80\nendpoints:\n  - address: 10.101.0.10\n  - address: 10.101.0.11\n    ready: false\n    hostname: web-1\n";

    fn scan(files: &[(&str, &str)]) -> BTreeMap<PathBuf, Result<String, Error>> {
        files
            .iter()
            .map(|(p, c)| (PathBuf::from(p), Ok(c.to_string())))
            .collect()
    }

    #[test]
    fn parses_the_documented_example() {
        let services = parse_file(Path::new("web.yaml"), WEB).unwrap();
        assert_eq!(services.len(), 1);
        let s = &services[0];
        assert!(s.export);
        assert_eq!(s.spec.service.to_string(), "shop/web");
        assert_eq!(
            s.spec.ports,
            vec![PortSpec {
                name: Some("http".into()),
                port: 80,
                protocol: Protocol::Tcp,
                app_protocol: None,
            }]
        );
        assert_eq!(s.spec.endpoints.len(), 2);
        assert!(s.spec.endpoints[0].ready, "ready defaults to true");
        assert!(!s.spec.endpoints[1].ready);
        assert_eq!(s.spec.endpoints[1].hostname.as_deref(), Some("web-1"));
    }

    #[test]
    fn probes_parse_with_defaults_and_bad_ones_are_refused() {
        use crate::health::prober::{Check, DEFAULT_INTERVAL};
        let with = |probe: &str| format!("{WEB}probe:\n{probe}");
        let parse = |text: &str| parse_file(Path::new("p.yaml"), text).map(|s| s[0].probe.clone());

        let tcp = parse(&with("  tcp: {}\n")).unwrap().unwrap();
        assert_eq!(tcp.check, Check::Tcp { port: 80 }, "the first TCP port");
        assert_eq!(tcp.interval, DEFAULT_INTERVAL);
        let empty = parse(&with("  intervalMs: 100\n")).unwrap().unwrap();
        assert_eq!(empty.check, Check::Tcp { port: 80 }, "no check means TCP");
        assert_eq!(empty.interval, Duration::from_millis(100));
        let http = parse(&with(
            "  http: {port: 8080, path: /healthz, status: 204}\n  timeoutMs: 50\n  healthyThreshold: 1\n  unhealthyThreshold: 5\n",
        ))
        .unwrap()
        .unwrap();
        assert_eq!(
            http.check,
            Check::Http {
                port: 8080,
                path: "/healthz".into(),
                status: 204
            }
        );
        assert_eq!(
            (
                http.timeout,
                http.healthy_threshold,
                http.unhealthy_threshold
            ),
            (Duration::from_millis(50), 1, 5)
        );
        assert_eq!(parse(WEB).unwrap(), None, "no probe block, no probe");

        let cases: &[(&str, &str)] = &[
            ("  tcp: {}\n  http: {}\n", "either tcp or http"),
            ("  http: {path: healthz}\n", "must start with '/'"),
            ("  http: {status: 42}\n", "100 to 599"),
            ("  intervalMs: 0\n", "at least 1"),
            ("  unhealthyThreshold: 0\n", "at least 1"),
            ("  tcp: {port: 0}\n", "port 0"),
            ("  tpc: {}\n", "unknown field `tpc`"),
        ];
        for (probe, needle) in cases {
            let err = parse(&with(probe)).unwrap_err().to_string();
            assert!(
                err.contains(needle),
                "{probe:?}: {err:?} should mention {needle:?}"
            );
        }
        let no_port = "name: db\nnamespace: shop\nprobe: {tcp: {}}\n";
        let err = parse(no_port).unwrap_err().to_string();
        assert!(err.contains("no TCP port"), "{err}");
    }

    #[test]
    fn several_documents_in_one_file() {
        let text = format!("{WEB}---\nname: db\nnamespace: shop\n---\n");
        let services = parse_file(Path::new("all.yaml"), &text).unwrap();
        assert_eq!(services.len(), 2);
        assert!(!services[1].export, "export defaults to false");
    }

    #[test]
    fn errors_name_the_file_document_and_problem() {
        let cases: &[(&str, &str)] = &[
            (
                "name: web\nnamespace: shop\nexprot: true\n",
                "unknown field `exprot`",
            ),
            (
                "name: web\nnamespace: shop\nendpoints:\n  - address: 10.1.2.300\n",
                "invalid IP address",
            ),
            ("name: Web\nnamespace: shop\n", "is not a DNS label"),
            (
                "name: web\nnamespace: shop\nports:\n  - port: 0\n",
                "not a valid port number",
            ),
            (
                "name: web\nnamespace: shop\nports:\n  - port: 70000\n",
                "70000",
            ),
            (
                "name: web\nnamespace: shop\nports:\n  - port: 80\n  - port: 81\n",
                "must name every port",
            ),
            (
                "name: web\nnamespace: shop\nports:\n  - {name: a, port: 80}\n  - {name: b, port: 80}\n",
                "listed twice",
            ),
            (
                "name: web\nnamespace: shop\nclusterIPs: [10.0.0.1, 10.0.0.2]\n",
                "one address per IP family",
            ),
            ("name: [web\n", "document 1"),
            ("- just\n- a list\n", "document 1"),
        ];
        for (text, needle) in cases {
            let err = parse_file(Path::new("/svc/bad.yaml"), text)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("/svc/bad.yaml: document"), "{err}");
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
    }

    #[test]
    fn a_broken_file_keeps_its_last_good_services() {
        let mut set = FileSet::default();
        assert!(set.handle_scan(scan(&[("web.yaml", WEB)])));
        assert_eq!(set.exports().len(), 1);
        let changed = set.handle_scan(scan(&[("web.yaml", "name: [oops")]));
        assert!(!changed);
        assert_eq!(set.exports().len(), 1, "last good content still served");
        assert_eq!(set.errors().len(), 1);
        assert!(set.errors()[0].to_string().contains("web.yaml"));
    }

    #[test]
    fn a_removed_file_withdraws_its_services() {
        let mut set = FileSet::default();
        set.handle_scan(scan(&[("web.yaml", WEB)]));
        assert!(set.handle_scan(scan(&[])));
        assert!(set.exports().is_empty());
    }

    #[test]
    fn a_service_defined_twice_is_kept_from_the_first_file() {
        let mut set = FileSet::default();
        set.handle_scan(scan(&[("a.yaml", WEB), ("b.yaml", WEB)]));
        assert_eq!(set.exports().len(), 1);
        assert!(
            matches!(&set.errors()[0], Error::Duplicate { file, .. } if file == Path::new("b.yaml"))
        );
    }

    #[test]
    fn only_visible_yaml_files_count() {
        assert!(is_service_file(Path::new("/d/web.yaml")));
        assert!(is_service_file(Path::new("/d/web.yml")));
        assert!(!is_service_file(Path::new("/d/.web.yaml.tmp")));
        assert!(!is_service_file(Path::new("/d/.web.yaml")));
        assert!(!is_service_file(Path::new("/d/web.yaml~")));
        assert!(!is_service_file(Path::new("/d/README")));
    }

    #[test]
    fn the_readme_example_parses() {
        let readme = include_str!("../../README.md");
        let block = readme
            .split("```yaml\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("README.md has a yaml example");
        let services = parse_file(Path::new("README.md"), block).unwrap();
        assert_eq!(services[0].spec.service.to_string(), "shop/web");
        assert!(
            services[0].probe.is_some(),
            "the README documents the probe block"
        );
        let bogus = block.replace("export: true", "exprot: true");
        assert!(
            parse_file(Path::new("README.md"), &bogus).is_err(),
            "a bogus key is refused"
        );
    }

    #[tokio::test]
    async fn watch_publishes_edits_and_keeps_last_good_on_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("web.yaml"), WEB).unwrap();
        let shutdown = CancellationToken::new();
        let mut rx = watch(dir.path().to_owned(), shutdown.clone())
            .await
            .unwrap();
        assert_eq!(rx.borrow().len(), 1);

        std::fs::write(dir.path().join("broken.yaml"), "name: [").unwrap();
        let db = "name: db\nnamespace: shop\nexport: true\n";
        std::fs::write(dir.path().join(".db.tmp"), db).unwrap();
        std::fs::rename(dir.path().join(".db.tmp"), dir.path().join("db.yaml")).unwrap();
        let deadline = crate::clock::tokio_now() + Duration::from_secs(10);
        while rx.borrow().len() != 2 {
            tokio::time::timeout_at(deadline, rx.changed())
                .await
                .expect("edit seen")
                .unwrap();
        }
        std::fs::remove_file(dir.path().join("web.yaml")).unwrap();
        while rx.borrow().len() != 1 {
            tokio::time::timeout_at(deadline, rx.changed())
                .await
                .expect("removal seen")
                .unwrap();
        }
        assert_eq!(rx.borrow()[0].service.name, "db");
        shutdown.cancel();
    }

    #[tokio::test]
    async fn watch_refuses_a_missing_directory() {
        let err = watch(
            PathBuf::from("/nonexistent/causeway"),
            CancellationToken::new(),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/causeway"), "{err}");
    }
}
