//! The sync protocol's messages and their framing.
//!
//! One bidirectional QUIC stream per session carries frames: a `u32` big-endian length, then
//! that many bytes of postcard. The gateway sends [`ClientMessage`]s, the broker
//! [`BrokerMessage`]s. A frame longer than [`MAX_FRAME_LEN`] is refused before anything is
//! allocated for it. Owns no I/O: [`encode`] makes a frame, [`Decoder`] takes bytes as they
//! arrive and yields whole messages. The shells are `sync/quic.rs` and `broker/server.rs`.

use bytes::{Buf, BytesMut};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::model::{ClusterId, ClusterInfo, Export, ServiceKey};

/// The largest frame either side accepts: 16 MiB holds a snapshot of ~50k exports with a few
/// endpoints each; anything bigger is a bug or an attack.
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// Bytes of the length prefix.
const HEADER_LEN: usize = 4;

/// Gateway → broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientMessage {
    /// The first message of every session: who the cluster is, and where its view stands.
    Hello(Hello),
    /// The FULL set of the cluster's exports; the broker diffs it against what it holds.
    Publish(Publish),
    /// The gateway has applied everything up to `revision`.
    Ack { revision: u64 },
}

/// Broker → gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BrokerMessage {
    /// The whole clusterset, replacing the gateway's view.
    Snapshot(Snapshot),
    /// Changes on top of the gateway's view; see [`Delta`].
    Delta(Delta),
    /// The broker refused the last Hello or Publish; nothing of it was applied.
    Rejected { reason: RejectReason },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub cluster: ClusterInfo,
    /// Where the gateway's view stands, so the broker can send only what it missed.
    pub resume: Option<Resume>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    pub epoch: u64,
    pub revision: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publish {
    pub cluster: ClusterId,
    pub exports: Vec<Export>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub epoch: u64,
    pub revision: u64,
    pub clusters: Vec<ClusterInfo>,
    /// Exports of clusters that are not [`Snapshot::withheld`].
    pub exports: Vec<(ClusterId, Export)>,
    /// Clusters whose lease ran out: registered, but their exports are withheld until they
    /// reconnect.
    pub withheld: Vec<ClusterId>,
}

/// `changes` are the revisions `revision - changes.len() + 1 ..= revision`, in order: a
/// gateway at revision `revision - changes.len()` of the same `epoch` can apply it. An empty
/// delta says "you are up to date at `revision`".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    pub epoch: u64,
    pub revision: u64,
    pub changes: Vec<Change>,
}

impl Delta {
    /// Appends `next` if it follows on from this delta (same epoch, its changes start right
    /// after this one's revision), so a lagging receiver gets one frame instead of many;
    /// otherwise hands `next` back.
    pub fn append(&mut self, next: Delta) -> Result<(), Delta> {
        let follows = next.epoch == self.epoch
            && next.revision.checked_sub(next.changes.len() as u64) == Some(self.revision);
        if !follows {
            return Err(next);
        }
        self.revision = next.revision;
        self.changes.extend(next.changes);
        Ok(())
    }

    /// One Delta per change, in order: for a merged Delta too large for one frame.
    pub fn split(self) -> impl Iterator<Item = Delta> {
        let Delta {
            epoch,
            revision,
            changes,
        } = self;
        let base = revision - changes.len() as u64;
        changes
            .into_iter()
            .zip(base + 1..)
            .map(move |(change, revision)| Delta {
                epoch,
                revision,
                changes: vec![change],
            })
    }
}

/// Merges each run of consecutive Deltas that follow on from each other into one; other
/// messages and their order are kept.
pub fn coalesce(messages: impl IntoIterator<Item = BrokerMessage>) -> Vec<BrokerMessage> {
    let mut out: Vec<BrokerMessage> = vec![];
    for message in messages {
        let message = match (out.last_mut(), message) {
            (Some(BrokerMessage::Delta(last)), BrokerMessage::Delta(next)) => {
                match last.append(next) {
                    Ok(()) => continue,
                    Err(next) => BrokerMessage::Delta(next),
                }
            }
            (_, message) => message,
        };
        out.push(message);
    }
    out
}

/// One change to the clusterset; each advances the broker's revision by one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    UpsertCluster(ClusterInfo),
    /// Explicit removal of a cluster and all its exports.
    RemoveCluster(ClusterId),
    UpsertExport {
        cluster: ClusterId,
        export: Export,
    },
    RemoveExport {
        cluster: ClusterId,
        service: ServiceKey,
    },
    /// The cluster's lease ran out (its gateway has been gone for the lease time): gateways drop
    /// its exports from their view. The broker keeps them, for [`Change::RestoreCluster`].
    WithholdCluster(ClusterId),
    /// A withheld cluster is back: its exports as the broker holds them, replacing any.
    RestoreCluster {
        cluster: ClusterId,
        exports: Vec<Export>,
    },
}

/// Why the broker refused a message (also `broker::Rejected`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RejectReason {
    #[error("certificate is for cluster {cert} but the message claims cluster {claimed}")]
    ForeignCluster { cert: ClusterId, claimed: ClusterId },
    #[error("service {service} is not a valid namespace/name")]
    InvalidService { service: ServiceKey },
    #[error("service {service} appears more than once in one publish")]
    DuplicateService { service: ServiceKey },
    #[error("publish of {count} services exceeds the limit of {max} per cluster")]
    TooManyServices { count: usize, max: usize },
    #[error("publish of {count} endpoints exceeds the limit of {max} per cluster")]
    TooManyEndpoints { count: usize, max: usize },
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    MessageTooLarge { len: usize, max: usize },
    /// A field out of its documented bound (`model::bounds`). Appended: postcard encodes
    /// variants by index.
    #[error("{0}")]
    OutOfBounds(crate::model::bounds::Violation),
    /// The cluster's address claims (CIDRs, endpoint) or an exported address break the
    /// clusterset's address plan (`model::plan`).
    #[error("address plan: {0}")]
    AddressPlan(crate::model::plan::PlanRefusal),
}

/// A frame that could not be made or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: usize, max: usize },
    #[error("malformed message")]
    Malformed(#[source] postcard::Error),
    #[error("message could not be serialized")]
    Serialize(#[source] postcard::Error),
}

/// One frame: length prefix and postcard body.
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, CodecError> {
    let mut frame = vec![0u8; HEADER_LEN];
    frame = postcard::to_extend(message, frame).map_err(CodecError::Serialize)?;
    let len = frame.len() - HEADER_LEN;
    if len > MAX_FRAME_LEN {
        return Err(CodecError::FrameTooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    let prefix = u32::try_from(len).expect("len <= MAX_FRAME_LEN fits in u32");
    frame[..HEADER_LEN].copy_from_slice(&prefix.to_be_bytes());
    Ok(frame)
}

/// Reassembles frames from bytes in whatever pieces the stream delivers them.
///
/// Call [`Decoder::extend`] with each chunk, then [`Decoder::decode`] until it returns
/// `Ok(None)`. A frame longer than the limit is refused with [`CodecError::FrameTooLarge`] from
/// its header, and its body is then skipped as it arrives, so decoding may continue. After any
/// other error the stream is unusable: close it.
#[derive(Debug)]
pub struct Decoder {
    buf: BytesMut,
    max: usize,
    /// Bytes of a refused frame still to be discarded.
    skip: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::with_max(MAX_FRAME_LEN)
    }
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder that refuses frames longer than `max` bytes (at most [`MAX_FRAME_LEN`]).
    pub fn with_max(max: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max: max.min(MAX_FRAME_LEN),
            skip: 0,
        }
    }

    pub fn extend(&mut self, bytes: &[u8]) {
        let dropped = self.skip.min(bytes.len());
        self.skip -= dropped;
        self.buf.extend_from_slice(&bytes[dropped..]);
    }

    /// The next whole message, `Ok(None)` if more bytes are needed.
    pub fn decode<T: DeserializeOwned>(&mut self) -> Result<Option<T>, CodecError> {
        if self.skip > 0 {
            return Ok(None);
        }
        let Some(header) = self.buf.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let len =
            u32::from_be_bytes(header.try_into().expect("slice of HEADER_LEN bytes")) as usize;
        if len > self.max {
            self.buf.advance(HEADER_LEN);
            let here = len.min(self.buf.len());
            self.buf.advance(here);
            self.skip = len - here;
            return Err(CodecError::FrameTooLarge { len, max: self.max });
        }
        if self.buf.len() < HEADER_LEN + len {
            // No reservation for the declared length: memory grows only with bytes received.
            return Ok(None);
        }
        self.buf.advance(HEADER_LEN);
        let body = self.buf.split_to(len);
        postcard::from_bytes(&body)
            .map(Some)
            .map_err(CodecError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::cluster;

    fn export(name: &str) -> Export {
        crate::model::fixtures::export(name, "10.101.0.10")
    }
    use proptest::prelude::*;

    fn all_messages() -> (Vec<ClientMessage>, Vec<BrokerMessage>) {
        let c1 = ClusterId::new("c1").unwrap();
        let client = vec![
            ClientMessage::Hello(Hello {
                cluster: cluster("c1"),
                resume: None,
            }),
            ClientMessage::Hello(Hello {
                cluster: cluster("c1"),
                resume: Some(Resume {
                    epoch: 9,
                    revision: 3,
                }),
            }),
            ClientMessage::Publish(Publish {
                cluster: c1.clone(),
                exports: vec![export("web"), export("db")],
            }),
            ClientMessage::Ack { revision: u64::MAX },
        ];
        let broker = vec![
            BrokerMessage::Snapshot(Snapshot {
                epoch: 1,
                revision: 2,
                clusters: vec![cluster("c1"), cluster("c2")],
                exports: vec![(c1.clone(), export("web"))],
                withheld: vec![ClusterId::new("c3").unwrap()],
            }),
            BrokerMessage::Delta(Delta {
                epoch: 1,
                revision: 6,
                changes: vec![
                    Change::UpsertCluster(cluster("c3")),
                    Change::RemoveCluster(c1.clone()),
                    Change::UpsertExport {
                        cluster: c1.clone(),
                        export: export("web"),
                    },
                    Change::RemoveExport {
                        cluster: c1.clone(),
                        service: ServiceKey::new("shop", "web").unwrap(),
                    },
                    Change::WithholdCluster(c1.clone()),
                    Change::RestoreCluster {
                        cluster: c1.clone(),
                        exports: vec![export("web")],
                    },
                ],
            }),
            BrokerMessage::Rejected {
                reason: RejectReason::ForeignCluster {
                    cert: c1,
                    claimed: ClusterId::new("c2").unwrap(),
                },
            },
        ];
        (client, broker)
    }

    #[test]
    fn every_message_round_trips_through_one_decoder() {
        let (client, broker) = all_messages();
        let mut decoder = Decoder::new();
        for m in &client {
            decoder.extend(&encode(m).unwrap());
        }
        for m in &client {
            assert_eq!(decoder.decode::<ClientMessage>().unwrap().as_ref(), Some(m));
        }
        assert_eq!(decoder.decode::<ClientMessage>().unwrap(), None);
        for m in &broker {
            decoder.extend(&encode(m).unwrap());
            assert_eq!(decoder.decode::<BrokerMessage>().unwrap().as_ref(), Some(m));
        }
    }

    #[test]
    fn decoder_waits_for_a_frame_split_into_single_bytes() {
        let (client, _) = all_messages();
        let frame = encode(&client[2]).unwrap();
        let mut decoder = Decoder::new();
        for (i, b) in frame.iter().enumerate() {
            assert_eq!(decoder.decode::<ClientMessage>().unwrap(), None, "byte {i}");
            decoder.extend(&[*b]);
        }
        assert_eq!(
            decoder.decode::<ClientMessage>().unwrap(),
            Some(client[2].clone())
        );
    }

    #[test]
    fn oversized_frame_is_refused_from_its_header() {
        let mut decoder = Decoder::new();
        decoder.extend(&u32::MAX.to_be_bytes());
        assert_eq!(
            decoder.decode::<ClientMessage>(),
            Err(CodecError::FrameTooLarge {
                len: u32::MAX as usize,
                max: MAX_FRAME_LEN
            })
        );
        let mut decoder = Decoder::new();
        decoder.extend(&((MAX_FRAME_LEN + 1) as u32).to_be_bytes());
        assert!(matches!(
            decoder.decode::<BrokerMessage>(),
            Err(CodecError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn consecutive_deltas_coalesce_and_the_rest_keep_their_order() {
        let c = |n: &str| Change::RemoveCluster(ClusterId::new(n).unwrap());
        let delta = |epoch, revision, changes: Vec<Change>| {
            BrokerMessage::Delta(Delta {
                epoch,
                revision,
                changes,
            })
        };
        let rejected = BrokerMessage::Rejected {
            reason: RejectReason::TooManyServices { count: 2, max: 1 },
        };
        let input = vec![
            delta(1, 5, vec![c("a"), c("b")]),
            delta(1, 6, vec![c("c")]),
            delta(1, 6, vec![]),
            rejected.clone(),
            delta(1, 7, vec![c("d")]),
            delta(1, 9, vec![c("f")]),  // a gap: not merged
            delta(2, 10, vec![c("g")]), // another epoch: not merged
        ];
        let merged = coalesce(input);
        let BrokerMessage::Delta(first) = merged[0].clone() else {
            panic!("a delta first")
        };
        let pieces: Vec<_> = first.split().map(BrokerMessage::Delta).collect();
        assert_eq!(
            pieces,
            vec![
                delta(1, 4, vec![c("a")]),
                delta(1, 5, vec![c("b")]),
                delta(1, 6, vec![c("c")])
            ]
        );
        assert_eq!(
            merged,
            vec![
                delta(1, 6, vec![c("a"), c("b"), c("c")]),
                rejected,
                delta(1, 7, vec![c("d")]),
                delta(1, 9, vec![c("f")]),
                delta(2, 10, vec![c("g")]),
            ]
        );
    }

    #[test]
    fn oversized_frame_is_skipped_and_the_next_one_decodes() {
        let (client, _) = all_messages();
        let small = encode(&client[3]).unwrap();
        let big = encode(&client[2]).unwrap();
        let mut decoder = Decoder::with_max(small.len());
        let mut stream = big.clone();
        stream.extend_from_slice(&small);
        // Delivered in small pieces, so part of the big body arrives after the refusal.
        let mut refused = 0;
        let mut decoded = vec![];
        for chunk in stream.chunks(7) {
            decoder.extend(chunk);
            loop {
                match decoder.decode::<ClientMessage>() {
                    Ok(Some(m)) => decoded.push(m),
                    Ok(None) => break,
                    Err(CodecError::FrameTooLarge { len, .. }) => {
                        assert_eq!(len, big.len() - HEADER_LEN);
                        refused += 1;
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }
        assert_eq!(refused, 1);
        assert_eq!(decoded, vec![client[3].clone()]);
    }

    #[test]
    fn oversized_message_is_refused_when_encoding() {
        let big = Publish {
            cluster: ClusterId::new("c1").unwrap(),
            exports: vec![export("web"); 1_000_000],
        };
        assert!(matches!(
            encode(&ClientMessage::Publish(big)),
            Err(CodecError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn garbage_body_is_a_malformed_error() {
        let mut decoder = Decoder::new();
        decoder.extend(&[0, 0, 0, 3, 0xff, 0xff, 0xff]);
        assert!(matches!(
            decoder.decode::<ClientMessage>(),
            Err(CodecError::Malformed(_))
        ));
    }

    #[test]
    fn invalid_cluster_id_inside_a_message_is_malformed() {
        // Encode a valid id, then upper-case it in the bytes: ids are validated on decode.
        let delta = BrokerMessage::Delta(Delta {
            epoch: 0,
            revision: 1,
            changes: vec![Change::RemoveCluster(ClusterId::new("cx").unwrap())],
        });
        let mut frame = encode(&delta).unwrap();
        let pos = frame.windows(2).position(|w| w == b"cx").unwrap();
        frame[pos] = b'C';
        let mut decoder = Decoder::new();
        decoder.extend(&frame);
        assert!(matches!(
            decoder.decode::<BrokerMessage>(),
            Err(CodecError::Malformed(_))
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut decoder = Decoder::new();
            decoder.extend(&bytes);
            for _ in 0..8 {
                match decoder.decode::<ClientMessage>() {
                    Ok(Some(_)) => continue,
                    _ => break,
                }
            }
            let mut decoder = Decoder::new();
            decoder.extend(&bytes);
            for _ in 0..8 {
                match decoder.decode::<BrokerMessage>() {
                    Ok(Some(_)) => continue,
                    _ => break,
                }
            }
        }
    }
}
