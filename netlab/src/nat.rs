//! Cluster IPs in the lab, implemented the way kube-proxy's nftables mode implements them: in a
//! cluster's router namespace (its gateway namespace, which every pod routes through and where
//! the tunnel delivers), a `nat` chain rewrites a packet for `VIP:port` to one of the
//! service's pod endpoints, picked per connection by `numgen random`; conntrack rewrites the
//! replies back to the VIP. A cluster IP with no endpoints is rejected (ICMP host
//! unreachable), as kube-proxy does, instead of leaking onto the default route.
//!
//! [`ruleset`] is pure (the nftables script); [`apply`] loads it into a running lab, replacing
//! that cluster's previous services atomically (one `nft -f` transaction). The rules vanish
//! with the namespace, so teardown needs nothing more.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::lab::Lab;
use crate::ns;

/// The nftables table holding a cluster's service rules.
pub const TABLE: &str = "lab_services";
/// Bound on one `nft` run.
const NFT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    Tcp,
    Udp,
}

impl L4 {
    fn keyword(self) -> &'static str {
        match self {
            L4::Tcp => "tcp",
            L4::Udp => "udp",
        }
    }
}

/// One service port behind a cluster IP: packets to `vip:port` go to one of `endpoints`
/// (address, target port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterIp {
    pub vip: Ipv4Addr,
    pub port: u16,
    pub protocol: L4,
    pub endpoints: Vec<(Ipv4Addr, u16)>,
}

/// The nftables script that replaces [`TABLE`] with `services`' rules: DNAT in prerouting
/// (pods and the tunnel) and output (the router itself), a reject for ports without
/// endpoints.
pub fn ruleset(services: &[ClusterIp]) -> String {
    let mut dnat = String::new();
    let mut reject = String::new();
    for service in services {
        let matched = format!(
            "ip daddr {} {} dport {}",
            service.vip,
            service.protocol.keyword(),
            service.port
        );
        if service.endpoints.is_empty() {
            reject.push_str(&format!(
                "    {matched} reject with icmp type host-unreachable\n"
            ));
            continue;
        }
        let map = service
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, (address, port))| format!("{i} : {address} . {port}"))
            .collect::<Vec<_>>()
            .join(", ");
        dnat.push_str(&format!(
            "    {matched} dnat ip to numgen random mod {} map {{ {map} }}\n",
            service.endpoints.len()
        ));
    }
    // `add` then `delete` makes the delete succeed whether or not the table existed, so the
    // whole replacement is one transaction.
    format!(
        "add table ip {TABLE}\ndelete table ip {TABLE}\ntable ip {TABLE} {{\n\
         \x20 chain prerouting {{\n    type nat hook prerouting priority -100; policy accept;\n{dnat}  }}\n\
         \x20 chain output {{\n    type nat hook output priority -100; policy accept;\n{dnat}  }}\n\
         \x20 chain forward {{\n    type filter hook forward priority 0; policy accept;\n{reject}  }}\n\
         \x20 chain local {{\n    type filter hook output priority 0; policy accept;\n{reject}  }}\n\
         }}\n"
    )
}

/// Loads `services` as cluster `cluster`'s cluster IPs into its gateway namespace, replacing
/// the ones loaded before. The script is kept in the work dir for inspection.
pub fn apply(lab: &Lab, cluster: usize, services: &[ClusterIp]) -> anyhow::Result<()> {
    let dir = lab.work_dir().join(lab.topology().cluster_id(cluster));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path: PathBuf = dir.join("services.nft");
    std::fs::write(&path, ruleset(services))
        .with_context(|| format!("writing {}", path.display()))?;
    let ns = lab.topology().gw_ns(cluster);
    let path_arg = path.to_string_lossy().into_owned();
    ns::run_ok(
        &mut ns::exec_in(&ns, &["nft", "-f", &path_arg]),
        NFT_TIMEOUT,
    )
    .with_context(|| format!("loading cluster IPs into {ns}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn ruleset_maps_each_vip_port_to_its_endpoints_at_random() {
        let script = ruleset(&[
            ClusterIp {
                vip: ip("10.101.128.10"),
                port: 80,
                protocol: L4::Tcp,
                endpoints: vec![(ip("10.101.0.10"), 8080), (ip("10.101.0.11"), 8080)],
            },
            ClusterIp {
                vip: ip("10.101.128.11"),
                port: 53,
                protocol: L4::Udp,
                endpoints: vec![],
            },
        ]);
        let dnat = "ip daddr 10.101.128.10 tcp dport 80 dnat ip to numgen random mod 2 \
                    map { 0 : 10.101.0.10 . 8080, 1 : 10.101.0.11 . 8080 }";
        // Once for traffic arriving (pods, tunnel), once for the router's own.
        assert_eq!(script.matches(dnat).count(), 2, "{script}");
        let reject = "ip daddr 10.101.128.11 udp dport 53 reject with icmp type host-unreachable";
        assert_eq!(script.matches(reject).count(), 2, "{script}");
        assert!(!script.contains("10.101.128.11 udp dport 53 dnat"));
        assert!(script.starts_with("add table ip lab_services\ndelete table ip lab_services\n"));
    }

    #[test]
    fn an_empty_ruleset_still_replaces_the_table() {
        let script = ruleset(&[]);
        assert!(script.contains("table ip lab_services {"));
        assert!(!script.contains("dnat"));
        assert!(!script.contains("reject"));
    }
}
