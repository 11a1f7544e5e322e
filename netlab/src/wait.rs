//! Waiting in the lab: deadlines, condition polling and the interrupt flag.
//!
//! Owns the only clock reads of netlab (lab code measures real elapsed time against real
//! daemons; there is no core here to pass time into) and the process-wide "interrupted" flag
//! that SIGINT/SIGTERM set (see [`install_interrupt_handler`]). Every wait loop in netlab goes
//! through [`poll_until`] or [`Deadline`], so an interrupt ends any wait within one poll period
//! and `Lab`'s `Drop` then tears the lab down.

#![allow(clippy::disallowed_methods)]

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How often conditions are re-checked: fast enough that a step ends promptly once its
/// condition holds, slow enough that polling `getent`/`curl` stays a small load on 2 cores.
pub const POLL_PERIOD: Duration = Duration::from_millis(150);

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The error every wait returns once SIGINT or SIGTERM was received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interrupted;

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// A waiting condition that did not come true in time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedOut {
    pub what: String,
    pub after: Duration,
    /// What the last check saw, in plain words.
    pub last_seen: String,
}

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "timed out after {:.1}s waiting for {}; last seen: {}",
            self.after.as_secs_f64(),
            self.what,
            self.last_seen
        )
    }
}

impl std::error::Error for TimedOut {}

/// Installs SIGINT and SIGTERM handlers that only set the interrupted flag. Call once, early,
/// from a foreground program (the demo); libraries and tests need not call it.
pub fn install_interrupt_handler() -> std::io::Result<()> {
    extern "C" fn on_signal(_signal: libc::c_int) {
        // Only an atomic store: the one thing that is async-signal-safe here.
        INTERRUPTED.store(true, Ordering::SeqCst);
    }
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: `action` is fully initialised (zeroed, then handler and empty mask set)
        // before sigaction reads it, and the handler only touches an atomic.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether SIGINT/SIGTERM arrived since the handler was installed.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Returns `Err(Interrupted)` once a signal arrived; wait loops call it every period.
pub fn check_interrupted() -> Result<(), Interrupted> {
    if interrupted() {
        Err(Interrupted)
    } else {
        Ok(())
    }
}

/// A point in time after which a wait gives up.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    start: Instant,
    at: Instant,
}

impl Deadline {
    pub fn after(timeout: Duration) -> Self {
        let start = Instant::now();
        Self {
            start,
            at: start + timeout,
        }
    }

    pub fn passed(&self) -> bool {
        Instant::now() >= self.at
    }

    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// Time since the deadline was set.
    pub fn elapsed(&self) -> Duration {
        Instant::now().saturating_duration_since(self.start)
    }
}

/// Milliseconds on CLOCK_MONOTONIC: one time base shared by every process on the machine, so
/// the failover client (a separate process inside a pod) and the lab driver can compare their
/// timestamps. Not affected by network namespaces.
pub fn monotonic_ms() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC always exists.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6
}

/// Re-checks `check` every [`POLL_PERIOD`] until it returns `Ok`, the timeout passes
/// ([`TimedOut`], carrying the last `Err` observation) or a signal arrives ([`Interrupted`]).
/// `check` returns `Err(what it saw)` while the condition does not hold yet.
pub fn poll_until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> anyhow::Result<T> {
    let deadline = Deadline::after(timeout);
    loop {
        check_interrupted()?;
        let last_seen = match check() {
            Ok(value) => return Ok(value),
            Err(seen) => seen,
        };
        if deadline.passed() {
            return Err(TimedOut {
                what: what.to_owned(),
                after: deadline.elapsed(),
                last_seen,
            }
            .into());
        }
        std::thread::sleep(POLL_PERIOD.min(deadline.remaining().max(Duration::from_millis(1))));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_until_returns_the_first_ok() {
        let mut calls = 0;
        let got = poll_until("third call", Duration::from_secs(5), || {
            calls += 1;
            if calls == 3 {
                Ok(calls)
            } else {
                Err(format!("call {calls}"))
            }
        });
        assert_eq!(got.unwrap(), 3);
    }

    #[test]
    fn poll_until_times_out_with_the_last_observation() {
        let err = poll_until::<()>("never", Duration::from_millis(200), || Err("nope".into()))
            .unwrap_err();
        let timed_out = err.downcast_ref::<TimedOut>().unwrap();
        assert_eq!(timed_out.last_seen, "nope");
        assert_eq!(timed_out.what, "never");
    }
}
