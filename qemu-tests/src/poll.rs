//! Bounded waiting: the VM tests and `cargo xtask` wait for events by polling through [`poll`],
//! so every wait is bounded in time and in attempts.

use std::io;
use std::time::{Duration, Instant};

/// Calls `probe` every `every` until it returns `Ok(Some(_))` or an error, or `timeout` has passed
/// (at most `timeout / every + 1` calls). `Ok(None)`: the time ran out.
pub fn poll<T>(
    timeout: Duration,
    every: Duration,
    mut probe: impl FnMut() -> io::Result<Option<T>>,
) -> io::Result<Option<T>> {
    let every = every.max(Duration::from_millis(1));
    let start = Instant::now();
    for _ in 0..=timeout.as_millis() / every.as_millis() {
        if let Some(found) = probe()? {
            return Ok(Some(found));
        }
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(every.min(left));
    }
    Ok(None)
}

/// The error of a [`poll`] that ran out of time: `TimedOut`, saying what did not happen.
pub fn timed_out(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_at_the_event_the_error_or_the_bound() {
        let mut calls = 0;
        let found = poll(Duration::from_secs(10), Duration::from_millis(1), || {
            calls += 1;
            Ok((calls == 3).then_some(calls))
        });
        assert_eq!(found.unwrap(), Some(3));
        let failed: io::Result<Option<()>> =
            poll(Duration::from_secs(10), Duration::from_millis(1), || {
                Err(io::Error::other("gone"))
            });
        assert!(failed.is_err());
        let (start, mut calls) = (Instant::now(), 0);
        let none = poll(
            Duration::from_millis(100),
            Duration::from_millis(10),
            || {
                calls += 1;
                Ok(None::<()>)
            },
        );
        assert_eq!(none.unwrap(), None);
        assert!(calls <= 11 && start.elapsed() < Duration::from_secs(5));
    }
}
