//! Health probes between two real gateways: a cut link is seen as down, a restored one as up.

use anyhow::Result;
use causeway_gateway::HealthState;

use crate::lab::{Gateway, linked_pair, nft, peer, poll, require_root};

/// Drops WireGuard's UDP both ways in one namespace: the veth stays up, so this is a cut
/// path rather than a local error the sender could notice.
const CUT: &str = "add table inet cut
add chain inet cut input { type filter hook input priority 0; }
add chain inet cut output { type filter hook output priority 0; }
add rule inet cut input udp dport 51820 drop
add rule inet cut output udp dport 51820 drop";

#[test]
fn peers_probe_each_other_and_a_cut_link_goes_down_then_up_again() -> Result<()> {
    require_root()?;
    let (a, b) = linked_pair("hl")?;
    let ga = Gateway::start(&a, "10.250.0.1:51820", "10.251.1.1")?;
    let gb = Gateway::start(&b, "10.250.0.2:51820", "10.251.2.1")?;
    ga.set_peers(vec![peer(&gb, "10.250.0.2:51820", "10.251.2.0/24")])?;
    gb.set_peers(vec![peer(&ga, "10.250.0.1:51820", "10.251.1.0/24")])?;

    // No traffic but the probes themselves: they start the handshake and get answered.
    poll("both see each other up", || {
        Ok(
            ga.health_of(&gb) == Some(HealthState::Up)
                && gb.health_of(&ga) == Some(HealthState::Up),
        )
    })?;
    let stats = ga.stats();
    let rtt = stats[0].health.rtt;
    anyhow::ensure!(rtt.is_some(), "an RTT after replies: {stats:?}");

    nft(&b, CUT)?;
    // The 1 s promise is checked under simulated time (health::tests); here only that it
    // happens, within the fixture's generous deadline.
    poll("both see each other down", || {
        Ok(ga.health_of(&gb) == Some(HealthState::Down)
            && gb.health_of(&ga) == Some(HealthState::Down))
    })?;

    nft(&b, "delete table inet cut")?;
    poll("both see each other up again", || {
        Ok(
            ga.health_of(&gb) == Some(HealthState::Up)
                && gb.health_of(&ga) == Some(HealthState::Up),
        )
    })?;
    anyhow::ensure!(ga.device_stats().health_transitions >= 3);

    // Removing a peer removes it from the health map.
    ga.set_peers(vec![])?;
    poll("removed peer leaves the health map", || {
        Ok(ga.health_of(&gb).is_none())
    })?;
    Ok(())
}
