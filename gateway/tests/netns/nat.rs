//! Prefix translation between two clusters with the same pod CIDR: a pod behind each gateway,
//! both in 10.244.0.0/24 and fd00:10:244::/64, reach each other only through the other
//! side's global prefix (A is 100.64.0.0/24 and fd63:6177:0:100::/64, B 100.65.0.0/24 and
//! fd63:6177:0:200::/64) and see each other's global source addresses. Then B's end of its
//! pod link shrinks to 1280 bytes: B's gateway kernel answers A's too-big packets with ICMP "frag
//! needed" / ICMPv6 "packet too big", which must reach A's pod translated (outer destination
//! and quoted source back to A's local address, checksums intact) for its kernel to learn
//! the path MTU and for a TCP transfer (DF set, no blackhole detection) to finish.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, Result, ensure};

use crate::lab::{
    Gateway, Netns, TUN, attach_pod, config, linked_pair, poll, require_root,
    tcp_transfer_seen_from,
};

const A_MAPPINGS: [(&str, &str); 2] = [
    ("10.244.0.0/24", "100.64.0.0/24"),
    ("fd00:10:244::/64", "fd63:6177:0:100::/64"),
];
const B_MAPPINGS: [(&str, &str); 2] = [
    ("10.244.0.0/24", "100.65.0.0/24"),
    ("fd00:10:244::/64", "fd63:6177:0:200::/64"),
];

/// Gives a pod (and its gateway's side of the link) an IPv6 address too, with forwarding on.
fn add_ipv6(gw: &Netns, pod: &Netns, pod_addr: &str) -> Result<()> {
    gw.ip(&[
        "-6",
        "addr",
        "add",
        "fd00:10:244::1/64",
        "dev",
        "gwp0",
        "nodad",
    ])?;
    pod.ip(&["-6", "addr", "add", pod_addr, "dev", "pod0", "nodad"])?;
    pod.ip(&["-6", "route", "add", "default", "via", "fd00:10:244::1"])?;
    let out = gw.exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])?;
    ensure!(out.status.success(), "enabling IPv6 forwarding");
    Ok(())
}

fn ping(pod: &Netns, args: &[&str]) -> Result<bool> {
    let mut full = vec!["ping", "-c", "1", "-W", "1"];
    full.extend_from_slice(args);
    Ok(pod.exec(&full)?.status.success())
}

#[test]
fn pods_with_the_same_cidr_talk_through_global_prefixes_and_pmtu_errors_find_the_sender()
-> Result<()> {
    require_root()?;
    let (a, b) = linked_pair("nat")?;
    let pod_a = attach_pod(&a, "nat-pa", "10.244.0.10/24", "10.244.0.1/24")?;
    let pod_b = attach_pod(&b, "nat-pb", "10.244.0.20/24", "10.244.0.1/24")?;
    add_ipv6(&a, &pod_a, "fd00:10:244::10/64")?;
    add_ipv6(&b, &pod_b, "fd00:10:244::20/64")?;
    // The gateways' own traffic into the tunnel (ICMP errors included) leaves from their pod
    // link address, which is inside the translated CIDR.
    let ga = Gateway::spawn(&a, config("10.250.0.1:51820", TUN, "10.244.0.1"))??;
    let gb = Gateway::spawn(&b, config("10.250.0.2:51820", TUN, "10.244.0.1"))??;
    ga.set_translation(&A_MAPPINGS)?;
    gb.set_translation(&B_MAPPINGS)?;
    let globals = |m: &[(&str, &str); 2]| -> Result<Vec<ipnet::IpNet>> {
        m.iter()
            .map(|(_, g)| g.parse().context("literal"))
            .collect()
    };
    ga.set_peers(vec![causeway_gateway::PeerSpec {
        public_key: gb.handle.public_key(),
        endpoint: "10.250.0.2:51820".parse()?,
        allowed_ips: globals(&B_MAPPINGS)?,
    }])?;
    gb.set_peers(vec![causeway_gateway::PeerSpec {
        public_key: ga.handle.public_key(),
        endpoint: "10.250.0.1:51820".parse()?,
        allowed_ips: globals(&A_MAPPINGS)?,
    }])?;

    poll("ping from A's pod to B's pod's global IPv4 address", || {
        ping(&pod_a, &["100.65.0.20"])
    })?;
    poll("ping from A's pod to B's pod's global IPv6 address", || {
        ping(&pod_a, &["fd63:6177:0:200::20"])
    })?;
    ensure!(
        ping(&pod_b, &["100.64.0.10"])? && ping(&pod_b, &["fd63:6177:0:100::10"])?,
        "ping from B's pod to A's pod"
    );

    // Byte-exact TCP both ways; each listener sees the other pod's global address, at the
    // same host offset as its local one.
    let cases: [(&Netns, &Netns, &str, &str); 4] = [
        (&pod_a, &pod_b, "100.65.0.20:5040", "100.64.0.10"),
        (&pod_b, &pod_a, "100.64.0.10:5041", "100.65.0.20"),
        (
            &pod_a,
            &pod_b,
            "[fd63:6177:0:200::20]:5042",
            "fd63:6177:0:100::10",
        ),
        (
            &pod_b,
            &pod_a,
            "[fd63:6177:0:100::10]:5043",
            "fd63:6177:0:200::20",
        ),
    ];
    for (from, to, global, expected_source) in cases {
        let seen = transfer_via_global(from, to, global.parse()?)?;
        ensure!(
            seen == expected_source.parse::<IpAddr>()?,
            "{} saw the connection from {seen}, not {expected_source}",
            to.name
        );
    }
    let (sa, sb) = (ga.device_stats(), gb.device_stats());
    ensure!(
        sa.translated_packets > 0 && sb.translated_packets > 0,
        "translation counted: {sa:?} {sb:?}"
    );
    ensure!(
        sa.untranslatable_packets + sb.untranslatable_packets == 0,
        "nothing dropped as untranslatable: {sa:?} {sb:?}"
    );
    ensure!(
        sa.spoofed_source_packets + sb.spoofed_source_packets == 0,
        "no packet arrived from outside the peer's global prefixes: {sa:?} {sb:?}"
    );

    // B's gateway's side of the pod link shrinks to 1280 bytes (the pod's side stays at
    // 1500, so B's pod keeps announcing an MSS of 1460, clamped to the tunnel's 1380). A's
    // pod's full-size DF segments now die in B's gateway, which answers with ICMP "frag
    // needed" / ICMPv6 "packet too big": only when those reach A's pod translated does its
    // kernel lower the path MTU, and these transfers finish (no blackhole detection).
    b.ip(&["link", "set", "gwp0", "mtu", "1280"])?;
    transfer_via_global(&pod_a, &pod_b, "100.65.0.20:5044".parse()?)?;
    transfer_via_global(&pod_a, &pod_b, "[fd63:6177:0:200::20]:5045".parse()?)?;
    // And A's pod's kernel has the path MTU for B's pod's global addresses on record.
    for (family, global) in [("-4", "100.65.0.20"), ("-6", "fd63:6177:0:200::20")] {
        poll(&format!("A's pod learns the path MTU to {global}"), || {
            let _ = pod_a.exec(&[
                "ping", family, "-c", "1", "-W", "1", "-M", "do", "-s", "1300", global,
            ])?;
            let route = pod_a.ip(&[family, "route", "get", global])?;
            Ok(route.contains("mtu 1280"))
        })?;
    }
    let sb = gb.device_stats();
    ensure!(
        sb.untranslatable_packets == 0 && ga.device_stats().spoofed_source_packets == 0,
        "the ICMP errors were translated, not dropped: {sb:?} {:?}",
        ga.device_stats()
    );
    Ok(())
}

/// Streams 1 MiB from pod `from` to pod `to`, dialling `global` (the listener takes the same
/// port on every address of its family: it only knows its local address); returns the source
/// address the listener saw.
fn transfer_via_global(from: &Netns, to: &Netns, global: SocketAddr) -> Result<IpAddr> {
    let any: IpAddr = if global.is_ipv4() {
        "0.0.0.0".parse()?
    } else {
        "::".parse()?
    };
    let listen = SocketAddr::new(any, global.port());
    let seen = tcp_transfer_seen_from(&from.name, &to.name, listen, global, 1 << 20)
        .with_context(|| format!("TCP from {} to {global}", from.name))?;
    Ok(seen.ip())
}
