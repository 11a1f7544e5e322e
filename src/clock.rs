//! The one place that reads the clock. Shells call these; cores take time as an argument.
//! Uses tokio's clock so that `tokio::time::pause()` controls it in shell tests.

#![allow(clippy::disallowed_methods)]

/// Monotonic now, from tokio's clock (pausable in tests).
pub fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// Tokio's now, for deadlines handed to tokio's timers (`timeout_at`, `sleep_until`) and
/// compared with tokio's instants.
pub fn tokio_now() -> tokio::time::Instant {
    tokio::time::Instant::now()
}

/// Wall-clock now, for timestamps that leave the process (certificates, records' ages).
pub fn wall_now() -> std::time::SystemTime {
    std::time::SystemTime::now()
}
