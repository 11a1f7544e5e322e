//! The direct encoder: a service's fast-path answers written straight from its
//! [`ServiceRecords`] into one [`WireTree`] per zone, with no hickory `Name` or `Record` in
//! between. What an update of a service costs is mostly this.
//!
//! It writes exactly the bytes `wire::tree` writes from the records `build.rs` makes for the
//! same service (the proptest in `tests/encode.rs` holds it to that), and takes only the
//! services where that is simple to be sure of: every label valid, no two clusters (or two SRV
//! names) that differ only in case, which `build.rs` merges into one name, and every name well
//! under the 255-octet limit. [`service`] returns `None` for anything else, rejected services
//! included, and the caller builds those through `build.rs`, which owns the rules and the
//! errors.
//!
//! Names are lowercase wire bytes (each label after its length octet), as the fast path's keys
//! are; a record's owner in the answer section is a pointer to the question, and every other
//! name is written in full, in the case `build.rs` gives it (a cluster-pinned SRV target keeps
//! the cluster label's spelling).

use std::borrow::Cow;
use std::collections::HashSet;
use std::net::IpAddr;

use super::build::{Prepared, SRV_WEIGHT, check_label, endpoint_subset};
use super::wire::{QNAME_POINTER, TreeBuilder, WireTree, variants};
use super::{ClusterRecords, NamedPort, ServiceKind, ServiceRecords, order_into};

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const TYPE_SRV: u16 = 33;
const CLASS_IN: u16 = 1;
/// Longest name the encoder writes (wire octets); a service with a longer one goes through
/// `build.rs`, which applies the exact 255-octet rule.
const MAX_NAME: usize = 200;
/// Addresses deduplicated by a linear scan before switching to a hash set.
const LINEAR_DEDUP: usize = 32;

/// One of a service's trees: the key of its root (`S.N.<parent>`), the apex it belongs to,
/// and its answers.
pub(super) struct EncodedTree {
    pub(super) root: Box<[u8]>,
    pub(super) apex: usize,
    pub(super) wire: WireTree,
}

/// A named port as `build.rs` keeps it: the first of each (name, protocol).
struct Port<'a> {
    name: &'a str,
    protocol: &'static str,
    port: u16,
}

/// An SRV target: its priority, its name as written, and its addresses.
struct Target<'s> {
    priority: u16,
    name: Vec<u8>,
    addresses: Cow<'s, [IpAddr]>,
}

/// The service's ports if the encoder takes the service (see the module docs), else `None`.
fn accepted<'a>(prepared: &Prepared, service: &'a ServiceRecords) -> Option<Vec<Port<'a>>> {
    let ok = |label: &str| check_label(label).is_ok();
    if !ok(&service.namespace) || !ok(&service.name) {
        return None;
    }
    let parent = prepared
        .mcs_key
        .as_ref()
        .map_or(0, |k| k.len())
        .max(prepared.global_key.len());
    let root = 2 + service.namespace.len() + service.name.len() + parent;
    let mut longest = root;
    for (at, cluster) in service.clusters.iter().enumerate() {
        let label = &cluster.cluster;
        if !ok(label)
            || service.clusters[..at]
                .iter()
                .any(|c| c.cluster.eq_ignore_ascii_case(label))
        {
            return None;
        }
        longest = longest.max(root + 1 + label.len());
        for host in &cluster.hosts {
            if !ok(&host.hostname) {
                return None;
            }
            longest = longest.max(root + 2 + label.len() + host.hostname.len());
        }
    }
    let mut ports: Vec<Port<'a>> = Vec::with_capacity(service.ports.len());
    for NamedPort {
        name,
        port,
        protocol,
    } in &service.ports
    {
        // `_` + name must still be a label.
        if !ok(name) || name.len() > 62 {
            return None;
        }
        let protocol = protocol.label();
        let same = |p: &&Port<'_>| p.protocol == protocol && p.name.eq_ignore_ascii_case(name);
        match ports.iter().find(same) {
            Some(first) if first.name == name => continue,
            // One DNS name spelt two ways: `build.rs` merges the two.
            Some(_) => return None,
            None => {}
        }
        longest = longest.max(root + 2 + name.len() + 1 + protocol.len());
        ports.push(Port {
            name,
            protocol,
            port: *port,
        });
    }
    (longest <= MAX_NAME).then_some(ports)
}

/// `S.N.<parent>` in lowercase wire form.
fn root(parent: &[u8], service: &ServiceRecords) -> Vec<u8> {
    let mut name =
        Vec::with_capacity(2 + service.name.len() + service.namespace.len() + parent.len());
    for label in [&service.name, &service.namespace] {
        push_label(&mut name, label.as_bytes(), true);
    }
    name.extend_from_slice(parent);
    name
}

/// `label.<parent>`, the label lowercased or as it is.
fn child(label: &str, parent: &[u8], lowercase: bool) -> Vec<u8> {
    let mut name = Vec::with_capacity(1 + label.len() + parent.len());
    push_label(&mut name, label.as_bytes(), lowercase);
    name.extend_from_slice(parent);
    name
}

fn push_label(name: &mut Vec<u8>, label: &[u8], lowercase: bool) {
    // Labels are checked to be at most 63 octets.
    name.push(u8::try_from(label.len()).unwrap_or(63));
    if lowercase {
        name.extend(label.iter().map(u8::to_ascii_lowercase));
    } else {
        name.extend_from_slice(label);
    }
}

/// A cluster's hosts, one name per hostname (lowercase), in first-seen order.
fn hosts(cluster: &ClusterRecords) -> Vec<(String, Vec<IpAddr>)> {
    let mut hosts: Vec<(String, Vec<IpAddr>)> = Vec::new();
    for host in &cluster.hosts {
        let name = host.hostname.to_ascii_lowercase();
        match hosts.iter_mut().find(|(n, _)| *n == name) {
            Some((_, addresses)) => addresses.push(host.address),
            None => hosts.push((name, vec![host.address])),
        }
    }
    hosts
}

/// A record's fixed part after its owner: type, class IN, TTL, RDLENGTH.
fn record_head(bytes: &mut Vec<u8>, record_type: u16, ttl: [u8; 4], rdata_len: usize) {
    bytes.extend_from_slice(&record_type.to_be_bytes());
    bytes.extend_from_slice(&CLASS_IN.to_be_bytes());
    bytes.extend_from_slice(&ttl);
    // RDATA here is an address or an SRV with a name under MAX_NAME.
    bytes.extend_from_slice(&u16::try_from(rdata_len).unwrap_or(u16::MAX).to_be_bytes());
}

/// The encoder's settings and scratch space, reused from one RRset (and one service) to the
/// next.
pub(super) struct Encoder<'p> {
    prepared: &'p Prepared,
    ttl: [u8; 4],
    /// One answer's record indices.
    order: Vec<usize>,
    /// The addresses of the RRsets being written, deduplicated, and their group lengths.
    v4: Vec<[u8; 4]>,
    v4_groups: Vec<usize>,
    v6: Vec<[u8; 16]>,
    v6_groups: Vec<usize>,
    /// The addresses seen, once there are too many for a linear scan.
    seen: HashSet<IpAddr>,
}

impl<'p> Encoder<'p> {
    /// The service's trees, causeway's zone first, or `None` when `build.rs` must build it.
    pub(super) fn service(&mut self, service: &ServiceRecords) -> Option<Vec<EncodedTree>> {
        let prepared = self.prepared;
        let ports = accepted(prepared, service)?;
        let mut trees = Vec::with_capacity(2);
        trees.push(self.global(root(&prepared.global_key, service), service, &ports));
        if let Some(mcs) = &prepared.mcs_key
            && let Some(tree) = self.mcs(root(mcs, service), service, &ports)
        {
            trees.push(tree);
        }
        Some(trees)
    }

    pub(super) fn new(prepared: &'p Prepared) -> Self {
        Encoder {
            prepared,
            ttl: prepared.ttl.to_be_bytes(),
            order: Vec::new(),
            v4: Vec::new(),
            v4_groups: Vec::new(),
            v6: Vec::new(),
            v6_groups: Vec::new(),
            seen: HashSet::new(),
        }
    }

    /// `S.N`, `C.S.N`, `H.C.S.N` and `_P._proto.S.N` in causeway's own zone (apex 0), as
    /// `Zones::add_global` makes them.
    fn global(
        &mut self,
        root: Vec<u8>,
        service: &ServiceRecords,
        ports: &[Port<'_>],
    ) -> EncodedTree {
        let cap = self.prepared.cap;
        let hosts_count: usize = service.clusters.iter().map(|c| c.hosts.len()).sum();
        let mut tree = builder(
            service,
            1 + service.clusters.len() + hosts_count + 2 * ports.len(),
        );
        tree.name(&root, 0);
        self.addresses(&mut tree, service.tiers.iter().map(Vec::as_slice), cap);
        let mut targets = Vec::new();
        for cluster in &service.clusters {
            let pinned = child(&cluster.cluster, &root, true);
            tree.name(&pinned, 0);
            self.addresses(&mut tree, [cluster.addresses.as_slice()].into_iter(), cap);
            for (host, addresses) in hosts(cluster) {
                let name = child(&host, &pinned, true);
                tree.name(&name, 0);
                self.addresses(&mut tree, [addresses.as_slice()].into_iter(), cap);
                if service.kind == ServiceKind::Headless {
                    targets.push(Target {
                        priority: cluster.priority,
                        name,
                        addresses: Cow::Owned(addresses),
                    });
                }
            }
            if matches!(service.kind, ServiceKind::ClusterSetIp { .. })
                && !cluster.addresses.is_empty()
            {
                targets.push(Target {
                    priority: cluster.priority,
                    // The target keeps the cluster label's spelling.
                    name: child(&cluster.cluster, &root, false),
                    addresses: Cow::Borrowed(&cluster.addresses),
                });
            }
        }
        self.srv(&mut tree, &root, 0, targets, ports);
        EncodedTree {
            root: root.into_boxed_slice(),
            apex: 0,
            wire: tree.finish(),
        }
    }

    /// `S.N.svc`, `H.C.S.N.svc` and `_P._proto.S.N.svc` in the MCS zone (apex 1), as
    /// `Zones::add_mcs` makes them; `None` when the service has no name there.
    fn mcs(
        &mut self,
        root: Vec<u8>,
        service: &ServiceRecords,
        ports: &[Port<'_>],
    ) -> Option<EncodedTree> {
        let cap = self.prepared.cap;
        let hosts_count: usize = service.clusters.iter().map(|c| c.hosts.len()).sum();
        let mut tree = builder(
            service,
            1 + service.clusters.len() + hosts_count + 2 * ports.len(),
        );
        tree.name(&root, 1);
        let mut targets = Vec::new();
        match &service.kind {
            ServiceKind::ClusterSetIp { clusterset_ips } => {
                let addresses: Cow<'_, [IpAddr]> = if clusterset_ips.is_empty() {
                    self.addresses(&mut tree, service.tiers.iter().map(Vec::as_slice), cap);
                    service.tiers.iter().flatten().copied().collect()
                } else {
                    self.addresses(&mut tree, [clusterset_ips.as_slice()].into_iter(), cap);
                    Cow::Borrowed(clusterset_ips)
                };
                if !addresses.is_empty() {
                    targets.push(Target {
                        priority: 0,
                        name: root.clone(),
                        addresses,
                    });
                }
            }
            ServiceKind::Headless => {
                if service.tiers.iter().all(Vec::is_empty) {
                    return None;
                }
                // The best `cap` endpoints, both families (see `Zones::add_mcs`).
                let subset = endpoint_subset(service, cap);
                self.addresses(&mut tree, subset.iter().map(Vec::as_slice), usize::MAX);
                for cluster in &service.clusters {
                    let pinned = child(&cluster.cluster, &root, true);
                    let hosts = hosts(cluster);
                    if !hosts.is_empty() {
                        // An empty non-terminal above the hosts.
                        tree.name(&pinned, 1);
                    }
                    for (host, addresses) in hosts {
                        let name = child(&host, &pinned, true);
                        tree.name(&name, 1);
                        self.addresses(&mut tree, [addresses.as_slice()].into_iter(), cap);
                        targets.push(Target {
                            priority: cluster.priority,
                            name,
                            addresses: Cow::Owned(addresses),
                        });
                    }
                }
            }
        }
        self.srv(&mut tree, &root, 1, targets, ports);
        Some(EncodedTree {
            root: root.into_boxed_slice(),
            apex: 1,
            wire: tree.finish(),
        })
    }

    /// `_P._proto.<root>` SRV for every port, pointing at `targets` (by priority, stable),
    /// with the targets' addresses in the additional section; a port with no target is an
    /// existing name with no records. `_proto.<root>` is an empty non-terminal.
    fn srv(
        &mut self,
        tree: &mut TreeBuilder,
        root: &[u8],
        apex: usize,
        mut targets: Vec<Target<'_>>,
        ports: &[Port<'_>],
    ) {
        if ports.is_empty() {
            return;
        }
        targets.sort_by_key(|t| t.priority);
        // The additional section, the same for every port: each target's A then AAAA
        // records, deduplicated and capped like an answer, in their stored order.
        let mut additional = Vec::new();
        let mut additional_count = 0usize;
        let cap = self.prepared.cap;
        for target in &targets {
            self.split([&*target.addresses].into_iter());
            for address in self.v4.iter().take(cap) {
                additional.extend_from_slice(&target.name);
                record_head(&mut additional, TYPE_A, self.ttl, 4);
                additional.extend_from_slice(address);
            }
            for address in self.v6.iter().take(cap) {
                additional.extend_from_slice(&target.name);
                record_head(&mut additional, TYPE_AAAA, self.ttl, 16);
                additional.extend_from_slice(address);
            }
            additional_count += self.v4.len().min(cap) + self.v6.len().min(cap);
        }
        let counts = u16::try_from(targets.len())
            .ok()
            .zip(u16::try_from(additional_count).ok());
        for port in ports {
            let protocol = child(port.protocol, root, true);
            if !tree.has_name(&protocol) {
                tree.name(&protocol, apex);
            }
            let mut label = String::with_capacity(1 + port.name.len());
            label.push('_');
            label.push_str(port.name);
            tree.name(&child(&label, &protocol, true), apex);
            if targets.is_empty() {
                continue;
            }
            tree.rrset(TYPE_SRV);
            let Some((answers, additional_count)) = counts else {
                // Too many records for one message: the slow path answers.
                continue;
            };
            let ttl = self.ttl;
            tree.body(answers, additional_count, |bytes| {
                for target in &targets {
                    bytes.extend_from_slice(&QNAME_POINTER);
                    record_head(bytes, TYPE_SRV, ttl, 6 + target.name.len());
                    bytes.extend_from_slice(&target.priority.to_be_bytes());
                    bytes.extend_from_slice(&SRV_WEIGHT.to_be_bytes());
                    bytes.extend_from_slice(&port.port.to_be_bytes());
                    bytes.extend_from_slice(&target.name);
                }
                bytes.extend_from_slice(&additional);
            });
        }
    }

    /// The A then AAAA RRsets at the last name started, from preference groups (see
    /// `address_rrsets` in `build.rs`): one body per rotation.
    fn addresses<'g>(
        &mut self,
        tree: &mut TreeBuilder,
        groups: impl Iterator<Item = &'g [IpAddr]>,
        cap: usize,
    ) {
        self.split(groups);
        let ttl = self.ttl;
        if !self.v4.is_empty() {
            family(
                tree,
                TYPE_A,
                ttl,
                &self.v4,
                &self.v4_groups,
                cap,
                &mut self.order,
            );
        }
        if !self.v6.is_empty() {
            family(
                tree,
                TYPE_AAAA,
                ttl,
                &self.v6,
                &self.v6_groups,
                cap,
                &mut self.order,
            );
        }
    }

    /// Splits `groups` into `v4`/`v6` with their group lengths (empty groups dropped), keeping
    /// the first occurrence of a repeated address (RFC 2181 §5).
    fn split<'g>(&mut self, groups: impl Iterator<Item = &'g [IpAddr]>) {
        self.v4.clear();
        self.v4_groups.clear();
        self.v6.clear();
        self.v6_groups.clear();
        self.seen.clear();
        for group in groups {
            let (v4_before, v6_before) = (self.v4.len(), self.v6.len());
            for &address in group {
                if !self.is_new(address) {
                    continue;
                }
                match address {
                    IpAddr::V4(v4) => self.v4.push(v4.octets()),
                    IpAddr::V6(v6) => self.v6.push(v6.octets()),
                }
            }
            if self.v4.len() > v4_before {
                self.v4_groups.push(self.v4.len() - v4_before);
            }
            if self.v6.len() > v6_before {
                self.v6_groups.push(self.v6.len() - v6_before);
            }
        }
    }

    /// Whether `address` is not among those kept so far (and, past the linear scan's size,
    /// records it as seen).
    fn is_new(&mut self, address: IpAddr) -> bool {
        if self.v4.len() + self.v6.len() < LINEAR_DEDUP {
            return match address {
                IpAddr::V4(v4) => !self.v4.contains(&v4.octets()),
                IpAddr::V6(v6) => !self.v6.contains(&v6.octets()),
            };
        }
        if self.seen.is_empty() {
            let v4 = self.v4.iter().map(|&a| IpAddr::from(a));
            let v6 = self.v6.iter().map(|&a| IpAddr::from(a));
            self.seen.extend(v4.chain(v6));
        }
        self.seen.insert(address)
    }
}

/// A tree builder sized for a service with `names` names.
fn builder(service: &ServiceRecords, names: usize) -> TreeBuilder {
    let addresses: usize = service.tiers.iter().map(Vec::len).sum::<usize>()
        + service
            .clusters
            .iter()
            .map(|c| c.addresses.len())
            .sum::<usize>();
    TreeBuilder::with_capacity(names * 48 + addresses * 64, names)
}

/// One address RRset of `record_type` with `addresses` (octets) in preference groups
/// `groups`: one body per rotation, each capped at `cap`.
fn family<const N: usize>(
    tree: &mut TreeBuilder,
    record_type: u16,
    ttl: [u8; 4],
    addresses: &[[u8; N]],
    groups: &[usize],
    cap: usize,
    order: &mut Vec<usize>,
) {
    tree.rrset(record_type);
    let Ok(answers) = u16::try_from(addresses.len().min(cap)) else {
        // Too many records for one message: the slow path answers.
        return;
    };
    for rotation in 0..variants(groups) {
        order_into(groups, addresses.len(), cap, rotation as u64, order);
        tree.body(answers, 0, |bytes| {
            for &at in order.iter() {
                bytes.extend_from_slice(&QNAME_POINTER);
                record_head(bytes, record_type, ttl, N);
                bytes.extend_from_slice(&addresses[at]);
            }
        });
    }
}
