//! The endpoint prober's tokio shell: runs the probes the core asks for and republishes this
//! cluster's exports whenever an endpoint goes up or down.
//!
//! Event-driven end to end: a probe's result wakes the loop, a transition is published on the
//! output watch at once, and `app` (DNS) and the sync client (broker) both wake on that watch.
//! Decisions (when to probe, what counts as down) are the core's; this file only moves data
//! and speaks TCP/HTTP.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::LocalExport;
use super::prober::{Check, EndpointState, ProbeConfig, ProbeId, Prober, TargetKey};
use crate::clock;
use crate::model::{Export, ServiceKey};

/// Where the driver reports what the probes find (in the gateway: the admin port's
/// `causeway_endpoint_probe_*` metrics). `()` reports nowhere.
pub trait ProbeObserver: Send + Sync + 'static {
    /// One probe's outcome and how long it took (a timeout is a failure that took the timeout).
    fn probed(&self, service: &ServiceKey, endpoint: IpAddr, success: bool, took: Duration);
    /// The verdict after the thresholds changed: `healthy` endpoints are answered.
    fn verdict(&self, service: &ServiceKey, endpoint: IpAddr, healthy: bool);
    /// The endpoint is no longer probed.
    fn forgotten(&self, service: &ServiceKey, endpoint: IpAddr);
}

impl ProbeObserver for () {
    fn probed(&self, _: &ServiceKey, _: IpAddr, _: bool, _: Duration) {}
    fn verdict(&self, _: &ServiceKey, _: IpAddr, _: bool) {}
    fn forgotten(&self, _: &ServiceKey, _: IpAddr) {}
}

type Outcome = (ProbeId, Result<(), String>);

/// Starts the driver; it runs until `shutdown` is cancelled or `services` closes. The returned
/// watch holds `services`' exports with every probed endpoint that is not up marked not ready
/// (so, at first, every probed endpoint until its first probe answers, within milliseconds).
pub fn spawn(
    mut services: watch::Receiver<Vec<LocalExport>>,
    observer: Arc<dyn ProbeObserver>,
    shutdown: CancellationToken,
) -> watch::Receiver<Vec<Export>> {
    let mut prober = Prober::new();
    let current = services.borrow_and_update().clone();
    prober.set_targets(targets(&current), clock::now());
    let (tx, rx) = watch::channel(prober.apply(&exports(&current)));
    tokio::spawn(async move {
        let (results_tx, mut results) = mpsc::unbounded_channel();
        let mut current = current;
        let mut probed = target_keys(&current);
        loop {
            drain(&mut prober, &results_tx, &observer);
            tx.send_if_modified(|published| {
                let next = prober.apply(&exports(&current));
                let changed = *published != next;
                *published = next;
                changed
            });
            let wake = prober.poll_timeout().map(|(at, _why)| at);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some((id, outcome)) = results.recv() => prober.handle_result(id, outcome, clock::now()),
                _ = sleep_until_opt(wake) => prober.handle_timeout(clock::now()),
                changed = services.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    current = services.borrow_and_update().clone();
                    prober.set_targets(targets(&current), clock::now());
                    let now_probed = target_keys(&current);
                    for gone in probed.difference(&now_probed) {
                        observer.forgotten(&gone.service, gone.address);
                    }
                    probed = now_probed;
                }
            }
        }
        debug!("endpoint prober stopped");
    });
    rx
}

/// Sends every queued probe, and logs and reports every transition.
fn drain(
    prober: &mut Prober,
    results: &mpsc::UnboundedSender<Outcome>,
    observer: &Arc<dyn ProbeObserver>,
) {
    while let Some(probe) = prober.poll_probe() {
        let results = results.clone();
        let observer = observer.clone();
        tokio::spawn(async move {
            let started = clock::now();
            let outcome =
                match tokio::time::timeout(probe.timeout, run(probe.to, &probe.check)).await {
                    Ok(outcome) => outcome,
                    Err(_) => Err(format!("no answer within {:?}", probe.timeout)),
                };
            let TargetKey { service, address } = &probe.target;
            observer.probed(
                service,
                *address,
                outcome.is_ok(),
                clock::now().saturating_duration_since(started),
            );
            let _ = results.send((probe.id, outcome));
        });
    }
    while let Some(event) = prober.poll_event() {
        let TargetKey { service, address } = &event.target;
        match event.state {
            EndpointState::Up => observer.verdict(service, *address, true),
            EndpointState::Down => observer.verdict(service, *address, false),
            EndpointState::Unknown => {}
        }
        match event.state {
            EndpointState::Up => {
                info!(service = %service, endpoint = %address, "Endpoint up: answered and published as ready")
            }
            EndpointState::Down => info!(
                service = %service,
                endpoint = %address,
                reason = event.reason.as_deref().unwrap_or(""),
                "Endpoint down: withdrawn from answers and published as not ready"
            ),
            EndpointState::Unknown => {}
        }
    }
}

fn target_keys(services: &[LocalExport]) -> BTreeSet<TargetKey> {
    targets(services).into_iter().map(|(key, _)| key).collect()
}

/// Every ready endpoint of every service with a probe.
fn targets(services: &[LocalExport]) -> Vec<(TargetKey, ProbeConfig)> {
    services
        .iter()
        .filter_map(|s| Some((s, s.probe.as_ref()?)))
        .flat_map(|(s, probe)| {
            s.export.endpoints.iter().filter(|e| e.ready).map(move |e| {
                (
                    TargetKey {
                        service: s.export.service.clone(),
                        address: e.address,
                    },
                    probe.clone(),
                )
            })
        })
        .collect()
}

fn exports(services: &[LocalExport]) -> Vec<Export> {
    services.iter().map(|s| s.export.clone()).collect()
}

async fn sleep_until_opt(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Runs one check; the caller bounds it in time.
async fn run(to: SocketAddr, check: &Check) -> Result<(), String> {
    let mut stream = TcpStream::connect(to)
        .await
        .map_err(|e| format!("connecting to {to}: {e}"))?;
    let Check::Http { path, status, .. } = check else {
        return Ok(());
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {to}\r\nUser-Agent: causeway-probe\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("sending to {to}: {e}"))?;
    // The status line is all we need: "HTTP/1.1 200 OK\r\n".
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 1024 {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("reading from {to}: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let got = parse_status(&head).ok_or_else(|| format!("no HTTP status line from {to}"))?;
    if got == *status {
        Ok(())
    } else {
        Err(format!("HTTP status {got}, expected {status}"))
    }
}

/// The status code of an HTTP/1.x status line.
fn parse_status(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/1."))?;
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// How long shell tests wait for a condition; generous, nothing here takes more than ms.
    const TEST_DEADLINE: Duration = Duration::from_secs(10);
    use crate::model::{Endpoint, ServiceKey};
    use tokio::net::TcpListener;

    fn service(addr: SocketAddr, check: Check) -> LocalExport {
        LocalExport {
            export: Export {
                service: ServiceKey::new("shop", "web").unwrap(),
                cluster_ips: vec![],
                ports: vec![],
                endpoints: vec![Endpoint {
                    address: addr.ip(),
                    ready: true,
                    hostname: None,
                    zone: None,
                }],
                props: Default::default(),
            },
            probe: Some(ProbeConfig {
                check,
                interval: Duration::from_millis(20),
                timeout: Duration::from_millis(500),
                healthy_threshold: 2,
                unhealthy_threshold: 2,
            }),
        }
    }

    async fn wait_ready(rx: &mut watch::Receiver<Vec<Export>>, want: bool) {
        tokio::time::timeout(TEST_DEADLINE, async {
            while rx.borrow_and_update()[0].endpoints[0].ready != want {
                rx.changed().await.unwrap();
            }
        })
        .await
        .unwrap_or_else(|_| panic!("endpoint never became ready={want}"));
    }

    #[tokio::test]
    async fn a_closed_port_is_withdrawn_and_a_reopened_one_returns() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (services_tx, services) =
            watch::channel(vec![service(addr, Check::Tcp { port: addr.port() })]);
        let shutdown = CancellationToken::new();
        let mut rx = spawn(services, Arc::new(()), shutdown.clone());
        assert!(
            !rx.borrow()[0].endpoints[0].ready,
            "not ready before a probe answers"
        );
        wait_ready(&mut rx, true).await;
        drop(listener);
        wait_ready(&mut rx, false).await;
        let _listener = TcpListener::bind(addr).await.unwrap();
        wait_ready(&mut rx, true).await;

        // A file edit that marks the endpoint not ready stops its probes and keeps it out.
        let mut edited = service(addr, Check::Tcp { port: addr.port() });
        edited.export.endpoints[0].ready = false;
        services_tx.send_replace(vec![edited]);
        wait_ready(&mut rx, false).await;
        shutdown.cancel();
    }

    /// Remembers what the driver reported.
    #[derive(Default)]
    struct Seen(std::sync::Mutex<Vec<String>>);

    impl ProbeObserver for Seen {
        fn probed(&self, service: &ServiceKey, endpoint: IpAddr, success: bool, _: Duration) {
            let mut seen = self.0.lock().unwrap();
            seen.push(format!("probed {service} {endpoint} {success}"));
        }
        fn verdict(&self, service: &ServiceKey, endpoint: IpAddr, healthy: bool) {
            let mut seen = self.0.lock().unwrap();
            seen.push(format!("verdict {service} {endpoint} {healthy}"));
        }
        fn forgotten(&self, service: &ServiceKey, endpoint: IpAddr) {
            let mut seen = self.0.lock().unwrap();
            seen.push(format!("forgotten {service} {endpoint}"));
        }
    }

    #[tokio::test]
    async fn probes_verdicts_and_forgotten_endpoints_are_reported() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (services_tx, services) =
            watch::channel(vec![service(addr, Check::Tcp { port: addr.port() })]);
        let shutdown = CancellationToken::new();
        let seen = Arc::new(Seen::default());
        let mut rx = spawn(services, seen.clone(), shutdown.clone());
        wait_ready(&mut rx, true).await;
        let key = rx.borrow()[0].service.clone();
        let line = |what: &str| format!("{what} {key} {}", addr.ip());
        let has = |l: String| seen.0.lock().unwrap().contains(&l);
        assert!(
            has(line("probed") + " true"),
            "{:?}",
            seen.0.lock().unwrap()
        );
        assert!(
            has(line("verdict") + " true"),
            "{:?}",
            seen.0.lock().unwrap()
        );

        drop(listener);
        wait_ready(&mut rx, false).await;
        assert!(
            has(line("probed") + " false"),
            "{:?}",
            seen.0.lock().unwrap()
        );
        assert!(
            has(line("verdict") + " false"),
            "{:?}",
            seen.0.lock().unwrap()
        );

        // The service goes away: its endpoint is no longer probed.
        services_tx.send_replace(vec![]);
        let deadline = crate::clock::tokio_now() + Duration::from_secs(5);
        while !has(line("forgotten")) {
            assert!(
                crate::clock::tokio_now() < deadline,
                "{:?}",
                seen.0.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        shutdown.cancel();
    }

    #[tokio::test]
    async fn http_probes_expect_the_configured_status() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = [0u8; 1024];
                let n = stream.read(&mut buf).await.unwrap_or(0);
                let healthy = buf[..n].starts_with(b"GET /healthz ");
                let reply: &[u8] = if healthy {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
                } else {
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
                };
                let _ = stream.write_all(reply).await;
            }
        });
        let check = |path: &str| Check::Http {
            port: addr.port(),
            path: path.into(),
            status: 200,
        };
        assert_eq!(run(addr, &check("/healthz")).await, Ok(()));
        assert_eq!(
            run(addr, &check("/other")).await,
            Err("HTTP status 503, expected 200".into())
        );

        let shutdown = CancellationToken::new();
        let (_tx, services) = watch::channel(vec![service(addr, check("/healthz"))]);
        let mut rx = spawn(services, Arc::new(()), shutdown.clone());
        wait_ready(&mut rx, true).await;
        shutdown.cancel();
    }

    #[test]
    fn status_lines_parse() {
        assert_eq!(parse_status(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(parse_status(b"HTTP/1.0 500\r\n"), Some(500));
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status(b""), None);
    }
}
