//! The clusterset's address plan: which address ranges a cluster may claim, the global prefix
//! the broker gives each claimed range, and the 1:1 mapping between a cluster's local addresses
//! and the global ones through which every other cluster reaches them.
//!
//! Clusters made by the same tool share CIDRs (kind and kubeadm: pods `10.244.0.0/16`,
//! services `10.96.0.0/12`), so a local address does not say which cluster it is in. Every
//! range a cluster declares therefore gets a clusterset-unique *global* range of the same
//! length from a supernet per family ([`PlanConfig`]); other clusters route, answer in DNS and
//! write into EndpointSlices only the global addresses, and the owning gateway's data plane
//! rewrites them to the local ones (stateless prefix translation, `causeway_gateway::nat`).
//!
//! Pure: [`check_claims`] says whether a cluster's claims are acceptable, [`allocate`] gives
//! them global ranges, keeping earlier allocations. The broker (`broker::state`) calls both on
//! every Hello and stores the result in the cluster's record ([`ClusterInfo::global`]), so the
//! plan survives restarts and failover with the records.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use super::{ClusterId, ClusterInfo};

/// One claimed local range and the global range of the same length that stands for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Allocation {
    pub local: IpNet,
    pub global: IpNet,
}

impl Allocation {
    /// The global address of `ip`, if `ip` is in the local range.
    pub fn to_global(&self, ip: IpAddr) -> Option<IpAddr> {
        remap(self.local, self.global, ip)
    }

    /// The local address of `ip`, if `ip` is in the global range.
    pub fn to_local(&self, ip: IpAddr) -> Option<IpAddr> {
        remap(self.global, self.local, ip)
    }
}

impl fmt::Display for Allocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ↔ {}", self.local, self.global)
    }
}

/// The global address of a cluster's local `ip` under its allocations, if any covers it.
pub fn to_global(allocations: &[Allocation], ip: IpAddr) -> Option<IpAddr> {
    allocations.iter().find_map(|a| a.to_global(ip))
}

/// Keeps the host bits of `ip` within `from`, under the network bits of `to`.
fn remap(from: IpNet, to: IpNet, ip: IpAddr) -> Option<IpAddr> {
    if !from.contains(&ip) || from.prefix_len() != to.prefix_len() {
        return None;
    }
    match (ip, from.hostmask(), to.network()) {
        (IpAddr::V4(ip), IpAddr::V4(host), IpAddr::V4(net)) => {
            let host = u32::from(ip) & u32::from(host);
            Some(IpAddr::V4(Ipv4Addr::from(u32::from(net) | host)))
        }
        (IpAddr::V6(ip), IpAddr::V6(host), IpAddr::V6(net)) => {
            let host = u128::from(ip) & u128::from(host);
            Some(IpAddr::V6(Ipv6Addr::from(u128::from(net) | host)))
        }
        _ => None,
    }
}

/// The broker's address-plan rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanConfig {
    /// Global IPv4 ranges are cut from this. 100.64.0.0/10 (RFC 6598 shared space, 4M
    /// addresses) holds three kind-sized clusters (a /16 of pods and a /12 of services each);
    /// choose a larger one, or declare only the ranges that are really used, for more.
    pub v4: Ipv4Net,
    /// Global IPv6 ranges are cut from this (a ULA /48: 256 clusters with a /56 of pods).
    pub v6: Ipv6Net,
    /// Most ranges one cluster may claim.
    pub max_claims: usize,
}

impl Default for PlanConfig {
    fn default() -> Self {
        Self {
            v4: "100.64.0.0/10".parse().expect("a valid IPv4 network"),
            v6: "fd63:6175:7365::/48".parse().expect("a valid IPv6 network"),
            max_claims: 16,
        }
    }
}

impl PlanConfig {
    fn supernet(&self, cidr: &IpNet) -> IpNet {
        match cidr {
            IpNet::V4(_) => IpNet::V4(self.v4),
            IpNet::V6(_) => IpNet::V6(self.v6),
        }
    }
}

/// What the broker knows about where a Hello came from, to judge its claims.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimContext {
    /// The broker's own addresses, as this session reached it.
    pub broker: Vec<IpAddr>,
    /// The session's source address, as the broker sees it.
    pub observed: Option<IpAddr>,
    /// Every other registered cluster's WireGuard endpoint address.
    pub peer_endpoints: Vec<(ClusterId, IpAddr)>,
    /// The WireGuard endpoint address the broker's configuration lists for this cluster, if any
    /// (for a gateway behind NAT or a load balancer, whose sessions come from elsewhere).
    pub vouched_endpoint: Option<IpAddr>,
}

/// Which piece of infrastructure a claim would have pulled into a tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Infrastructure {
    Broker(IpAddr),
    /// The claiming gateway's own underlay address (its session's source or its endpoint).
    OwnUnderlay(IpAddr),
    PeerEndpoint {
        cluster: ClusterId,
        address: IpAddr,
    },
}

impl fmt::Display for Infrastructure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Broker(a) => write!(f, "the broker's address {a}"),
            Self::OwnUnderlay(a) => write!(f, "the gateway's own underlay address {a}"),
            Self::PeerEndpoint { cluster, address } => {
                write!(f, "cluster {cluster}'s WireGuard endpoint {address}")
            }
        }
    }
}

/// Why a cluster's address claims were refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum PlanRefusal {
    #[error("claim {cidr} is a default route")]
    DefaultRoute { cidr: IpNet },
    #[error("claim {cidr} has host bits set; claim {network} instead")]
    NotANetwork { cidr: IpNet, network: IpNet },
    #[error("claim {cidr} covers {what}")]
    CoversInfrastructure { cidr: IpNet, what: Infrastructure },
    #[error(
        "claim {cidr} overlaps the reserved range {reserved} (loopback, link-local, multicast or unspecified)"
    )]
    Reserved { cidr: IpNet, reserved: IpNet },
    #[error(
        "claim {cidr} overlaps the clusterset's global range {supernet}, allocated to clusters"
    )]
    InGlobalSpace { cidr: IpNet, supernet: IpNet },
    #[error("claims {a} and {b} overlap")]
    Overlapping { a: IpNet, b: IpNet },
    #[error("{count} claims exceed the limit of {max} per cluster")]
    TooManyClaims { count: usize, max: usize },
    #[error("claim {cidr} is larger than the clusterset's global range {supernet}")]
    LargerThanSupernet { cidr: IpNet, supernet: IpNet },
    #[error("no room left in the global range {supernet} for claim {cidr}")]
    Exhausted { cidr: IpNet, supernet: IpNet },
    #[error(
        "WireGuard endpoint {claimed} is not vouched for: the session comes from {observed}, and the broker's configuration lists no endpoint for this cluster"
    )]
    UnvouchedEndpoint { claimed: IpAddr, observed: IpAddr },
    #[error(
        "WireGuard endpoint {claimed} is not vouched for: the broker's configuration lists {vouched}"
    )]
    EndpointNotAsConfigured { claimed: IpAddr, vouched: IpAddr },
    #[error("WireGuard endpoint {claimed} is not a unicast address")]
    EndpointNotUnicast { claimed: IpAddr },
    #[error("address {address} of service {service} lies outside the cluster's claimed ranges")]
    AddressOutsideClaims { service: String, address: IpAddr },
    #[error(
        "address {address} of service {service} is loopback, link-local, multicast or unspecified"
    )]
    AddressNotRoutable { service: String, address: IpAddr },
}

/// Ranges no cluster may claim, and no endpoint may have.
fn reserved() -> [IpNet; 8] {
    [
        "0.0.0.0/8",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "224.0.0.0/4",
        "::/128",
        "::1/128",
        "fe80::/10",
        "ff00::/8",
    ]
    .map(|s| s.parse().expect("valid reserved ranges"))
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Whether an address can be an endpoint or cluster IP that other clusters reach.
pub fn is_routable(ip: IpAddr) -> bool {
    !reserved().iter().any(|r| r.contains(&ip))
}

/// Checks a cluster's claims (its CIDRs and WireGuard endpoint) against the plan's rules:
/// no default route, nothing that covers the broker, the gateway's own underlay or another
/// cluster's endpoint, nothing reserved or inside the global ranges, no overlap among its own
/// claims, and an endpoint the broker can vouch for.
pub fn check_claims(
    info: &ClusterInfo,
    context: &ClaimContext,
    config: &PlanConfig,
) -> Result<(), PlanRefusal> {
    let (count, max) = (info.cidrs.len(), config.max_claims);
    if count > max {
        return Err(PlanRefusal::TooManyClaims { count, max });
    }
    let endpoint = info.wg_endpoint.ip();
    // A loopback endpoint is one only when the session comes from it too (every part on one
    // host, as in tests).
    if endpoint.is_unspecified()
        || endpoint.is_multicast()
        || (!is_routable(endpoint) && context.observed != Some(endpoint))
    {
        return Err(PlanRefusal::EndpointNotUnicast { claimed: endpoint });
    }
    match (context.vouched_endpoint, context.observed) {
        (Some(vouched), _) if vouched != endpoint => {
            return Err(PlanRefusal::EndpointNotAsConfigured {
                claimed: endpoint,
                vouched,
            });
        }
        (None, Some(observed)) if observed != endpoint => {
            return Err(PlanRefusal::UnvouchedEndpoint {
                claimed: endpoint,
                observed,
            });
        }
        _ => {}
    }
    let infrastructure: Vec<(IpAddr, Infrastructure)> = context
        .broker
        .iter()
        .map(|a| (*a, Infrastructure::Broker(*a)))
        .chain(
            context
                .observed
                .into_iter()
                .chain([endpoint])
                .map(|a| (a, Infrastructure::OwnUnderlay(a))),
        )
        .chain(context.peer_endpoints.iter().map(|(cluster, address)| {
            (
                *address,
                Infrastructure::PeerEndpoint {
                    cluster: cluster.clone(),
                    address: *address,
                },
            )
        }))
        .collect();
    for (i, cidr) in info.cidrs.iter().enumerate() {
        if cidr.prefix_len() == 0 {
            return Err(PlanRefusal::DefaultRoute { cidr: *cidr });
        }
        if cidr.trunc() != *cidr {
            return Err(PlanRefusal::NotANetwork {
                cidr: *cidr,
                network: cidr.trunc(),
            });
        }
        if let Some((_, what)) = infrastructure.iter().find(|(a, _)| cidr.contains(a)) {
            return Err(PlanRefusal::CoversInfrastructure {
                cidr: *cidr,
                what: what.clone(),
            });
        }
        if let Some(reserved) = reserved().into_iter().find(|r| overlaps(r, cidr)) {
            return Err(PlanRefusal::Reserved {
                cidr: *cidr,
                reserved,
            });
        }
        let supernet = config.supernet(cidr);
        if overlaps(&supernet, cidr) {
            return Err(PlanRefusal::InGlobalSpace {
                cidr: *cidr,
                supernet,
            });
        }
        if let Some(other) = info.cidrs[..i].iter().find(|o| overlaps(o, cidr)) {
            return Err(PlanRefusal::Overlapping {
                a: *other,
                b: *cidr,
            });
        }
    }
    Ok(())
}

/// Global ranges for `cidrs` (checked by [`check_claims`]): a range this cluster already had
/// for the same claim (`previous`) is kept; a new claim gets the first free aligned range of
/// its length in its family's supernet, clear of every range in `taken` (the other clusters'
/// allocations). Larger claims are placed first, so that blocks pack without gaps.
pub fn allocate(
    cidrs: &[IpNet],
    previous: &[Allocation],
    taken: &[IpNet],
    config: &PlanConfig,
) -> Result<Vec<Allocation>, PlanRefusal> {
    let mut used: Vec<IpNet> = taken.to_vec();
    let mut out: Vec<Allocation> = vec![];
    // Kept allocations first, so that a new claim cannot take their place.
    for cidr in cidrs {
        if let Some(kept) = previous
            .iter()
            .find(|a| a.local == *cidr && !used.iter().any(|u| overlaps(u, &a.global)))
        {
            used.push(kept.global);
            out.push(*kept);
        }
    }
    let mut fresh: Vec<&IpNet> = cidrs
        .iter()
        .filter(|c| !out.iter().any(|a| a.local == **c))
        .collect();
    fresh.sort_by_key(|c| c.prefix_len());
    for cidr in fresh {
        let supernet = config.supernet(cidr);
        if cidr.prefix_len() < supernet.prefix_len() {
            return Err(PlanRefusal::LargerThanSupernet {
                cidr: *cidr,
                supernet,
            });
        }
        let global =
            first_fit(supernet, cidr.prefix_len(), &used).ok_or(PlanRefusal::Exhausted {
                cidr: *cidr,
                supernet,
            })?;
        used.push(global);
        out.push(Allocation {
            local: *cidr,
            global,
        });
    }
    // In the order the cluster declared its claims.
    out.sort_by_key(|a| cidrs.iter().position(|c| *c == a.local));
    Ok(out)
}

/// The first range of length `len` inside `supernet`, aligned, that overlaps nothing in `used`.
/// Each step jumps past one used range, so this takes at most `used.len() + 1` steps.
fn first_fit(supernet: IpNet, len: u8, used: &[IpNet]) -> Option<IpNet> {
    let (start, end) = bounds(&supernet);
    let size = block_size(&supernet, len);
    let mut at = start;
    loop {
        let last = at.checked_add(size - 1)?;
        if last > end {
            return None;
        }
        let candidate = net_at(&supernet, at, len)?;
        match used.iter().find(|u| overlaps(u, &candidate)) {
            None => return Some(candidate),
            Some(u) => {
                let (_, u_end) = bounds(u);
                // Next aligned block after the used one.
                let next = u_end.checked_add(1)?;
                at = next.div_ceil(size).checked_mul(size)?;
            }
        }
    }
}

/// First and last address of a network, as integers.
fn bounds(net: &IpNet) -> (u128, u128) {
    match net {
        IpNet::V4(n) => (
            u128::from(u32::from(n.network())),
            u128::from(u32::from(n.broadcast())),
        ),
        IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast())),
    }
}

fn block_size(family: &IpNet, len: u8) -> u128 {
    let bits = u32::from(family.max_prefix_len() - len);
    1u128.checked_shl(bits).unwrap_or(0).max(1)
}

fn net_at(family: &IpNet, at: u128, len: u8) -> Option<IpNet> {
    match family {
        IpNet::V4(_) => {
            let a = Ipv4Addr::from(u32::try_from(at).ok()?);
            Ipv4Net::new(a, len).ok().map(IpNet::V4)
        }
        IpNet::V6(_) => Ipv6Net::new(Ipv6Addr::from(at), len).ok().map(IpNet::V6),
    }
}

#[cfg(test)]
mod tests;
