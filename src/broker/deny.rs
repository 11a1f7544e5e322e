//! The revocation deny list: which clusters and which certificates the broker refuses.
//!
//! The file (`causeway broker --deny-list PATH`) holds one entry per line; `#` starts a
//! comment:
//!
//! ```text
//! cluster:c3                       # every certificate of cluster c3
//! serial:4f:0a:9c:...              # one certificate, by serial (hex, colons optional)
//! ```
//!
//! Revoking by serial is how an old certificate is retired after `causeway certs rotate`
//! (which prints both serials). Pure: parsing and matching. The shell (`broker/server.rs`)
//! re-reads the file when it changes, cuts off sessions the new list denies and refuses their
//! reconnects.

use std::collections::BTreeSet;
use std::fmt;

use crate::model::{ClusterId, IdError, Locality};

/// Who a connection is, from its verified certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub cluster: ClusterId,
    /// The certificate's serial number, lowercase hex without separators.
    pub serial: String,
    /// The region and zone the certificate vouches for (`model::locality`).
    pub locality: Locality,
}

/// Why a peer is denied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    Cluster(ClusterId),
    Serial(String),
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denied::Cluster(id) => write!(f, "cluster {id} is revoked"),
            Denied::Serial(serial) => write!(f, "certificate serial {serial} is revoked"),
        }
    }
}

/// A line of the deny list that could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DenyListError {
    #[error("line {line}: expected cluster:ID or serial:HEX, got {text:?}")]
    Syntax { line: usize, text: String },
    #[error("line {line}: invalid cluster id")]
    Cluster {
        line: usize,
        #[source]
        source: IdError,
    },
    #[error("line {line}: serial {text:?} is not hexadecimal")]
    Serial { line: usize, text: String },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DenyList {
    clusters: BTreeSet<ClusterId>,
    serials: BTreeSet<String>,
}

impl DenyList {
    /// Parses the file's text; any bad line refuses the whole list (the caller keeps the last
    /// good one), so a typo never silently un-revokes anyone.
    pub fn parse(text: &str) -> Result<Self, DenyListError> {
        let mut list = Self::default();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let entry = raw.split('#').next().unwrap_or("").trim();
            if entry.is_empty() {
                continue;
            }
            match entry.split_once(':') {
                Some(("cluster", id)) => {
                    let id = ClusterId::new(id.trim())
                        .map_err(|source| DenyListError::Cluster { line, source })?;
                    list.clusters.insert(id);
                }
                Some(("serial", hex)) => {
                    let serial =
                        normalize_serial(hex.trim()).ok_or_else(|| DenyListError::Serial {
                            line,
                            text: hex.trim().to_owned(),
                        })?;
                    list.serials.insert(serial);
                }
                _ => {
                    return Err(DenyListError::Syntax {
                        line,
                        text: entry.to_owned(),
                    });
                }
            }
        }
        Ok(list)
    }

    /// Whether `peer` is refused, and why.
    pub fn denies(&self, peer: &PeerIdentity) -> Option<Denied> {
        if self.clusters.contains(&peer.cluster) {
            return Some(Denied::Cluster(peer.cluster.clone()));
        }
        self.serials
            .contains(&peer.serial)
            .then(|| Denied::Serial(peer.serial.clone()))
    }

    pub fn is_empty(&self) -> bool {
        self.clusters.is_empty() && self.serials.is_empty()
    }
}

/// Lowercase hex without colons and leading zero bytes (as x509 tools print serials variously).
pub fn normalize_serial(hex: &str) -> Option<String> {
    let digits: String = hex
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let trimmed = digits.trim_start_matches('0');
    Some(if trimmed.is_empty() { "0" } else { trimmed }.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(cluster: &str, serial: &str) -> PeerIdentity {
        PeerIdentity {
            cluster: ClusterId::new(cluster).unwrap(),
            serial: serial.into(),
            locality: Locality::default(),
        }
    }

    #[test]
    fn deny_list_matches_clusters_and_serials() {
        let list = DenyList::parse(
            "# revoked after the incident\n\ncluster:c3\nserial: 00:4F:0a  # c1's old cert\n",
        )
        .unwrap();
        let table = [
            ("c1", "4f0a", Some(Denied::Serial("4f0a".into()))),
            ("c1", "4f0b", None),
            ("c2", "1", None),
            (
                "c3",
                "1",
                Some(Denied::Cluster(ClusterId::new("c3").unwrap())),
            ),
        ];
        for (cluster, serial, expected) in table {
            assert_eq!(
                list.denies(&peer(cluster, serial)),
                expected,
                "{cluster} {serial}"
            );
        }
        assert!(DenyList::parse("# nothing\n").unwrap().is_empty());
    }

    #[test]
    fn bad_deny_list_lines_are_named() {
        let table = [
            (
                "c3",
                DenyListError::Syntax {
                    line: 1,
                    text: "c3".into(),
                },
            ),
            (
                "cluster:c1\nserial:xyz",
                DenyListError::Serial {
                    line: 2,
                    text: "xyz".into(),
                },
            ),
            (
                "serial:",
                DenyListError::Serial {
                    line: 1,
                    text: "".into(),
                },
            ),
        ];
        for (text, expected) in table {
            assert_eq!(DenyList::parse(text), Err(expected), "{text:?}");
        }
        assert!(matches!(
            DenyList::parse("cluster:Bad_Id"),
            Err(DenyListError::Cluster { line: 1, .. })
        ));
    }

    #[test]
    fn serials_normalize_case_colons_and_leading_zeros() {
        assert_eq!(normalize_serial("00:AB:01").as_deref(), Some("ab01"));
        assert_eq!(normalize_serial("ab01").as_deref(), Some("ab01"));
        assert_eq!(normalize_serial("00").as_deref(), Some("0"));
        assert_eq!(normalize_serial("g1"), None);
    }
}
