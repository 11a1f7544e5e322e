//! The package's one clock read (clippy disallows the rest): tokio's clock, so that
//! `tokio::time::pause` controls it in tests. Used for latency stamps and test deadlines.

#![allow(clippy::disallowed_methods)]

/// Tokio's now.
pub fn now() -> tokio::time::Instant {
    tokio::time::Instant::now()
}
