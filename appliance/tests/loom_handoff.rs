//! Every interleaving of the event loop's hand-off (`src/handoff.rs`, compiled here with loom's
//! locks): the acceptor hands connections to a loop that takes them at the start of each pass
//! and otherwise sleeps until its waker is ready, re-arming it after each wait; a loop that dies
//! retires. The models stand for the real loop with no poll timeout, so a lost wake-up shows as
//! a loop that never wakes (loom fails it), and a stranded connection as a failed assertion.

use loom::sync::atomic::{AtomicBool, Ordering::SeqCst};
use loom::sync::Arc;
use loom::thread;

/// The locks `handoff` uses: loom's.
mod handoff_sync {
    pub(crate) use loom::sync::Mutex;
}

#[path = "../src/handoff.rs"]
#[allow(dead_code)]
mod handoff;

use handoff::{Handoff, Wake};

/// The eventfd: readable once woken, until reset.
#[derive(Default)]
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(&self) {
        self.0.store(true, SeqCst);
    }

    fn reset(&self) {
        self.0.store(false, SeqCst);
    }
}

/// The loop's passes until it has `n` items: take, and when a pass brought nothing new, wait
/// until woken (no timeout here), then re-arm, as `event_loop::serve` does.
fn receive(h: &Handoff<u32, Flag>, n: usize) -> Vec<u32> {
    let mut got = Vec::new();
    loop {
        let new = h.take();
        let progress = !new.is_empty();
        got.extend(new);
        if got.len() >= n {
            return got;
        }
        if !progress {
            while !h.waker().0.load(SeqCst) {
                thread::yield_now();
            }
            h.rearm();
        }
    }
}

/// A hand-off and an acceptor thread running `hand` on it.
fn with_acceptor<R: Send + 'static>(
    hand: impl FnOnce(&Handoff<u32, Flag>) -> R + Send + 'static,
) -> (Arc<Handoff<u32, Flag>>, thread::JoinHandle<R>) {
    let h = Arc::new(Handoff::new(Flag::default()));
    let theirs = h.clone();
    (h, thread::spawn(move || hand(&theirs)))
}

#[test]
fn every_handed_connection_reaches_a_sleeping_loop() {
    loom::model(|| {
        let (h, acceptor) = with_acceptor(|h| {
            h.hand(1).unwrap();
            h.hand(2).unwrap();
        });
        let got = receive(&h, 2);
        acceptor.join().unwrap();
        assert_eq!(got, [1, 2], "in order, each once");
    });
}

#[test]
fn a_connection_handed_as_its_loop_retires_is_given_back_or_closed_never_stranded() {
    loom::model(|| {
        let (h, acceptor) = with_acceptor(|h| h.hand(7));
        let closed = h.retire();
        let handed = acceptor.join().unwrap();
        match handed {
            Ok(()) => assert_eq!(closed, [7], "handed before the retire: closed by it"),
            Err(item) => {
                assert_eq!(item, 7);
                assert!(closed.is_empty(), "given back, so not also closed");
            }
        }
        assert!(h.take().is_empty(), "nothing left behind");
        assert_eq!(h.hand(8), Err(8), "a retired loop is handed nothing");
    });
}
