//! Path MTU: a 1280-byte underlay, a tunnel MTU derived from it, and pods on 1500-byte links
//! behind each gateway. Both pods announce an MSS of 1460, so their full-size segments only
//! fit the 1200-byte tunnel because the gateways clamp the SYNs: ICMP "fragmentation needed"
//! is dropped, so PMTU discovery cannot rescue them. (Verified: with clamping disabled this
//! test times out.)

use anyhow::Result;

use crate::lab::{
    Gateway, TUN, attach_pod, config, linked_pair_mtu, nft, peer, poll, require_root, tcp_transfer,
};

#[test]
fn full_size_tcp_between_1500_byte_pods_crosses_a_1280_byte_underlay_byte_exact() -> Result<()> {
    require_root()?;
    let (a, b) = linked_pair_mtu("mtu", 1280)?;
    let pod_a = attach_pod(&a, "mtu-pa", "10.251.1.10/24", "10.251.1.254/24")?;
    let pod_b = attach_pod(&b, "mtu-pb", "10.251.2.10/24", "10.251.2.254/24")?;
    let mtu = causeway_gateway::tunnel_mtu(1280);
    anyhow::ensure!(mtu == 1200);
    let start = |ns, listen, src| {
        Gateway::spawn(
            ns,
            causeway_gateway::Config {
                mtu,
                ..config(listen, TUN, src)
            },
        )
    };
    let ga = start(&a, "10.250.0.1:51820", "10.251.1.254")??;
    let gb = start(&b, "10.250.0.2:51820", "10.251.2.1")??;
    ga.set_peers(vec![peer(&gb, "10.250.0.2:51820", "10.251.2.0/24")])?;
    gb.set_peers(vec![peer(&ga, "10.250.0.1:51820", "10.251.1.0/24")])?;
    // A black hole for PMTU discovery: the gateways never tell a pod its packets are too big.
    for gw in [&a, &b] {
        nft(
            gw,
            "add table inet pmtu
add chain inet pmtu output { type filter hook output priority 0; }
add rule inet pmtu output icmp type destination-unreachable drop",
        )?;
    }
    poll("ping from pod to pod through the tunnel", || {
        let out = pod_a.exec(&["ping", "-c", "1", "-W", "1", "10.251.2.10"])?;
        Ok(out.status.success())
    })?;
    tcp_transfer(
        &pod_a.name,
        &pod_b.name,
        "10.251.2.10:5030".parse()?,
        8 << 20,
    )?;
    tcp_transfer(
        &pod_b.name,
        &pod_a.name,
        "10.251.1.10:5031".parse()?,
        8 << 20,
    )?;
    Ok(())
}
