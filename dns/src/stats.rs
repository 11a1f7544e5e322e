//! Query counters the server keeps: queries by zone, type and response code, and an answer
//! latency histogram. Plain atomics, so that this crate stays free of any metrics library: the
//! caller reads a [`StatsSnapshot`] through [`crate::Handle::stats`] and exports it as it likes.
//!
//! Classification is pure and works on the wire form (the UDP fast path never parses a query
//! into hickory types); the slow path builds the same wire name from hickory's labels.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency histogram's buckets, in seconds (an implicit `+Inf` follows).
/// A fast-path answer takes a few microseconds; a forwarded one up to the 2 s upstream timeout.
pub const LATENCY_BUCKETS_SECONDS: [f64; 12] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.01, 0.05, 0.25, 1.0, 2.5,
];

/// The query types counted by name; every other type counts as `other`.
const QTYPES: [(u16, &str); 10] = [
    (1, "A"),
    (28, "AAAA"),
    (33, "SRV"),
    (6, "SOA"),
    (2, "NS"),
    (16, "TXT"),
    (12, "PTR"),
    (5, "CNAME"),
    (255, "ANY"),
    (0, "other"),
];
/// The response codes counted by name (their 4-bit header values); others count as `other`.
const RCODES: [(u8, &str); 7] = [
    (0, "NOERROR"),
    (1, "FORMERR"),
    (2, "SERVFAIL"),
    (3, "NXDOMAIN"),
    (4, "NOTIMP"),
    (5, "REFUSED"),
    (255, "other"),
];
/// The zone label of a query under none of the served zones.
pub const OUTSIDE_ZONES: &str = "other";
const ZONES: usize = 3;
const CELLS: usize = ZONES * QTYPES.len() * RCODES.len();

/// The counters of one server. Shared by its UDP loops, its TCP handler and its [`Handle`]s.
///
/// [`Handle`]: crate::Handle
#[derive(Debug)]
pub(crate) struct QueryStats {
    /// The served zones in wire form, lowercase: index 0 the zone, 1 the clusterset zone.
    zones: Vec<(String, Vec<u8>)>,
    counts: Vec<AtomicU64>,
    buckets: Vec<AtomicU64>,
    latency_sum_nanos: AtomicU64,
}

/// Queries answered with one (zone, type, rcode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryCount {
    /// The zone apex the name is under (`svc.global`), or [`OUTSIDE_ZONES`].
    pub zone: String,
    /// `A`, `AAAA`, `SRV`, ... or `other`.
    pub qtype: &'static str,
    /// `NOERROR`, `NXDOMAIN`, ... or `other`.
    pub rcode: &'static str,
    pub count: u64,
}

/// A reading of the counters. Counts only grow while the server runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatsSnapshot {
    /// Every non-zero (zone, type, rcode) count.
    pub queries: Vec<QueryCount>,
    /// Answers per latency bucket, not cumulative: `(upper bound in seconds, count)`, the
    /// bounds of [`LATENCY_BUCKETS_SECONDS`] then `f64::INFINITY`.
    pub latency_buckets: Vec<(f64, u64)>,
    /// Sum of all answer latencies, in seconds.
    pub latency_sum_seconds: f64,
    /// Answers timed (the sum of the buckets).
    pub latency_count: u64,
}

impl StatsSnapshot {
    /// Total queries counted for `zone` (all types and codes).
    pub fn queries_in(&self, zone: &str) -> u64 {
        self.queries
            .iter()
            .filter(|q| q.zone == zone)
            .map(|q| q.count)
            .sum()
    }
}

impl QueryStats {
    /// Counters for a server of these zone apexes (`svc.global`, `clusterset.local`).
    pub(crate) fn new(zone: &str, clusterset_zone: Option<&str>) -> Self {
        let zones = std::iter::once(zone)
            .chain(clusterset_zone)
            .map(|z| (z.trim_end_matches('.').to_ascii_lowercase(), wire_name(z)))
            .collect();
        Self {
            zones,
            counts: (0..CELLS).map(|_| AtomicU64::new(0)).collect(),
            buckets: (0..=LATENCY_BUCKETS_SECONDS.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            latency_sum_nanos: AtomicU64::new(0),
        }
    }

    /// Counts one answered query from its wire forms: the question of `query` and the rcode
    /// of `response` (a query whose question cannot be read counts as type `other` outside
    /// the zones).
    pub(crate) fn record_wire(&self, query: &[u8], response: &[u8], took: Duration) {
        let (zone, qtype) = match question(query) {
            Some((name, qtype)) => (self.zone_index(name), qtype),
            None => (ZONES - 1, 0),
        };
        let rcode = response.get(3).map_or(255, |b| b & 0x0f);
        self.record(zone, qtype, rcode, took);
    }

    /// Counts one answered query of the name with these labels (in order, without the root).
    pub(crate) fn record_labels<'a>(
        &self,
        labels: impl Iterator<Item = &'a [u8]>,
        qtype: u16,
        rcode: u8,
        took: Duration,
    ) {
        let mut name = Vec::with_capacity(64);
        for label in labels {
            name.push(u8::try_from(label.len()).unwrap_or(u8::MAX));
            name.extend_from_slice(label);
        }
        name.push(0);
        self.record(self.zone_index(&name), qtype, rcode, took);
    }

    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        let mut queries = Vec::new();
        for (i, count) in self.counts.iter().enumerate() {
            let count = count.load(Ordering::Relaxed);
            if count == 0 {
                continue;
            }
            let zone = i / (QTYPES.len() * RCODES.len());
            let qtype = (i / RCODES.len()) % QTYPES.len();
            let rcode = i % RCODES.len();
            queries.push(QueryCount {
                zone: self
                    .zones
                    .get(zone)
                    .map_or(OUTSIDE_ZONES.to_owned(), |(z, _)| z.clone()),
                qtype: QTYPES[qtype].1,
                rcode: RCODES[rcode].1,
                count,
            });
        }
        let latency_buckets: Vec<(f64, u64)> = LATENCY_BUCKETS_SECONDS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect();
        StatsSnapshot {
            latency_count: latency_buckets.iter().map(|(_, c)| c).sum(),
            latency_buckets,
            latency_sum_seconds: self.latency_sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            queries,
        }
    }

    fn record(&self, zone: usize, qtype: u16, rcode: u8, took: Duration) {
        let t = QTYPES
            .iter()
            .position(|(v, _)| *v == qtype)
            .unwrap_or(QTYPES.len() - 1);
        let r = RCODES
            .iter()
            .position(|(v, _)| *v == rcode)
            .unwrap_or(RCODES.len() - 1);
        let cell = (zone * QTYPES.len() + t) * RCODES.len() + r;
        if let Some(c) = self.counts.get(cell) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let seconds = took.as_secs_f64();
        let bucket = LATENCY_BUCKETS_SECONDS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS_SECONDS.len());
        if let Some(b) = self.buckets.get(bucket) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.latency_sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Which served zone the wire name lies under: 0, 1, or `ZONES - 1` for none.
    fn zone_index(&self, name: &[u8]) -> usize {
        // Try every label boundary of the name as the start of a zone apex.
        let mut at = 0;
        while at < name.len() {
            let rest = &name[at..];
            for (i, (_, zone)) in self.zones.iter().enumerate() {
                if rest.len() == zone.len() && rest.eq_ignore_ascii_case(zone) {
                    return i;
                }
            }
            let len = usize::from(name[at]);
            if len == 0 {
                break;
            }
            at += 1 + len;
        }
        ZONES - 1
    }
}

/// The question name (wire form, up to and including the root label) and type of a query,
/// if its header says one question and the name is uncompressed and well formed.
fn question(query: &[u8]) -> Option<(&[u8], u16)> {
    if query.get(4..6)? != [0, 1] {
        return None;
    }
    let mut at = 12;
    loop {
        let len = usize::from(*query.get(at)?);
        if len == 0 {
            break;
        }
        // A compression pointer (or the reserved 0x40/0x80 forms) has no place in a question.
        if len > 63 {
            return None;
        }
        at += 1 + len;
    }
    let name = query.get(12..=at)?;
    let qtype = query.get(at + 1..at + 3)?;
    Some((name, u16::from_be_bytes([qtype[0], qtype[1]])))
}

/// `svc.global` as wire labels, lowercase, with the root label.
fn wire_name(zone: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in zone.split('.').filter(|l| !l.is_empty()) {
        out.push(u8::try_from(label.len()).unwrap_or(u8::MAX));
        out.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
    }
    out.push(0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend(wire_name(name));
        q.extend(qtype.to_be_bytes());
        q.extend([0, 1]);
        q
    }

    fn response(rcode: u8) -> Vec<u8> {
        vec![0x12, 0x34, 0x84, rcode, 0, 1, 0, 0, 0, 0, 0, 0]
    }

    #[test]
    fn queries_are_counted_by_zone_type_and_rcode() {
        let stats = QueryStats::new("svc.global.", Some("clusterset.local"));
        let ms = Duration::from_millis(1);
        stats.record_wire(&query("web.shop.SVC.global", 1), &response(0), ms);
        stats.record_wire(&query("web.shop.svc.global", 1), &response(0), ms);
        stats.record_wire(&query("nope.shop.svc.global", 28), &response(3), ms);
        stats.record_wire(
            &query("web.shop.svc.clusterset.local", 33),
            &response(0),
            ms,
        );
        stats.record_wire(&query("example.com", 1), &response(5), ms);
        // "global" alone is not under svc.global, nor is a name that merely ends like it.
        stats.record_wire(&query("xsvc.global", 1), &response(5), ms);
        stats.record_wire(&[1, 2, 3], &[], ms);
        stats.record_labels(
            [&b"web"[..], b"shop", b"svc", b"global"].into_iter(),
            16,
            0,
            Duration::from_secs(3),
        );
        let snap = stats.snapshot();
        let find = |zone: &str, qtype: &str, rcode: &str| {
            snap.queries
                .iter()
                .find(|q| q.zone == zone && q.qtype == qtype && q.rcode == rcode)
                .map(|q| q.count)
        };
        assert_eq!(find("svc.global", "A", "NOERROR"), Some(2));
        assert_eq!(find("svc.global", "AAAA", "NXDOMAIN"), Some(1));
        assert_eq!(find("svc.global", "TXT", "NOERROR"), Some(1));
        assert_eq!(find("clusterset.local", "SRV", "NOERROR"), Some(1));
        assert_eq!(find("other", "A", "REFUSED"), Some(2));
        assert_eq!(find("other", "other", "other"), Some(1));
        assert_eq!(snap.queries_in("svc.global"), 4);
        assert_eq!(snap.latency_count, 8);
        assert_eq!(snap.latency_buckets.last(), Some(&(f64::INFINITY, 1)));
        let one_ms = snap
            .latency_buckets
            .iter()
            .find(|(bound, _)| *bound == 0.001)
            .map(|(_, c)| *c);
        assert_eq!(one_ms, Some(7));
        assert!((snap.latency_sum_seconds - 3.007).abs() < 1e-9);
    }
}
