//! `causeway lab failover`: failover measured from a client's seat.
//!
//! The lab: c1 (region eu, zone eu-1) and c3 (region us) run `web` in `shop` (pod1 of each,
//! answering its cluster id, with an HTTP probe); c2 (region eu, zone eu-2) runs `api` (pod2,
//! TCP probe) and the client (pod1, see `client`). From c2, c1 is the nearest `web` (same
//! region) and c3 the remote one, so the client is served by c1 until c1 fails.
//!
//! Each [`Scenario`] waits for the client to be served steadily by c1, injects its failure
//! while a DNS observer queries the relevant clusters' DNS in a tight loop, waits until the
//! dead target is withdrawn and the client succeeds again, restores the failed part, and waits
//! until traffic is back on c1. The numbers (pure, in `stats`) come from the observer's rounds
//! and the client's records, on one monotonic clock. Owns no daemons: the [`Lab`] does.

pub mod client;
pub mod stats;

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::cluster::service_yaml;
use crate::lab::{Lab, LabSpec};
use crate::ns;
use crate::svg;
use crate::wait::{self, monotonic_ms, poll_until};
use client::Record;
use stats::Round;

pub const WEB: &str = "web.shop.svc.global";
pub const API: &str = "api.shop.svc.global";
/// The cluster c2's client should be served by while it is healthy.
pub const NEAREST: &str = "c1";
/// The prefix `causeway lab failover` uses (tests use their own).
pub const DEFAULT_PREFIX: &str = "cwf";
/// How long any one step may take: generous, for a loaded CI machine (the goals are seconds).
pub const STEP_TIMEOUT: Duration = Duration::from_secs(20);
/// A restarted gateway first has to come up and register.
const RESTART_TIMEOUT: Duration = Duration::from_secs(45);
/// The client's pace and per-request bound (connect + answer): 20 requests/s, and a
/// black-holed request fails after half a second, as an impatient client's would.
const CLIENT_INTERVAL_MS: u64 = 50;
const CLIENT_TIMEOUT_MS: u64 = 500;
/// Pause between the DNS observer's rounds; one round is a query per observed cluster.
const OBSERVE_PERIOD: Duration = Duration::from_millis(10);
/// How long the observer waits for one DNS reply.
const OBSERVE_REPLY_TIMEOUT: Duration = Duration::from_millis(300);
/// Measuring goes on this long after the wanted state is reached, so a late flap shows.
const SETTLE: Duration = Duration::from_millis(1000);
/// Requests in a row on c1 that count as "steady".
const STEADY_REQUESTS: usize = 5;

/// The failures, in the order a round runs them. Restoring each one is scenario 5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scenario {
    /// 1: the serving endpoint's process in c1 is killed.
    EndpointKilled,
    /// 2: c1's gateway process is killed.
    GatewayKilled,
    /// 3: the wan path between c1 and c2 is cut; c1 and c3 still see each other.
    WanCut,
    /// 4: the broker is stopped; then c2's own `api` endpoint dies.
    BrokerDown,
}

impl Scenario {
    pub const ALL: [Scenario; 4] = [
        Scenario::EndpointKilled,
        Scenario::GatewayKilled,
        Scenario::WanCut,
        Scenario::BrokerDown,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Scenario::EndpointKilled => "1 c1 endpoint killed",
            Scenario::GatewayKilled => "2 c1 gateway killed",
            Scenario::WanCut => "3 c1-c2 wan cut",
            Scenario::BrokerDown => "4 broker down + c2 api killed",
        }
    }
}

/// What one run of one scenario measured. Times in ms on [`monotonic_ms`].
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    pub scenario: Scenario,
    pub round: usize,
    pub fail_ms: f64,
    pub restored_ms: f64,
    pub end_ms: f64,
    /// Until no observed answer names the dead target (scenario 4: c2's `api` endpoint).
    pub withdraw_ms: Option<f64>,
    /// Until the client's requests succeed again (0 if none failed).
    pub recovery_ms: Option<f64>,
    /// Failed client requests from the failure until traffic settled back.
    pub failed: usize,
    /// Successful requests served by another cluster than c1 in that time.
    pub served_elsewhere: usize,
    /// From the restoration until traffic settled back on c1 (scenarios 1–3).
    pub return_ms: Option<f64>,
    /// Scenario 3: whether c3 still answered c1's endpoint while c2 could not reach c1.
    pub bystander_kept_target: Option<bool>,
}

/// The failover lab: a [`Lab`] with `web`, `api` and the client running.
pub struct FailoverLab {
    // Declared first so it is stopped before the lab is torn down.
    client: ClientProcess,
    lab: Lab,
}

impl FailoverLab {
    /// Builds the lab (localities as in the module docs), starts the services and the client,
    /// and waits until the client is served steadily by c1.
    pub fn up(mut spec: LabSpec) -> anyhow::Result<Self> {
        spec.localities = BTreeMap::from([
            (1, ("eu".to_owned(), "eu-1".to_owned())),
            (2, ("eu".to_owned(), "eu-2".to_owned())),
            (3, ("us".to_owned(), "us-1".to_owned())),
        ]);
        let mut lab = Lab::up(spec)?;
        let probe = "probe:\n  http: {path: /}\n";
        for c in [1, 3] {
            lab.start_http_server(c, 1, &format!("c{c}"))?;
            let endpoint = IpAddr::V4(lab.topology().pod_addr(c, 1));
            let yaml = service_yaml("shop", "web", 80, &[endpoint]) + probe;
            lab.write_service(c, "web.yaml", &yaml)?;
        }
        lab.start_http_server(2, 2, "c2-api")?;
        let api = IpAddr::V4(lab.topology().pod_addr(2, 2));
        let yaml = service_yaml("shop", "api", 80, &[api]) + "probe:\n  tcp: {}\n";
        lab.write_service(2, "api.yaml", &yaml)?;
        let client = ClientProcess::start(&lab)?;
        let failover = Self { client, lab };
        failover.wait_steady()?;
        Ok(failover)
    }

    pub fn lab(&self) -> &Lab {
        &self.lab
    }

    /// Every request the client made so far.
    pub fn records(&self) -> Vec<Record> {
        self.client.records()
    }

    /// Runs one scenario and its restoration; errors if a step does not happen in time.
    pub fn run(&mut self, scenario: Scenario, round: usize) -> anyhow::Result<Measurement> {
        let t = self.lab.topology().clone();
        // c1's web pod as c3 reaches it (through c1's global range).
        let c1_web = self.lab.pod_seen_from(3, 1, 1);
        let c1_wan = format!("{}/32", t.gw_wan_addr(1));
        self.wait_steady()?;
        match scenario {
            Scenario::EndpointKilled => self.fail_and_restore(
                scenario,
                round,
                &[1, 2, 3],
                |lab| {
                    lab.kill_http_server(1, 1);
                    Ok(())
                },
                |lab| lab.start_http_server(1, 1, "c1").map(|()| None),
            ),
            Scenario::GatewayKilled => self.fail_and_restore(
                scenario,
                round,
                &[2, 3],
                |lab| {
                    lab.kill_gateway(1);
                    Ok(())
                },
                |lab| lab.start_gateway(1).map(|()| None),
            ),
            Scenario::WanCut => {
                let gw2 = t.gw_ns(2);
                let route = |lab: &Lab, verb: &str| {
                    let out = lab.exec(&gw2, &["ip", "route", verb, "blackhole", &c1_wan])?;
                    if !out.status.success() {
                        bail!(
                            "ip route {verb} blackhole {c1_wan} in {gw2}: {}",
                            String::from_utf8_lossy(&out.stderr).trim()
                        );
                    }
                    Ok(())
                };
                self.fail_and_restore(
                    scenario,
                    round,
                    &[2],
                    |lab| route(lab, "add"),
                    |lab| {
                        // Asked while the cut still holds: c3 reaches c1, so keeps answering it.
                        let kept = query_a(lab, 3, WEB).map(|a| a.contains(&c1_web));
                        route(lab, "del")?;
                        Ok(Some(kept?))
                    },
                )
            }
            Scenario::BrokerDown => self.broker_down(round),
        }
    }

    /// Tears the lab down, reporting failures.
    pub fn down(self) -> anyhow::Result<()> {
        let Self { client, lab } = self;
        drop(client);
        lab.down()
    }

    fn wait_steady(&self) -> anyhow::Result<()> {
        let since = monotonic_ms();
        poll_until(
            "the client to be served steadily by c1",
            STEP_TIMEOUT,
            || {
                let records = self.client.records();
                let recent: Vec<&Record> = records.iter().filter(|r| r.start_ms >= since).collect();
                let tail = &recent[recent.len().saturating_sub(STEADY_REQUESTS)..];
                if tail.len() == STEADY_REQUESTS
                    && tail.iter().all(|r| r.served_by.as_deref() == Some(NEAREST))
                {
                    Ok(())
                } else {
                    Err(format!("last requests: {}", show(tail)))
                }
            },
        )
    }
}

impl FailoverLab {
    /// Scenarios 1–3: `fail`, measure withdrawal from `observers`' DNS and the client's
    /// recovery, `restore` (returning what it saw of bystanders), measure the return to c1.
    fn fail_and_restore(
        &mut self,
        scenario: Scenario,
        round: usize,
        observers: &[usize],
        fail: impl FnOnce(&mut Lab) -> anyhow::Result<()>,
        restore: impl FnOnce(&mut Lab) -> anyhow::Result<Option<bool>>,
    ) -> anyhow::Result<Measurement> {
        let observer = Observer::start(&self.lab, observers, WEB, (1, 1))?;
        observer.wait_first_round()?;
        let fail_ms = monotonic_ms();
        fail(&mut self.lab)?;
        self.wait_withdrawn_and_recovered(&observer, fail_ms, true)?;
        settle();
        let rounds = observer.stop();
        let bystander = restore(&mut self.lab)?;
        let restored_ms = monotonic_ms();
        poll_until("traffic back on c1", RESTART_TIMEOUT, || {
            let records = self.client.records();
            let now = monotonic_ms();
            stats::return_ms(&records, NEAREST, restored_ms, now)
                .filter(|_| {
                    let after: Vec<&Record> = records
                        .iter()
                        .filter(|r| r.start_ms >= restored_ms)
                        .collect();
                    after.len() >= STEADY_REQUESTS
                        && after[after.len() - STEADY_REQUESTS..]
                            .iter()
                            .all(|r| r.served_by.as_deref() == Some(NEAREST))
                })
                .map(drop)
                .ok_or_else(|| format!("last requests: {}", show(&last(&records, 5))))
        })?;
        settle();
        let end_ms = monotonic_ms();
        let records = self.client.records();
        Ok(Measurement {
            scenario,
            round,
            fail_ms,
            restored_ms,
            end_ms,
            withdraw_ms: stats::withdraw_ms(&rounds, fail_ms),
            recovery_ms: stats::recovery_ms(&records, fail_ms, restored_ms),
            failed: stats::failed(&records, fail_ms, end_ms),
            served_elsewhere: served_elsewhere(&records, fail_ms, end_ms),
            return_ms: stats::return_ms(&records, NEAREST, restored_ms, end_ms),
            bystander_kept_target: bystander,
        })
    }

    /// Scenario 4: the broker stops; the client must not notice; then c2's `api` endpoint
    /// dies and c2's own DNS must drop it without the broker. Then both come back.
    fn broker_down(&mut self, round: usize) -> anyhow::Result<Measurement> {
        let api = IpAddr::V4(self.lab.topology().pod_addr(2, 2)); // asked from c2 itself
        let fail_ms = monotonic_ms();
        self.lab.stop_broker();
        let observer = Observer::start(&self.lab, &[2], API, (2, 2))?;
        observer.wait_first_round()?;
        let api_fail_ms = monotonic_ms();
        self.lab.kill_http_server(2, 2);
        poll_until(
            "c2's DNS to drop its dead api endpoint without the broker",
            STEP_TIMEOUT,
            || {
                let rounds = observer.rounds();
                stats::withdraw_ms(&rounds, api_fail_ms)
                    .map(drop)
                    .ok_or_else(|| format!("{} rounds, still named", rounds.len()))
            },
        )?;
        settle();
        let rounds = observer.stop();
        self.lab.start_http_server(2, 2, "c2-api")?;
        self.lab.start_broker()?;
        let restored_ms = monotonic_ms();
        poll_until("c2 to answer api again", STEP_TIMEOUT, || {
            match query_a(&self.lab, 2, API) {
                Ok(a) if a.contains(&api) => Ok(()),
                Ok(a) => Err(format!("answered {a:?}")),
                Err(e) => Err(format!("{e:#}")),
            }
        })?;
        self.wait_steady()?;
        let end_ms = monotonic_ms();
        let records = self.client.records();
        Ok(Measurement {
            scenario: Scenario::BrokerDown,
            round,
            fail_ms,
            restored_ms,
            end_ms,
            withdraw_ms: stats::withdraw_ms(&rounds, api_fail_ms),
            recovery_ms: stats::recovery_ms(&records, fail_ms, end_ms),
            failed: stats::failed(&records, fail_ms, end_ms),
            served_elsewhere: served_elsewhere(&records, fail_ms, end_ms),
            return_ms: None,
            bystander_kept_target: None,
        })
    }

    fn wait_withdrawn_and_recovered(
        &self,
        observer: &Observer,
        fail_ms: f64,
        client_must_recover: bool,
    ) -> anyhow::Result<()> {
        poll_until(
            "the dead target out of every observed answer and the client served again",
            STEP_TIMEOUT,
            || {
                let rounds = observer.rounds();
                if stats::withdraw_ms(&rounds, fail_ms).is_none() {
                    return Err(format!("{} rounds, still named", rounds.len()));
                }
                let records = self.client.records();
                let recovered = stats::recovery_ms(&records, fail_ms, monotonic_ms()).is_some()
                    && records
                        .last()
                        .is_some_and(|r| r.start_ms > fail_ms && r.ok());
                if client_must_recover && !recovered {
                    return Err(format!("withdrawn; client: {}", show(&last(&records, 5))));
                }
                Ok(())
            },
        )
    }
}

/// The measuring window stays open a little after the wanted state, so a flap would be
/// counted. Not a wait for a result: the result was already polled for.
fn settle() {
    std::thread::sleep(SETTLE);
}

fn served_elsewhere(records: &[Record], from_ms: f64, to_ms: f64) -> usize {
    stats::window(records, from_ms, to_ms)
        .filter(|r| r.ok() && r.served_by.as_deref() != Some(NEAREST))
        .count()
}

fn last(records: &[Record], n: usize) -> Vec<&Record> {
    records[records.len().saturating_sub(n)..].iter().collect()
}

fn show(records: &[&Record]) -> String {
    let shown: Vec<String> = records
        .iter()
        .map(|r| match (&r.served_by, &r.error) {
            (Some(by), _) => by.clone(),
            (None, Some(e)) => format!("failed ({e})"),
            (None, None) => "failed".to_owned(),
        })
        .collect();
    format!("[{}]", shown.join(", "))
}

/// The client process in c2-pod1 and the records it printed so far.
struct ClientProcess {
    child: Child,
    records: Arc<Mutex<Vec<Record>>>,
}

impl ClientProcess {
    fn start(lab: &Lab) -> anyhow::Result<Self> {
        let log_path = lab.log_dir().join("failover-client.log");
        std::fs::create_dir_all(lab.log_dir())?;
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let bin = lab.spec().causeway_bin.clone();
        let args: Vec<std::ffi::OsString> = vec![
            bin.into(),
            "lab".into(),
            "failover-client".into(),
            "--name".into(),
            WEB.into(),
            "--interval-ms".into(),
            CLIENT_INTERVAL_MS.to_string().into(),
            "--timeout-ms".into(),
            CLIENT_TIMEOUT_MS.to_string().into(),
        ];
        let mut command = ns::exec_in(&lab.topology().pod_ns(2, 1), &args);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", ns::describe(&command)))?;
        let stdout = child.stdout.take().context("the client's stdout")?;
        let records = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&records);
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(record) = Record::parse_line(&line) {
                    sink.lock().expect("no holder panics").push(record);
                }
            }
        });
        Ok(Self { child, records })
    }

    fn records(&self) -> Vec<Record> {
        self.records.lock().expect("no holder panics").clone()
    }
}

impl Drop for ClientProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Queries some clusters' DNS (from their pod2) for one name in a tight loop on a thread.
struct Observer {
    stop: Arc<AtomicBool>,
    rounds: Arc<Mutex<Vec<Round>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Observer {
    /// Watches `clusters`' DNS answers for `name` naming pod `target` (cluster, pod), as each
    /// of them reaches it.
    fn start(
        lab: &Lab,
        clusters: &[usize],
        name: &str,
        target: (usize, usize),
    ) -> anyhow::Result<Self> {
        let mut sockets = Vec::new();
        for &c in clusters {
            let seen = lab.pod_seen_from(c, target.0, target.1);
            sockets.push((pod_socket(lab, c)?, lab.topology().dns_listen(c), seen));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(Mutex::new(Vec::new()));
        let (stop_flag, sink, name) = (Arc::clone(&stop), Arc::clone(&rounds), name.to_owned());
        let thread = std::thread::spawn(move || {
            let mut id: u16 = 1;
            while !stop_flag.load(Ordering::SeqCst) {
                let at_ms = monotonic_ms();
                let mut names_target = false;
                for (socket, server, target) in &sockets {
                    id = id.wrapping_add(1);
                    // A DNS that does not answer names nothing, as a client would see it.
                    if let Ok(answer) = query_on(socket, *server, &name, id) {
                        names_target |= answer.contains(target);
                    }
                }
                sink.lock().expect("no holder panics").push(Round {
                    at_ms,
                    names_target,
                });
                std::thread::sleep(OBSERVE_PERIOD);
            }
        });
        Ok(Self {
            stop,
            rounds,
            thread: Some(thread),
        })
    }

    fn rounds(&self) -> Vec<Round> {
        self.rounds.lock().expect("no holder panics").clone()
    }

    /// Waits for a first round that names the target: the failure must start from "answered".
    fn wait_first_round(&self) -> anyhow::Result<()> {
        poll_until(
            "the observer to see the target answered",
            STEP_TIMEOUT,
            || {
                if self.rounds().iter().any(|r| r.names_target) {
                    Ok(())
                } else {
                    Err("not named yet".to_owned())
                }
            },
        )
    }

    fn stop(mut self) -> Vec<Round> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.rounds()
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn pod_socket(lab: &Lab, cluster: usize) -> anyhow::Result<UdpSocket> {
    let pod = lab.topology().pod_ns(cluster, 2);
    let socket = ns::in_netns(&pod, || UdpSocket::bind("0.0.0.0:0"))
        .and_then(|bound| bound)
        .with_context(|| format!("opening a UDP socket in {pod}"))?;
    socket.set_read_timeout(Some(OBSERVE_REPLY_TIMEOUT))?;
    Ok(socket)
}

/// One A query for `name` to `cluster`'s DNS, from its pod2.
fn query_a(lab: &Lab, cluster: usize, name: &str) -> anyhow::Result<Vec<IpAddr>> {
    let socket = pod_socket(lab, cluster)?;
    query_on(&socket, lab.topology().dns_listen(cluster), name, 0x6677)
        .map_err(|e| anyhow::anyhow!("querying c{cluster}'s DNS for {name}: {e}"))
}

fn query_on(
    socket: &UdpSocket,
    server: SocketAddr,
    name: &str,
    id: u16,
) -> Result<Vec<IpAddr>, String> {
    socket
        .send_to(&a_query(id, name), server)
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 1500];
    loop {
        let (n, _) = socket.recv_from(&mut buf).map_err(|e| e.to_string())?;
        // A late reply to an earlier query is skipped.
        if n >= 2 && buf[..2] == id.to_be_bytes() {
            return parse_a(&buf[..n])
                .map(|a| a.into_iter().map(IpAddr::V4).collect())
                .ok_or_else(|| "a malformed reply".to_owned());
        }
    }
}

/// A recursion-desired A query for `name`.
fn a_query(id: u16, name: &str) -> Vec<u8> {
    let mut query = id.to_be_bytes().to_vec();
    query.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    query
}

/// The A records of a reply's answer section; `None` if it is malformed.
fn parse_a(reply: &[u8]) -> Option<Vec<Ipv4Addr>> {
    let u16_at = |i: usize| Some(u16::from_be_bytes([*reply.get(i)?, *reply.get(i + 1)?]));
    let (questions, answers) = (u16_at(4)?, u16_at(6)?);
    let mut pos = 12;
    for _ in 0..questions {
        pos = skip_name(reply, pos)? + 4;
    }
    let mut out = Vec::new();
    for _ in 0..answers {
        pos = skip_name(reply, pos)?;
        let (rtype, len) = (u16_at(pos)?, usize::from(u16_at(pos + 8)?));
        let data = reply.get(pos + 10..pos + 10 + len)?;
        if rtype == 1 && len == 4 {
            out.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        pos += 10 + len;
    }
    Some(out)
}

fn skip_name(buf: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        let len = *buf.get(pos)?;
        match len {
            0 => return Some(pos + 1),
            l if l & 0xc0 == 0xc0 => return Some(pos + 2),
            l => pos += 1 + usize::from(l),
        }
    }
}

/// The table: one row per run, p99 per scenario, and the summary line (always last).
pub fn report(runs: &[Measurement]) -> String {
    let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
    let mut out = format!(
        "{:<32} {:>5} {:>11} {:>11} {:>6} {:>9} {:>9}\n",
        "scenario", "round", "withdraw_ms", "recovery_ms", "failed", "elsewhere", "return_ms"
    );
    for m in runs {
        out += &format!(
            "{:<32} {:>5} {:>11} {:>11} {:>6} {:>9} {:>9}\n",
            m.scenario.title(),
            m.round,
            ms(m.withdraw_ms),
            ms(m.recovery_ms),
            m.failed,
            m.served_elsewhere,
            ms(m.return_ms)
        );
    }
    let p99_of = |pick: &dyn Fn(&Measurement) -> Option<f64>, only: &[Scenario]| {
        let values: Vec<f64> = runs
            .iter()
            .filter(|m| only.contains(&m.scenario))
            .filter_map(pick)
            .collect();
        stats::p99(&values)
    };
    out += "per scenario: p99 of the times over all rounds; failed and elsewhere summed\n";
    for s in Scenario::ALL {
        out += &format!(
            "{:<32} {:>5} {:>11} {:>11} {:>6} {:>9} {:>9}\n",
            s.title(),
            "p99",
            ms(p99_of(&|m| m.withdraw_ms, &[s])),
            ms(p99_of(&|m| m.recovery_ms, &[s])),
            runs.iter()
                .filter(|m| m.scenario == s)
                .map(|m| m.failed)
                .sum::<usize>(),
            runs.iter()
                .filter(|m| m.scenario == s)
                .map(|m| m.served_elsewhere)
                .sum::<usize>(),
            ms(p99_of(&|m| m.return_ms, &[s]))
        );
    }
    let one_to_three = &Scenario::ALL[..3];
    let whole = |v: Option<f64>| v.map_or("none".to_owned(), |v| format!("{v:.0}"));
    out += &format!(
        "failover withdraw_p99_ms={} client_recovery_p99_ms={} failed_requests_broker_down={} return_to_nearest_ms={}",
        whole(p99_of(&|m| m.withdraw_ms, &Scenario::ALL)),
        whole(p99_of(&|m| m.recovery_ms, one_to_three)),
        runs.iter()
            .filter(|m| m.scenario == Scenario::BrokerDown)
            .map(|m| m.failed)
            .sum::<usize>(),
        whole(p99_of(&|m| m.return_ms, one_to_three)),
    );
    out
}

/// The SVG panels: the first round of each scenario, from 1 s before the failure.
pub fn panels(runs: &[Measurement], records: &[Record]) -> Vec<svg::Panel> {
    let mut seen = Vec::new();
    runs.iter()
        .filter(|m| {
            let first = !seen.contains(&m.scenario);
            seen.push(m.scenario);
            first
        })
        .map(|m| {
            let (from_ms, to_ms) = (m.fail_ms - 1000.0, m.end_ms);
            svg::Panel {
                title: format!("{} (round {})", m.scenario.title(), m.round),
                from_ms,
                to_ms,
                requests: stats::window(records, from_ms, to_ms)
                    .map(|r| (r.start_ms, r.served_by.clone()))
                    .collect(),
                marks: vec![
                    (m.fail_ms, "failure".to_owned()),
                    (m.restored_ms, "restored".to_owned()),
                ],
            }
        })
        .collect()
}

/// `causeway lab failover`: builds the lab, runs every scenario `rounds` times, prints the
/// table and writes the SVG timeline to `svg_path`; tears the lab down however it ends.
pub fn failover(
    bin: &Path,
    rounds: usize,
    svg_path: &Path,
    addressing: crate::Addressing,
) -> anyhow::Result<()> {
    wait::install_interrupt_handler().context("installing the SIGINT/SIGTERM handler")?;
    println!("Building the failover lab (namespaces {DEFAULT_PREFIX}-*)...");
    let mut spec = LabSpec::new(DEFAULT_PREFIX, bin);
    spec.addressing = addressing;
    let mut lab = FailoverLab::up(spec)?;
    println!("Lab up; logs in {}", lab.lab().log_dir().display());
    let mut runs = Vec::new();
    let mut outcome = Ok(());
    'rounds: for round in 1..=rounds {
        for scenario in Scenario::ALL {
            match lab.run(scenario, round) {
                Ok(m) => {
                    println!(
                        "round {round} {}: withdraw {:?} ms, recovery {:?} ms, {} failed, return {:?} ms",
                        scenario.title(),
                        m.withdraw_ms.map(f64::round),
                        m.recovery_ms.map(f64::round),
                        m.failed,
                        m.return_ms.map(f64::round)
                    );
                    runs.push(m);
                }
                Err(e) => {
                    outcome = Err(e.context(format!("round {round}: {}", scenario.title())));
                    break 'rounds;
                }
            }
        }
    }
    let records = lab.records();
    let svg = svg::timeline(&panels(&runs, &records));
    std::fs::write(svg_path, svg).with_context(|| format!("writing {}", svg_path.display()))?;
    println!("\n{}", report(&runs));
    println!("Timeline: {}", svg_path.display());
    lab.down()?;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replies_parse_with_compressed_names() {
        let mut reply = a_query(7, "web.shop.svc.global");
        reply[2] |= 0x80;
        reply[7] = 2; // two answers
        for last in [10, 13] {
            reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 10, 101, 0, last]);
        }
        assert_eq!(
            parse_a(&reply),
            Some(vec![
                Ipv4Addr::new(10, 101, 0, 10),
                Ipv4Addr::new(10, 101, 0, 13)
            ])
        );
        assert_eq!(parse_a(&reply[..reply.len() - 3]), None, "truncated");
        let empty = a_query(7, "web.shop.svc.global");
        assert_eq!(parse_a(&empty), Some(vec![]));
    }

    #[test]
    fn the_report_ends_with_the_summary_line() {
        let m = |scenario, withdraw, recovery, failed, ret| Measurement {
            scenario,
            round: 1,
            fail_ms: 0.0,
            restored_ms: 0.0,
            end_ms: 0.0,
            withdraw_ms: Some(withdraw),
            recovery_ms: Some(recovery),
            failed,
            served_elsewhere: 0,
            return_ms: ret,
            bystander_kept_target: None,
        };
        let runs = [
            m(Scenario::EndpointKilled, 400.0, 450.0, 8, Some(600.0)),
            m(Scenario::GatewayKilled, 900.0, 1400.0, 3, Some(1200.0)),
            m(Scenario::WanCut, 800.0, 1300.0, 2, Some(300.0)),
            m(Scenario::BrokerDown, 200.0, 0.0, 0, None),
        ];
        let report = report(&runs);
        assert_eq!(
            report.lines().last().unwrap(),
            "failover withdraw_p99_ms=900 client_recovery_p99_ms=1400 failed_requests_broker_down=0 return_to_nearest_ms=1200"
        );
        assert_eq!(report.lines().count(), 1 + 4 + 1 + 4 + 1);
    }
}
