//! The six-step story the demo prints and the end-to-end test asserts, against a running
//! [`Lab`] of three clusters:
//!
//! 1. c1 exports `web` in `shop` (an HTTP server in c1-pod1 plus a service file);
//! 2. c2 resolves `web.shop.svc.global` to c1's pod and fetches its page through the tunnel;
//! 3. meanwhile the wan carries only WireGuard between gateways, and never the page in clear;
//! 4. c3 exports `web` too, and c3's own pods get c3's endpoint first;
//! 5. c1 withdraws `web`; c2 forgets c1's endpoint and fails over to c3;
//! 6. the broker restarts on the same state; every export survives and a new one propagates.
//!
//! Each step is a function run in order on the same lab; each returns a plain-words account
//! of what it checked and saw, or an error saying what it waited for and last saw. Steps
//! only poll conditions with deadlines (see `wait`), never sleep for a result.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::capture::{Packet, Transport};
use crate::cluster::service_yaml;
use crate::lab::Lab;
use crate::topology::WG_PORT;
use crate::wait::poll_until;

/// The exported service every step is about.
pub const WEB: &str = "web.shop.svc.global";
/// The export added after the broker restart.
pub const API: &str = "api.shop.svc.global";
pub const C1_BODY: &str = "hello from c1";
pub const C3_BODY: &str = "hello from c3";

/// An export reaching another cluster takes a broker round trip and a DNS snapshot swap.
const PROPAGATION_TIMEOUT: Duration = Duration::from_secs(15);
/// The first packet through a tunnel waits for the WireGuard handshake.
const REACH_TIMEOUT: Duration = Duration::from_secs(15);
/// A withdrawn export must leave every other cluster's DNS within this.
const WITHDRAW_TIMEOUT: Duration = Duration::from_secs(10);
/// After a broker restart, gateways reconnect with backoff before anything can propagate.
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A story step: its title and the function that runs and checks it.
pub type Step = (&'static str, fn(&mut Lab) -> anyhow::Result<String>);

/// The six steps, in the order they must run.
pub const STEPS: [Step; 6] = [
    ("c1 exports web.shop", step1_c1_exports_web),
    (
        "c2 resolves web.shop.svc.global and reaches c1 through the tunnel",
        step2_c2_resolves_and_reaches_c1,
    ),
    (
        "the wan carries only WireGuard between gateways",
        step3_wan_carries_only_wireguard,
    ),
    (
        "c3 exports web.shop too and prefers its own endpoint",
        step4_c3_exports_and_prefers_itself,
    ),
    (
        "c1 withdraws web.shop and c2 fails over to c3",
        step5_c1_withdraws_and_c2_fails_over,
    ),
    (
        "the broker restarts; exports survive and new ones propagate",
        step6_broker_restart_keeps_exports,
    ),
];

fn web_url() -> String {
    format!("http://{WEB}/")
}

fn show(addresses: &[IpAddr]) -> String {
    if addresses.is_empty() {
        return "no addresses".into();
    }
    addresses
        .iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Polls `resolve(cluster, pod, name)` until `accept` holds for the answer; returns it.
fn wait_for_answer(
    lab: &Lab,
    (cluster, pod): (usize, usize),
    name: &str,
    what: &str,
    timeout: Duration,
    accept: impl Fn(&[IpAddr]) -> bool,
) -> anyhow::Result<Vec<IpAddr>> {
    poll_until(
        &format!("c{cluster}-pod{pod} to resolve {name} to {what}"),
        timeout,
        || match lab.resolve(cluster, pod, name) {
            Ok(answer) if accept(&answer) => Ok(answer),
            Ok(answer) => Err(show(&answer)),
            Err(e) => Err(format!("{e:#}")),
        },
    )
}

/// Polls an HTTP GET from a pod until it returns `body`.
fn wait_for_body(
    lab: &Lab,
    (cluster, pod): (usize, usize),
    url: &str,
    body: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    poll_until(
        &format!("GET {url} from c{cluster}-pod{pod} to return {body:?}"),
        timeout,
        || match lab.http_get(cluster, pod, url) {
            Ok(got) if got == body => Ok(()),
            Ok(got) => Err(format!("body {got:?}")),
            Err(e) => Err(format!("{e:#}")),
        },
    )
}

/// Step 1: an HTTP server in c1-pod1 and a service file exporting it as `web` in `shop`;
/// checked by c1's own DNS answering with that endpoint.
pub fn step1_c1_exports_web(lab: &mut Lab) -> anyhow::Result<String> {
    let endpoint = IpAddr::V4(lab.topology().pod_addr(1, 1));
    lab.start_http_server(1, 1, C1_BODY)?;
    lab.write_service(1, "web.yaml", &service_yaml("shop", "web", 80, &[endpoint]))?;
    let answer = wait_for_answer(
        lab,
        (1, 2),
        WEB,
        &endpoint.to_string(),
        PROPAGATION_TIMEOUT,
        |a| a.contains(&endpoint),
    )?;
    Ok(format!(
        "c1-pod1 ({endpoint}) serves {C1_BODY:?} on port 80; {} in c1's services dir exports it as web in shop; \
         c1's own DNS answers {WEB} with {}",
        lab.services_dir(1).join("web.yaml").display(),
        show(&answer)
    ))
}

/// Step 2: from c2-pod1, the name resolves to c1's pod and a GET by name returns c1's body.
pub fn step2_c2_resolves_and_reaches_c1(lab: &mut Lab) -> anyhow::Result<String> {
    // c2 reaches c1's pod through c1's global range (the address plan).
    let c1_pod = lab.pod_seen_from(2, 1, 1);
    let answer = wait_for_answer(
        lab,
        (2, 1),
        WEB,
        &c1_pod.to_string(),
        PROPAGATION_TIMEOUT,
        |a| a.contains(&c1_pod),
    )?;
    wait_for_body(lab, (2, 1), &web_url(), C1_BODY, REACH_TIMEOUT)?;
    Ok(format!(
        "from c2-pod1, getent hosts {WEB} answers {} (c1-pod1 {} as c2 reaches it, through c1's \
         global range); curl {} from c2-pod1 returns {C1_BODY:?}, so the request crossed from c2 \
         to c1 through the tunnel",
        show(&answer),
        lab.topology().pod_addr(1, 1),
        web_url()
    ))
}

/// Step 3: the same GET as step 2, under a capture on the wan bridge: between gateways only
/// UDP to or from port 51820, some of it WireGuard data; no frame holds the body in clear;
/// no pod address appears on the wan.
pub fn step3_wan_carries_only_wireguard(lab: &mut Lab) -> anyhow::Result<String> {
    let capture = lab.capture_wan("step3")?;
    wait_for_body(lab, (2, 1), &web_url(), C1_BODY, REACH_TIMEOUT)?;
    let packets = capture.stop().context("reading the wan capture")?;
    let gateways: BTreeSet<Ipv4Addr> = lab
        .topology()
        .clusters()
        .map(|c| lab.topology().gw_wan_addr(c))
        .collect();
    let verdict = judge_wan(&packets, &gateways, C1_BODY.as_bytes());
    if !verdict.violations.is_empty() {
        bail!(
            "the wan capture ({} frames) broke the rules: {}",
            packets.len(),
            verdict.violations.join("; ")
        );
    }
    if verdict.wireguard_data == 0 {
        bail!(
            "the wan capture ({} frames) has no WireGuard data packets between gateways, so it shows nothing",
            packets.len()
        );
    }
    Ok(format!(
        "while c2-pod1 fetched {} again, tcpdump on the wan bridge saw {} frames: {} between gateways, all UDP \
         on port {WG_PORT} ({} of them WireGuard data); no frame contains {C1_BODY:?} and no pod address \
         appears on the wan",
        web_url(),
        packets.len(),
        verdict.between_gateways,
        verdict.wireguard_data
    ))
}

/// What a wan capture showed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct WanVerdict {
    pub between_gateways: usize,
    /// Gateway-to-gateway packets that are WireGuard transport data (message type 4).
    pub wireguard_data: usize,
    /// One line per broken rule: how many frames broke it and the first of them.
    pub violations: Vec<String>,
}

/// Frames breaking one rule: how many, and the first one described.
#[derive(Default)]
struct Breaks {
    count: usize,
    first: Option<String>,
}

impl Breaks {
    fn add(&mut self, index: usize, what: impl FnOnce() -> String) {
        self.count += 1;
        if self.first.is_none() {
            self.first = Some(format!("frame {index}: {}", what()));
        }
    }

    fn describe(self, rule: &str) -> Option<String> {
        let first = self.first?;
        Some(format!("{} frames {rule} (first: {first})", self.count))
    }
}

/// Judges a wan capture (pure, so it is unit-tested): see [`step3_wan_carries_only_wireguard`].
pub fn judge_wan(packets: &[Packet], gateways: &BTreeSet<Ipv4Addr>, secret: &[u8]) -> WanVerdict {
    const WG_TRANSPORT_DATA: u8 = 4;
    // Pod addresses of either addressing, and the global ranges they are reached through.
    let is_pod = |a: &Ipv4Addr| {
        let [x, y, ..] = a.octets();
        (x == 10 && ((101..=109).contains(&y) || y == 244)) || (x == 100 && (64..=127).contains(&y))
    };
    let mut verdict = WanVerdict::default();
    let (mut in_clear, mut pod_address, mut not_wireguard) =
        (Breaks::default(), Breaks::default(), Breaks::default());
    for (index, packet) in packets.iter().enumerate() {
        if packet.contains(secret) {
            in_clear.add(index, || match &packet.ipv4 {
                Some(ip) => format!("{} -> {}", ip.src, ip.dst),
                None => "a non-IPv4 frame".into(),
            });
        }
        let Some(ip) = &packet.ipv4 else { continue };
        if is_pod(&ip.src) || is_pod(&ip.dst) {
            pod_address.add(index, || format!("{} -> {}", ip.src, ip.dst));
        }
        if !(gateways.contains(&ip.src) && gateways.contains(&ip.dst)) {
            continue;
        }
        verdict.between_gateways += 1;
        match &ip.transport {
            Transport::Udp {
                src_port,
                dst_port,
                payload,
            } if *src_port == WG_PORT || *dst_port == WG_PORT => {
                if payload.first() == Some(&WG_TRANSPORT_DATA) {
                    verdict.wireguard_data += 1;
                }
            }
            other => not_wireguard.add(index, || format!("{} -> {}: {other:?}", ip.src, ip.dst)),
        }
    }
    let secret = String::from_utf8_lossy(secret);
    verdict.violations = [
        in_clear.describe(&format!("carry {secret:?} in clear")),
        pod_address.describe("have a pod address on the wan"),
        not_wireguard.describe(&format!("between gateways are not UDP on port {WG_PORT}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    verdict
}

/// Step 4: c3 exports `web` as well; c3-pod1's answer lists c3's endpoint first, c1's too.
pub fn step4_c3_exports_and_prefers_itself(lab: &mut Lab) -> anyhow::Result<String> {
    let c1_pod = lab.pod_seen_from(3, 1, 1);
    let c3_pod = IpAddr::V4(lab.topology().pod_addr(3, 1));
    lab.start_http_server(3, 1, C3_BODY)?;
    lab.write_service(3, "web.yaml", &service_yaml("shop", "web", 80, &[c3_pod]))?;
    let what = format!("{c3_pod} first, then also {c1_pod}");
    let answer = wait_for_answer(lab, (3, 1), WEB, &what, PROPAGATION_TIMEOUT, |a| {
        a.first() == Some(&c3_pod) && a.contains(&c1_pod)
    })?;
    Ok(format!(
        "c3-pod1 ({c3_pod}) serves {C3_BODY:?} and c3 exports it as web in shop too; from c3-pod1, {WEB} \
         answers {}: its own cluster's endpoint first",
        show(&answer)
    ))
}

/// Step 5: c1's service file is removed; c2 stops getting c1's endpoint, keeps c3's, and
/// its GET by name now reaches c3.
pub fn step5_c1_withdraws_and_c2_fails_over(lab: &mut Lab) -> anyhow::Result<String> {
    let c1_pod = lab.pod_seen_from(2, 1, 1);
    let c3_pod = lab.pod_seen_from(2, 3, 1);
    lab.remove_service(1, "web.yaml")?;
    let what = format!("{c3_pod} without {c1_pod}");
    let answer = wait_for_answer(lab, (2, 1), WEB, &what, WITHDRAW_TIMEOUT, |a| {
        !a.contains(&c1_pod) && a.contains(&c3_pod)
    })?;
    wait_for_body(lab, (2, 1), &web_url(), C3_BODY, REACH_TIMEOUT)?;
    Ok(format!(
        "c1's web.yaml was removed; from c2-pod1, {WEB} now answers {} (c1's {c1_pod} is gone) and curl {} \
         returns {C3_BODY:?}: c2 failed over to c3",
        show(&answer),
        web_url()
    ))
}

/// Step 6: the broker stops and starts again on the same state file; then every cluster
/// still resolves `web` to c3's endpoint, and a new export (`api` in `shop` from c2)
/// reaches c1 and c3.
pub fn step6_broker_restart_keeps_exports(lab: &mut Lab) -> anyhow::Result<String> {
    let c2_pod = IpAddr::V4(lab.topology().pod_addr(2, 1));
    let old_pid = lab.broker_pid();
    lab.stop_broker();
    // While the broker is down, gateways should serve what they last knew (reported, not
    // required: the story's promise is about after the restart).
    let during = match lab.resolve(2, 1, WEB) {
        Ok(answer) if answer.contains(&lab.pod_seen_from(2, 3, 1)) => {
            format!("c2 kept answering {WEB} with {}", show(&answer))
        }
        Ok(answer) => format!("c2 answered {WEB} with {}", show(&answer)),
        Err(e) => format!("c2 could not resolve {WEB} ({e:#})"),
    };
    lab.start_broker().context("restarting the broker")?;
    let new_pid = lab.broker_pid();
    let mut seen = Vec::new();
    for c in lab.topology().clusters() {
        let answer = wait_for_answer(
            lab,
            (c, 1),
            WEB,
            &lab.pod_seen_from(c, 3, 1).to_string(),
            RECONNECT_TIMEOUT,
            |a| a.contains(&lab.pod_seen_from(c, 3, 1)),
        )?;
        seen.push(format!("c{c}: {}", show(&answer)));
    }
    lab.write_service(2, "api.yaml", &service_yaml("shop", "api", 80, &[c2_pod]))?;
    let mut api_seen = Vec::new();
    for c in lab.topology().clusters().filter(|&c| c != 2) {
        let answer = wait_for_answer(
            lab,
            (c, 1),
            API,
            &lab.pod_seen_from(c, 2, 1).to_string(),
            RECONNECT_TIMEOUT,
            |a| a.contains(&lab.pod_seen_from(c, 2, 1)),
        )?;
        api_seen.push(format!("c{c}: {}", show(&answer)));
    }
    let pids = match (old_pid, new_pid) {
        (Some(old), Some(new)) => format!(" (pid {old} -> {new})"),
        _ => String::new(),
    };
    Ok(format!(
        "the broker was stopped and started again on the same state file{pids}; while it was down {during}; \
         afterwards {WEB} resolves in every cluster ({}), and c2's new export {API} -> {c2_pod} reached the \
         others ({})",
        seen.join("; "),
        api_seen.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::Ipv4;

    fn packet(src: [u8; 4], dst: [u8; 4], transport: Transport) -> Packet {
        Packet {
            frame: vec![0; 60],
            ipv4: Some(Ipv4 {
                src: Ipv4Addr::from(src),
                dst: Ipv4Addr::from(dst),
                transport,
            }),
        }
    }

    fn gateways() -> BTreeSet<Ipv4Addr> {
        (11..=13).map(|i| Ipv4Addr::new(10, 100, 0, i)).collect()
    }

    fn wg(payload: Vec<u8>) -> Transport {
        Transport::Udp {
            src_port: WG_PORT,
            dst_port: 40000,
            payload,
        }
    }

    #[test]
    fn wireguard_between_gateways_and_broker_traffic_pass() {
        let packets = [
            packet([10, 100, 0, 11], [10, 100, 0, 12], wg(vec![1, 0, 0, 0])),
            packet([10, 100, 0, 12], [10, 100, 0, 11], wg(vec![4, 0, 0, 0, 7])),
            packet(
                [10, 100, 0, 13],
                [10, 100, 0, 2],
                Transport::Udp {
                    src_port: 5000,
                    dst_port: 7443,
                    payload: vec![],
                },
            ),
        ];
        let verdict = judge_wan(&packets, &gateways(), b"hello from c1");
        assert_eq!(
            verdict,
            WanVerdict {
                between_gateways: 2,
                wireguard_data: 1,
                violations: vec![]
            }
        );
    }

    #[test]
    fn tcp_between_gateways_a_pod_address_or_the_body_in_clear_are_violations() {
        let mut clear = packet([10, 100, 0, 11], [10, 100, 0, 12], wg(vec![4]));
        clear.frame.extend_from_slice(b"..hello from c1..");
        let packets = [
            packet(
                [10, 100, 0, 11],
                [10, 100, 0, 12],
                Transport::Tcp {
                    src_port: 1,
                    dst_port: 2,
                    payload: vec![],
                },
            ),
            packet(
                [10, 101, 0, 10],
                [10, 102, 0, 10],
                Transport::Other { protocol: 1 },
            ),
            clear,
        ];
        let verdict = judge_wan(&packets, &gateways(), b"hello from c1");
        assert_eq!(verdict.violations.len(), 3, "{:?}", verdict.violations);
        assert!(
            verdict.violations[0]
                .starts_with("1 frames carry \"hello from c1\" in clear (first: frame 2")
        );
        assert!(
            verdict.violations[1]
                .starts_with("1 frames have a pod address on the wan (first: frame 1")
        );
        assert!(
            verdict.violations[2]
                .starts_with("1 frames between gateways are not UDP on port 51820 (first: frame 0")
        );
    }
}
