//! Host processes the tests and `cargo xtask` start: one guard that kills a child on every exit path
//! (a panic included), and one bounded run that collects a child's output.

use std::io::{self, Read};
use std::ops::{Deref, DerefMut};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use wait_timeout::ChildExt;

/// A child process that is killed (SIGKILL, by its own pid) and reaped when the guard drops.
#[derive(Debug)]
pub struct ChildGuard(Child);

impl ChildGuard {
    pub fn new(child: Child) -> ChildGuard {
        ChildGuard(child)
    }

    /// Kills the process now and reaps it; "already exited" is not an error.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// Whether the process has not exited yet.
    pub fn is_running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Deref for ChildGuard {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Output of a bounded child process run by [`run_bounded`].
#[derive(Debug)]
pub struct Finished {
    /// Exit status.
    pub status: ExitStatus,
    /// Everything written to stdout.
    pub stdout: String,
    /// Everything written to stderr.
    pub stderr: String,
}

impl Finished {
    /// The `key=value` pairs of the last stdout line (`tmemctl bench`'s summary).
    pub fn summary(&self) -> std::collections::BTreeMap<String, String> {
        key_values(self.stdout.lines().last().unwrap_or_default())
    }
}

/// The `key=value` words of `text` (other words are ignored): the one parser for `tmemctl bench`
/// summaries and the guests' tagged console lines.
pub fn key_values<M: FromIterator<(String, String)>>(text: &str) -> M {
    text.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Runs `cmd` to completion, killing it (by its own pid) if it takes longer than `timeout`.
/// Output is collected on threads, so a chatty child cannot block on a full pipe.
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> io::Result<Finished> {
    let mut child = ChildGuard::new(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?,
    );
    let out = collect(child.stdout.take());
    let err = collect(child.stderr.take());
    let status = child.wait_timeout(timeout)?;
    if status.is_none() {
        // The pipes close once the child is gone, which ends the collecting threads.
        child.kill();
    }
    let (stdout, stderr) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    match status {
        Some(status) => Ok(Finished {
            status,
            stdout,
            stderr,
        }),
        None => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{cmd:?} killed after {timeout:?}; stdout:\n{stdout}\nstderr:\n{stderr}"),
        )),
    }
}

/// Reads `pipe` to its end on a thread.
fn collect(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut s);
        }
        String::from_utf8_lossy(&s).into_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::time::Instant;

    #[test]
    fn guard_kills_child_on_drop_even_in_panic() {
        let guard = ChildGuard::new(Command::new("sleep").arg("30").spawn().expect("sleep"));
        let pid = guard.id();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _child = guard;
            panic!("intentional panic: the guard must still kill the child");
        }));
        assert!(result.is_err());
        // Killed and reaped by Drop: its /proc entry is gone.
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn run_bounded_collects_output_and_kills_on_timeout() {
        let mut echo = Command::new("sh");
        echo.args(["-c", "echo a=1 b=2; echo err >&2"]);
        let done = run_bounded(echo, Duration::from_secs(30)).expect("sh ran");
        assert!(done.status.success());
        assert_eq!(done.summary().get("b").map(String::as_str), Some("2"));
        assert_eq!(done.stderr.trim(), "err");

        let mut sleep = Command::new("sleep");
        sleep.arg("30");
        let start = Instant::now();
        let err = run_bounded(sleep, Duration::from_millis(200)).expect_err("must time out");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn key_values_skips_other_words() {
        let kv: Vec<(String, String)> = key_values("TAG a=1 noise b=x=y");
        assert_eq!(kv, [("a".into(), "1".into()), ("b".into(), "x=y".into())]);
    }
}
