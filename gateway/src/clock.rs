//! The package's one clock read (clippy disallows the rest): tokio's clock, so that
//! `tokio::time::pause` controls it in tests. Cores take time as an argument; the device shell
//! reads it here.

#![allow(clippy::disallowed_methods)]

/// Monotonic now, as the cores' `std` instant.
pub fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// Tokio's now, for deadlines handed to tokio's timers.
pub fn tokio_now() -> tokio::time::Instant {
    tokio::time::Instant::now()
}
