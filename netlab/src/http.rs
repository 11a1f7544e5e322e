//! The pods' HTTP server: `causeway lab http-serve --listen ADDR --body TEXT`.
//!
//! Deliberately tiny HTTP/1.1 on std::net: reads one request head, answers `200 OK` with the
//! fixed body and closes the connection; one thread per connection. It exists so that the lab
//! can show real TCP traffic crossing the tunnels; it is not a general server.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

/// A request head larger than this is answered anyway; nothing here needs more.
const MAX_HEAD: usize = 16 * 1024;
/// A client that sends nothing for this long gets its connection closed.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds `listen` and serves `body` to every request, forever (or until binding fails).
pub fn http_serve(listen: SocketAddr, body: String) -> anyhow::Result<()> {
    let listener =
        TcpListener::bind(listen).with_context(|| format!("binding HTTP on {listen}"))?;
    serve_on(listener, body)
}

/// Serves `body` on an already bound listener (the caller may have bound it inside another
/// network namespace), forever.
pub fn serve_on(listener: TcpListener, body: String) -> anyhow::Result<()> {
    let body: Arc<str> = body.into();
    for stream in listener.incoming() {
        // A failed accept (e.g. the client reset) affects one connection, not the server.
        let Ok(stream) = stream else { continue };
        let body = Arc::clone(&body);
        std::thread::spawn(move || {
            let _ = answer(stream, &body);
        });
    }
    Ok(())
}

fn answer(mut stream: TcpStream, body: &str) -> std::io::Result<()> {
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes())?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_the_body_with_its_length_on_loopback() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || serve_on(listener, "hello from c1".into()));
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(response.contains("Content-Length: 13\r\n"), "{response}");
        assert!(response.ends_with("\r\n\r\nhello from c1"), "{response}");
    }
}
