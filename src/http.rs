//! Plain HTTP/1.1 for the admin ports (the gateway's, the standby's, the DNS replica's):
//! [`serve`] binds a port and serves an axum router until stopped; [`get`] is one GET over a
//! fresh TCP connection (`Connection: close`, body read to the end), [`parse_response`] its
//! parser. Small on purpose: the admin ports speak plain HTTP on loopback, and a full client
//! would be a dependency for a few requests. The admin API's JSON on top is `admin::client`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use axum::Router;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Binds the admin port on `listen` and serves `router` on a task until `stop` is cancelled.
/// Returns the bound address and the task, which ends once the port is released. `what`
/// names the server in the log line if serving fails.
pub async fn serve(
    listen: SocketAddr,
    router: Router,
    stop: CancellationToken,
    what: &'static str,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the admin port on {listen}"))?;
    let local_addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(error) = served {
            warn!(addr = %local_addr, %error, "{what} failed");
        }
    });
    Ok((local_addr, task))
}

/// The longest a request may take: the API answers from memory plus one local DNS query.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest response accepted (a status document of thousands of services fits).
const MAX_RESPONSE: usize = 64 * 1024 * 1024;

/// `GET path` from the admin server at `admin`: the status code and the body.
pub async fn get(admin: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    tokio::time::timeout(REQUEST_TIMEOUT, get_inner(admin, path))
        .await
        .with_context(|| {
            format!("no answer from the admin port {admin} within {REQUEST_TIMEOUT:?}")
        })?
}

async fn get_inner(admin: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(admin)
        .await
        .with_context(|| {
            format!("connecting to the gateway's admin port {admin} (is --admin-listen there?)")
        })?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\nAccept: */*\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    (&mut stream)
        .take(MAX_RESPONSE as u64 + 1)
        .read_to_end(&mut raw)
        .await
        .with_context(|| format!("reading the answer from {admin}"))?;
    if raw.len() > MAX_RESPONSE {
        bail!("the answer from {admin}{path} is larger than {MAX_RESPONSE} bytes");
    }
    parse_response(&raw)
}

/// Splits an HTTP/1.1 response read to EOF into its status code and body (identity or
/// chunked transfer coding).
pub fn parse_response(raw: &[u8]) -> anyhow::Result<(u16, String)> {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        bail!("not an HTTP response (no end of headers)");
    };
    let head = std::str::from_utf8(&raw[..split]).context("HTTP headers are not UTF-8")?;
    let body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad HTTP status line {status_line:?}"))?;
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    Ok((
        status,
        String::from_utf8(body).context("HTTP body is not UTF-8")?,
    ))
}

fn dechunk(mut body: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = body.windows(2).position(|w| w == b"\r\n") else {
            bail!("truncated chunked body");
        };
        let size_text = std::str::from_utf8(&body[..eol])?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        body = &body[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = body.get(..size).context("truncated chunk")?;
        out.extend_from_slice(chunk);
        body = body.get(size + 2..).context("truncated chunk")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse_with_either_transfer_coding() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_response(plain).unwrap(), (200, "{}".to_owned()));
        let chunked =
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nnot\r\n6\r\n ready\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked).unwrap(),
            (503, "not ready".to_owned())
        );
        assert!(parse_response(b"garbage").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nff\r\nab")
                .is_err()
        );
    }
}
