//! The failover client: `causeway lab failover-client`, run inside a pod. It loops: resolve
//! the name through the libc resolver (`getaddrinfo`, so the pod's `/etc/netns/<pod>/
//! resolv.conf` applies and nothing is cached: glibc has no cache without nscd), GET `/` from
//! the first address, and print one [`Record`] line per request on stdout.
//!
//! Like a client that does not retry other addresses, it uses only the first address, so what
//! it sees is what the DNS answers (the nearest cluster first), not its own fallback.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::wait::monotonic_ms;

/// One request as the client saw it. Times are [`monotonic_ms`].
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub start_ms: f64,
    pub end_ms: f64,
    /// The address the name resolved to first, if it resolved.
    pub addr: Option<IpAddr>,
    /// The body of a 200 answer: the serving cluster's id. `Some` exactly on success.
    pub served_by: Option<String>,
    /// Why the request failed.
    pub error: Option<String>,
}

impl Record {
    pub fn ok(&self) -> bool {
        self.served_by.is_some()
    }

    /// `start end addr served error`, tab-separated, `-` for none.
    pub fn to_line(&self) -> String {
        let clean = |s: &str| s.replace(['\t', '\n', '\r'], " ");
        format!(
            "{:.3}\t{:.3}\t{}\t{}\t{}",
            self.start_ms,
            self.end_ms,
            self.addr.map_or("-".to_owned(), |a| a.to_string()),
            self.served_by.as_deref().map_or("-".to_owned(), clean),
            self.error.as_deref().map_or("-".to_owned(), clean),
        )
    }

    pub fn parse_line(line: &str) -> Option<Self> {
        let mut fields = line.split('\t');
        let start_ms = fields.next()?.parse().ok()?;
        let end_ms = fields.next()?.parse().ok()?;
        let opt = |s: &str| (s != "-").then(|| s.to_owned());
        let addr = match fields.next()? {
            "-" => None,
            a => Some(a.parse().ok()?),
        };
        let served_by = opt(fields.next()?);
        let error = opt(fields.next()?);
        Some(Self {
            start_ms,
            end_ms,
            addr,
            served_by,
            error,
        })
    }
}

/// Loops forever (until stdout is closed): one request every `interval_ms` at most, each
/// bounded by `timeout_ms` for the connection and again for the answer.
pub fn run(name: &str, port: u16, interval_ms: u64, timeout_ms: u64) -> anyhow::Result<()> {
    let (interval, timeout) = (
        Duration::from_millis(interval_ms),
        Duration::from_millis(timeout_ms),
    );
    let mut stdout = std::io::stdout().lock();
    loop {
        let start_ms = monotonic_ms();
        let (addr, outcome) = request(name, port, timeout);
        let end_ms = monotonic_ms();
        let (served_by, error) = match outcome {
            Ok(body) => (Some(body), None),
            Err(e) => (None, Some(e)),
        };
        let record = Record {
            start_ms,
            end_ms,
            addr,
            served_by,
            error,
        };
        // The lab closes the pipe to stop us: then this fails and we exit.
        writeln!(stdout, "{}", record.to_line())?;
        stdout.flush()?;
        let next = start_ms + interval.as_secs_f64() * 1e3;
        let wait = next - monotonic_ms();
        if wait > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(wait / 1e3));
        }
    }
}

/// Resolves `name`, GETs `/` from its first address; the body on a 200.
fn request(name: &str, port: u16, timeout: Duration) -> (Option<IpAddr>, Result<String, String>) {
    let first = match (name, port).to_socket_addrs() {
        Ok(mut addrs) => addrs.next(),
        Err(e) => return (None, Err(format!("resolving: {e}"))),
    };
    let Some(to) = first else {
        return (None, Err("resolving: no address".into()));
    };
    (Some(to.ip()), get(to, name, timeout))
}

fn get(to: SocketAddr, host: &str, timeout: Duration) -> Result<String, String> {
    let mut stream =
        TcpStream::connect_timeout(&to, timeout).map_err(|e| format!("connecting: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("sending: {e}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| format!("reading: {e}"))?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("a truncated answer of {} bytes", response.len()))?;
    if !head.starts_with("HTTP/1.1 200 ") {
        return Err(format!(
            "status {:?}",
            head.lines().next().unwrap_or_default()
        ));
    }
    Ok(body.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_their_line() {
        let ok = Record {
            start_ms: 12.5,
            end_ms: 14.25,
            addr: Some("10.101.0.10".parse().unwrap()),
            served_by: Some("c1".into()),
            error: None,
        };
        assert_eq!(Record::parse_line(&ok.to_line()), Some(ok));
        let failed = Record {
            start_ms: 1.0,
            end_ms: 501.0,
            addr: None,
            served_by: None,
            error: Some("connecting: timed out".into()),
        };
        assert_eq!(Record::parse_line(&failed.to_line()), Some(failed));
        assert_eq!(Record::parse_line("garbage"), None);
    }

    #[test]
    fn gets_the_body_from_a_loopback_server() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || crate::http::serve_on(listener, "c3".into()));
        assert_eq!(get(addr, "web", Duration::from_secs(5)), Ok("c3".into()));
        let (resolved, outcome) = request("127.0.0.1", addr.port(), Duration::from_secs(5));
        assert_eq!(resolved, Some(addr.ip()));
        assert_eq!(outcome, Ok("c3".into()));
    }
}
