//! One DNS question over UDP, for `explain` (what the gateway's DNS answers now) and
//! `diagnose` (does it answer its own exports). A real query to the listener, so that it
//! checks what clients get, not what the gateway believes it publishes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr as _;
use std::time::Duration;

use causeway_dns::proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use causeway_dns::proto::rr::{Name, RecordType};

use crate::status::api::DnsAnswer;

/// How long to wait for the answer: the server answers from memory in microseconds, so a
/// second means it is not answering.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(1);

/// Asks `server` for `name`/`qtype` once and reports the rcode and the answer records' data.
/// Never fails: a timeout or a socket error is reported in [`DnsAnswer::error`].
pub async fn lookup(server: SocketAddr, name: &str, qtype: RecordType) -> DnsAnswer {
    let server = reachable(server);
    let mut answer = DnsAnswer {
        server,
        rcode: None,
        records: Vec::new(),
        error: None,
    };
    match ask(server, name, qtype).await {
        Ok(reply) => {
            answer.rcode = Some(rcode_name(reply.metadata.response_code));
            answer.records = reply
                .answers
                .iter()
                .filter(|r| r.record_type() == qtype)
                .map(|r| r.data.to_string())
                .collect();
        }
        Err(e) => answer.error = Some(e),
    }
    answer
}

/// A wildcard listen address is asked on loopback of the same family.
fn reachable(server: SocketAddr) -> SocketAddr {
    match server.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), server.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), server.port())
        }
        _ => server,
    }
}

async fn ask(server: SocketAddr, name: &str, qtype: RecordType) -> Result<Message, String> {
    let fqdn = if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    };
    let name = Name::from_str(&fqdn).map_err(|e| format!("{fqdn:?} is not a DNS name: {e}"))?;
    let id: u16 = rand_id();
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = false;
    message.add_query(Query::query(name, qtype));
    let bytes = message
        .to_vec()
        .map_err(|e| format!("encoding the query: {e}"))?;
    let bind: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = tokio::net::UdpSocket::bind(bind)
        .await
        .map_err(|e| format!("binding a UDP socket: {e}"))?;
    socket
        .connect(server)
        .await
        .map_err(|e| format!("connecting to {server}: {e}"))?;
    socket
        .send(&bytes)
        .await
        .map_err(|e| format!("sending to {server}: {e}"))?;
    let mut buf = vec![0u8; 4096];
    let deadline = crate::clock::tokio_now() + LOOKUP_TIMEOUT;
    loop {
        let n = tokio::time::timeout_at(deadline, socket.recv(&mut buf))
            .await
            .map_err(|_| format!("no answer from {server} within {LOOKUP_TIMEOUT:?}"))?
            .map_err(|e| format!("receiving from {server}: {e}"))?;
        // A stray or mangled datagram is skipped; only our id counts.
        if let Ok(reply) = Message::from_vec(&buf[..n])
            && reply.metadata.id == id
        {
            return Ok(reply);
        }
    }
}

fn rand_id() -> u16 {
    let mut b = [0u8; 2];
    // A fixed id is only a weaker guard against strays on our own connected socket.
    let _ = getrandom::fill(&mut b);
    u16::from_be_bytes(b)
}

/// The mnemonic of RFC 1035/6895 (`NOERROR`, `NXDOMAIN`, ...).
pub fn rcode_name(code: ResponseCode) -> String {
    match code {
        ResponseCode::NoError => "NOERROR".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::Refused => "REFUSED".into(),
        other => format!("RCODE{}", u16::from(other)),
    }
}
