//! Readiness probes: is a daemon answering yet? Only the DNS probe so far: one query, any
//! well-formed reply counts (NXDOMAIN included), because the question is "is the server up",
//! not "what does it say". The caller opens the socket (inside a pod's namespace, for the lab).

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

/// How long one probe waits for a reply; the caller polls again after a miss.
const REPLY_TIMEOUT: Duration = Duration::from_millis(500);
/// The query id; replies with another id are not ours.
const QUERY_ID: u16 = 0x4e4c;

/// Sends an A query for `probe.netlab.svc.global` from `socket` to `server`. `Ok` once a
/// reply with our id and the QR bit comes back; `Err(what was seen)` otherwise.
pub fn dns_answers(socket: &UdpSocket, server: SocketAddr) -> Result<(), String> {
    socket
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .map_err(|e| e.to_string())?;
    socket
        .send_to(
            &dns_query(QUERY_ID, &["probe", "netlab", "svc", "global"]),
            server,
        )
        .map_err(|e| format!("sending to {server}: {e}"))?;
    let mut reply = [0u8; 512];
    let (n, _) = socket
        .recv_from(&mut reply)
        .map_err(|e| format!("no reply from {server}: {e}"))?;
    if is_reply_to(QUERY_ID, &reply[..n]) {
        Ok(())
    } else {
        Err(format!("an unexpected {n}-byte datagram from {server}"))
    }
}

/// A recursion-desired query with one question: `labels` joined, type A, class IN.
fn dns_query(id: u16, labels: &[&str]) -> Vec<u8> {
    let mut query = id.to_be_bytes().to_vec();
    query.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in labels {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    query
}

fn is_reply_to(id: u16, datagram: &[u8]) -> bool {
    datagram.len() >= 12 && datagram[..2] == id.to_be_bytes() && datagram[2] & 0x80 != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_encodes_labels_type_a_class_in() {
        let query = dns_query(7, &["web", "svc"]);
        assert_eq!(
            query,
            [
                0, 7, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 3, b'w', b'e', b'b', 3, b's', b'v', b'c', 0, 0,
                1, 0, 1
            ]
        );
    }

    #[test]
    fn any_reply_with_our_id_counts_and_silence_does_not() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let server_addr = server.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            let (n, from) = server.recv_from(&mut buf).unwrap();
            buf[2] |= 0x80; // QR: a reply, rcode whatever
            buf[3] = 0x83; // NXDOMAIN still means the server is up
            server.send_to(&buf[..n], from).unwrap();
        });
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(dns_answers(&client, server_addr), Ok(()));

        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let err = dns_answers(&client, silent.local_addr().unwrap()).unwrap_err();
        assert!(err.starts_with("no reply"), "{err}");
    }
}
