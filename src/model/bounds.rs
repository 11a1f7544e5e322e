//! The bound of every field that crosses the broker, and the pure checks the broker applies to
//! a Hello's [`ClusterInfo`] and to each published [`Export`] before anything of them is stored
//! or forwarded. An out-of-bounds field is refused with a [`Violation`] (sent back to the
//! gateway as `RejectReason::OutOfBounds`); the whole message is refused, never a part of it.
//!
//! | field | bound |
//! |---|---|
//! | cluster id | RFC 1123 label starting with a letter, ≤ 63 (the type, `ClusterId`) |
//! | region, zone (Hello) | RFC 1123 label, ≤ 63 |
//! | WireGuard endpoint port | 1–65535 |
//! | CIDRs | at most [`MAX_CIDRS`] |
//! | namespace | RFC 1123 label, ≤ 63; service name: RFC 1035 label (`ServiceKey::new`) |
//! | cluster IPs, IP families | at most 2 (one per family) |
//! | ports | at most [`MAX_PORTS`]; each 1–65535 |
//! | port name | IANA_SVC_NAME as Kubernetes checks it: ≤ 15, `[a-z0-9-]`, a letter, no `--`, no `-` at either end |
//! | appProtocol | Kubernetes qualified name (`[prefix/]name`, name ≤ 63, prefix a DNS subdomain ≤ 253) |
//! | endpoint hostname | RFC 1123 label, ≤ 63 |
//! | endpoint zone | Kubernetes label value, ≤ 63 |
//! | internalTrafficPolicy, trafficDistribution | Kubernetes label value, ≤ 63 |
//! | session affinity timeout | 1–86400 s (Kubernetes) |
//! | export time | 0 – 253402300799 (year 9999), Unix seconds |
//! | exported labels | at most [`MAX_LABELS`]; keys qualified names, values label values (≤ 63) |
//! | exported annotations | keys qualified names; keys and values together ≤ 256 KiB (Kubernetes' total) |
//! | every DNS name served | ≤ 253 octets with the longer default zone parent, `svc.clusterset.local`: `<host>.<cluster>.<svc>.<ns>.svc.clusterset.local` and `_<port>._<proto>.<svc>.<ns>.svc.clusterset.local` |
//!
//! Counts of services and endpoints per cluster are the broker's quota (`StateConfig`), not
//! here. A gateway serving a zone longer than the default has less room than this check
//! assumes.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{ClusterInfo, Export, ServiceKey, check_dns_label};

/// Most CIDRs one cluster may announce.
pub const MAX_CIDRS: usize = 256;
/// Most ports one service may export (Kubernetes sets no number; a Service with more is
/// unheard of, and each costs an SRV name per cluster in DNS).
pub const MAX_PORTS: usize = 256;
/// Most exported labels one export may carry.
pub const MAX_LABELS: usize = 256;
/// Kubernetes' limit on a label value and on the name part of a qualified name.
pub const MAX_LABEL_VALUE: usize = 63;
/// Kubernetes' limit on all annotations of an object together (keys and values).
pub const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;
/// The longest DNS name (RFC 1035 §2.3.4, as text without the final dot).
pub const MAX_FQDN: usize = 253;
/// The longer of the default zones' service parents, which the FQDN bound is checked with.
pub const FQDN_PARENT: &str = "svc.clusterset.local";
/// The latest export time accepted: 9999-12-31T23:59:59Z.
pub const MAX_EXPORTED_AT: i64 = 253_402_300_799;
/// Kubernetes' bounds on `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const MAX_AFFINITY_TIMEOUT: i32 = 86_400;
/// How much of an offending value a [`Violation`] carries back.
const CLIP: usize = 64;

/// A field of a message out of its bound.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub struct Violation {
    /// The export the field belongs to (`None` for a Hello's cluster info).
    pub service: Option<ServiceKey>,
    pub field: Field,
    pub problem: Problem,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(service) = &self.service {
            write!(f, "service {service}: ")?;
        }
        write!(f, "{} {}", self.field, self.problem)
    }
}

/// Which field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Field {
    Region,
    Zone,
    WgEndpointPort,
    Cidrs,
    ClusterIps,
    IpFamilies,
    Ports,
    Port,
    PortName,
    AppProtocol,
    Hostname,
    EndpointZone,
    InternalTrafficPolicy,
    TrafficDistribution,
    SessionAffinityTimeout,
    ExportedAt,
    Labels,
    LabelKey,
    LabelValue,
    AnnotationKey,
    Annotations,
    DnsName,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::Region => "region",
            Field::Zone => "zone",
            Field::WgEndpointPort => "wireguard endpoint port",
            Field::Cidrs => "cidrs",
            Field::ClusterIps => "cluster ips",
            Field::IpFamilies => "ip families",
            Field::Ports => "ports",
            Field::Port => "port",
            Field::PortName => "port name",
            Field::AppProtocol => "appProtocol",
            Field::Hostname => "endpoint hostname",
            Field::EndpointZone => "endpoint zone",
            Field::InternalTrafficPolicy => "internalTrafficPolicy",
            Field::TrafficDistribution => "trafficDistribution",
            Field::SessionAffinityTimeout => "session affinity timeout",
            Field::ExportedAt => "export time",
            Field::Labels => "exported labels",
            Field::LabelKey => "exported label key",
            Field::LabelValue => "exported label value",
            Field::AnnotationKey => "exported annotation key",
            Field::Annotations => "exported annotations",
            Field::DnsName => "dns name",
        })
    }
}

/// What is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Problem {
    /// Longer than allowed (octets).
    TooLong { len: usize, max: usize },
    /// Not of the required form; `value` is the start of it (at most 64 characters).
    Malformed { value: String },
    /// A number outside `min..=max`.
    OutOfRange { value: i64, min: i64, max: i64 },
    /// More items than allowed.
    TooMany { count: usize, max: usize },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::TooLong { len, max } => write!(f, "is {len} octets long, over {max}"),
            Problem::Malformed { value } => write!(
                f,
                "\"{}\" is not of the required form",
                Escaped(clip(value))
            ),
            Problem::OutOfRange { value, min, max } => {
                write!(f, "{value} is outside {min}..={max}")
            }
            Problem::TooMany { count, max } => write!(f, "has {count} items, over {max}"),
        }
    }
}

/// A string from a peer as it may be logged: control characters (newlines included), the
/// Unicode line and paragraph separators and bidirectional overrides escaped as `\n`,
/// `\u{…}`, and backslashes doubled, so that one value stays one line and reads as what it
/// is. Valid names (every bounded field) display unchanged.
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write;
        for c in self.0.chars() {
            let risky = c.is_control()
                || c == '\\'
                || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
            if risky {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// The first [`CLIP`] characters of `value`.
fn clip(value: &str) -> &str {
    match value.char_indices().nth(CLIP) {
        Some((at, _)) => &value[..at],
        None => value,
    }
}

/// `key` with each part cut to what a refusal carries back, so that refusing a 4 MB name does
/// not send 4 MB back.
pub fn clipped_key(key: &ServiceKey) -> ServiceKey {
    ServiceKey {
        namespace: clip(&key.namespace).to_owned(),
        name: clip(&key.name).to_owned(),
    }
}

/// Checks a Hello's cluster info (the id is checked by its type and the certificate).
pub fn check_cluster(info: &ClusterInfo) -> Result<(), Violation> {
    let fail = |field, problem| Violation {
        service: None,
        field,
        problem,
    };
    for (field, value) in [(Field::Region, &info.region), (Field::Zone, &info.zone)] {
        if let Some(value) = value {
            label(value).map_err(|p| fail(field, p))?;
        }
    }
    range(i64::from(info.wg_endpoint.port()), 1, 65_535)
        .map_err(|p| fail(Field::WgEndpointPort, p))?;
    count(info.cidrs.len(), MAX_CIDRS).map_err(|p| fail(Field::Cidrs, p))?;
    Ok(())
}

/// Checks one export of `cluster` (whose service key is already known valid).
pub fn check_export(cluster: &str, export: &Export) -> Result<(), Violation> {
    let fail = |field, problem| Violation {
        service: Some(export.service.clone()),
        field,
        problem,
    };
    count(export.cluster_ips.len(), 2).map_err(|p| fail(Field::ClusterIps, p))?;
    count(export.ports.len(), MAX_PORTS).map_err(|p| fail(Field::Ports, p))?;
    let mut longest_port = 0;
    for port in &export.ports {
        range(i64::from(port.port), 1, 65_535).map_err(|p| fail(Field::Port, p))?;
        if let Some(name) = &port.name {
            port_name(name).map_err(|p| fail(Field::PortName, p))?;
            longest_port = longest_port.max(name.len());
        }
        if let Some(app) = &port.app_protocol {
            qualified_name(app).map_err(|p| fail(Field::AppProtocol, p))?;
        }
    }
    let mut longest_host = 0;
    for endpoint in &export.endpoints {
        match &endpoint.hostname {
            Some(hostname) => {
                label(hostname).map_err(|p| fail(Field::Hostname, p))?;
                longest_host = longest_host.max(hostname.len());
            }
            // The gateway names it after its address (`10-1-2-3`, `fd00--1`).
            None => longest_host = longest_host.max(endpoint.address.to_string().len()),
        }
        if let Some(zone) = &endpoint.zone {
            label_value(zone).map_err(|p| fail(Field::EndpointZone, p))?;
        }
    }
    // The longest names served for it: `<host>.<cluster>.<svc>.<ns>.<parent>` and
    // `_<port>._sctp.<svc>.<ns>.<parent>`.
    let service = export.service.name.len() + 1 + export.service.namespace.len() + 1;
    let host = longest_host + 1 + cluster.len() + 1;
    let srv = if longest_port > 0 {
        longest_port + 2 + "_sctp.".len()
    } else {
        0
    };
    let fqdn = host.max(srv) + service + FQDN_PARENT.len();
    if fqdn > MAX_FQDN {
        return Err(fail(
            Field::DnsName,
            Problem::TooLong {
                len: fqdn,
                max: MAX_FQDN,
            },
        ));
    }
    let props = &export.props;
    count(props.ip_families.len(), 2).map_err(|p| fail(Field::IpFamilies, p))?;
    for (field, value) in [
        (Field::InternalTrafficPolicy, &props.internal_traffic_policy),
        (Field::TrafficDistribution, &props.traffic_distribution),
    ] {
        if let Some(value) = value {
            label_value(value).map_err(|p| fail(field, p))?;
        }
    }
    if let super::SessionAffinity::ClientIp {
        timeout_seconds: Some(timeout),
    } = props.session_affinity
    {
        range(i64::from(timeout), 1, i64::from(MAX_AFFINITY_TIMEOUT))
            .map_err(|p| fail(Field::SessionAffinityTimeout, p))?;
    }
    if let Some(at) = props.exported_at {
        range(at, 0, MAX_EXPORTED_AT).map_err(|p| fail(Field::ExportedAt, p))?;
    }
    count(props.exported_labels.len(), MAX_LABELS).map_err(|p| fail(Field::Labels, p))?;
    for (key, value) in &props.exported_labels {
        qualified_name(key).map_err(|p| fail(Field::LabelKey, p))?;
        if !value.is_empty() {
            label_value(value).map_err(|p| fail(Field::LabelValue, p))?;
        }
    }
    let mut total = 0usize;
    for (key, value) in &props.exported_annotations {
        qualified_name(key).map_err(|p| fail(Field::AnnotationKey, p))?;
        total = total.saturating_add(key.len()).saturating_add(value.len());
    }
    if total > MAX_ANNOTATIONS_BYTES {
        return Err(fail(
            Field::Annotations,
            Problem::TooLong {
                len: total,
                max: MAX_ANNOTATIONS_BYTES,
            },
        ));
    }
    Ok(())
}

fn malformed(value: &str) -> Problem {
    Problem::Malformed {
        value: clip(value).to_owned(),
    }
}

fn too_long(value: &str, max: usize) -> Result<(), Problem> {
    if value.len() > max {
        return Err(Problem::TooLong {
            len: value.len(),
            max,
        });
    }
    Ok(())
}

fn range(value: i64, min: i64, max: i64) -> Result<(), Problem> {
    if !(min..=max).contains(&value) {
        return Err(Problem::OutOfRange { value, min, max });
    }
    Ok(())
}

fn count(count: usize, max: usize) -> Result<(), Problem> {
    if count > max {
        return Err(Problem::TooMany { count, max });
    }
    Ok(())
}

/// An RFC 1123 label: `[a-z0-9-]`, ≤ 63, no `-` at either end.
fn label(value: &str) -> Result<(), Problem> {
    too_long(value, MAX_LABEL_VALUE)?;
    check_dns_label("", value, false).map_err(|_| malformed(value))
}

/// IANA_SVC_NAME (RFC 6335 §5.1) as Kubernetes validates port names.
fn port_name(value: &str) -> Result<(), Problem> {
    too_long(value, 15)?;
    let bytes = value.as_bytes();
    let ok = !bytes.is_empty()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.iter().any(u8::is_ascii_lowercase)
        && !value.starts_with('-')
        && !value.ends_with('-')
        && !value.contains("--");
    if ok { Ok(()) } else { Err(malformed(value)) }
}

/// A Kubernetes label value (non-empty here): ≤ 63, `[A-Za-z0-9._-]`, alphanumeric at both
/// ends.
fn label_value(value: &str) -> Result<(), Problem> {
    too_long(value, MAX_LABEL_VALUE)?;
    let bytes = value.as_bytes();
    let inner = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    let ok = match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric() && bytes.iter().all(inner)
        }
        _ => false,
    };
    if ok { Ok(()) } else { Err(malformed(value)) }
}

/// A Kubernetes qualified name: an optional DNS-subdomain prefix (≤ 253) and `/`, then a name
/// of the label-value form (≤ 63).
fn qualified_name(value: &str) -> Result<(), Problem> {
    too_long(value, MAX_FQDN + 1 + MAX_LABEL_VALUE)?;
    let (prefix, name) = match value.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, value),
    };
    if let Some(prefix) = prefix {
        too_long(prefix, MAX_FQDN)?;
        let subdomain = !prefix.is_empty()
            && prefix
                .split('.')
                .all(|part| check_dns_label("", part, false).is_ok());
        if !subdomain {
            return Err(malformed(value));
        }
    }
    label_value(name).map_err(|_| malformed(value))
}

#[cfg(test)]
mod tests;
