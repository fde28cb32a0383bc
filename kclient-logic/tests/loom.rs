//! Every interleaving of the operations several kernel threads perform on one request (a
//! receive thread per replica answering, the failure path, the submitter dropping its use),
//! with `loom`. Run: `RUSTFLAGS="--cfg loom" cargo test -p kclient-logic --release --test loom`
//! (`cargo xtask test` does).
#![cfg(loom)]

use kclient_logic::cache_state::CacheState;
use kclient_logic::request::{PartOutcome, RequestState};
use kclient_logic::stripe_gate::StripeGate;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;

/// Explores interleavings with at most three preemptions per execution (loom's recommended
/// bound: bugs need few preemptions, and the full space of these models takes hours).
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(f);
}

/// Completes `r` if `must` (counting completions and remembering the status).
fn maybe_complete(r: &RequestState, must: bool, done: &AtomicUsize, status: &AtomicUsize) {
    if must {
        done.fetch_add(1, Ordering::SeqCst);
        status.store(r.complete() as usize, Ordering::SeqCst);
    }
}

/// A failure (e.g. a timeout) racing the last user's release: completes once, as a failure.
#[test]
fn failure_and_last_release_complete_once_with_the_failure() {
    model(|| {
        let r = Arc::new(RequestState::new());
        let (done, status) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        r.start(1, 1);
        assert!(r.acquire(Some(1)));
        let t = {
            let (r, done, status) = (r.clone(), done.clone(), status.clone());
            thread::spawn(move || {
                let must = r.finish(Some(10));
                maybe_complete(&r, must, &done, &status);
            })
        };
        let must = r.release();
        maybe_complete(&r, must, &done, &status);
        let must = r.release();
        maybe_complete(&r, must, &done, &status);
        t.join().unwrap();
        assert_eq!(done.load(Ordering::SeqCst), 1);
        assert_eq!(status.load(Ordering::SeqCst), 10);
    });
}

/// Two replicas answer a one-page write on two receive threads while the submitter drops its
/// use: the part finishes once, the request completes once, successfully, after both answered.
#[test]
fn two_replicas_answering_a_write_complete_it_once() {
    model(|| {
        let r = Arc::new(RequestState::new());
        let (done, status) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let finished = Arc::new(AtomicUsize::new(0));
        r.start(2, 1);
        r.await_all(0, 0b11);
        let answer = |slot: u8, ok: bool| {
            let (r, done, status, finished) =
                (r.clone(), done.clone(), status.clone(), finished.clone());
            thread::spawn(move || {
                if !r.acquire(Some(2)) {
                    return;
                }
                let must = match r.answer_write(0, slot, ok) {
                    PartOutcome::Done if r.part_done() => {
                        finished.fetch_add(1, Ordering::SeqCst);
                        r.finish(None)
                    }
                    PartOutcome::Failed => r.finish(Some(10)),
                    _ => false,
                };
                maybe_complete(&r, must, &done, &status);
                let must = r.release();
                maybe_complete(&r, must, &done, &status);
            })
        };
        let a = answer(0, true);
        let b = answer(1, false);
        let must = r.release();
        maybe_complete(&r, must, &done, &status);
        a.join().unwrap();
        b.join().unwrap();
        assert_eq!(finished.load(Ordering::SeqCst), 1);
        assert_eq!(done.load(Ordering::SeqCst), 1);
        assert_eq!(status.load(Ordering::SeqCst), 0, "one replica stored it");
    });
}

/// A forged duplicate answer racing the real one: exactly one of them counts.
#[test]
fn a_duplicate_read_answer_counts_once() {
    model(|| {
        let r = Arc::new(RequestState::new());
        r.start(3, 1);
        assert!(r.await_read(0, 1));
        let outcomes = Arc::new(AtomicUsize::new(0));
        let hs: Vec<_> = (0..2)
            .map(|_| {
                let (r, outcomes) = (r.clone(), outcomes.clone());
                thread::spawn(move || {
                    if r.answer_read(0, 1, true) == PartOutcome::Done {
                        outcomes.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(outcomes.load(Ordering::SeqCst), 1);
    });
}

/// The failure path (connection lost: the replica's answer becomes a failure) racing the real
/// answer of the other replica, then a retry decision: the read completes once.
#[test]
fn a_failed_read_retried_on_the_other_replica_completes_once() {
    model(|| {
        let r = Arc::new(RequestState::new());
        let (done, status) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        r.start(4, 1);
        assert!(r.await_read(0, 0));
        let lost = {
            let (r, done, status) = (r.clone(), done.clone(), status.clone());
            thread::spawn(move || {
                if !r.acquire(Some(4)) {
                    return;
                }
                if r.answer_read(0, 0, false) == PartOutcome::Failed {
                    // Retry on replica 1, which answers on its own thread below.
                    assert!(r.await_read(0, 1));
                }
                let must = r.release();
                maybe_complete(&r, must, &done, &status);
            })
        };
        let replica1 = {
            let (r, done, status) = (r.clone(), done.clone(), status.clone());
            thread::spawn(move || {
                // Spins (bounded by loom) until the retry reached it.
                for _ in 0..3 {
                    if r.tried(0) & 0b10 != 0 && r.acquire(Some(4)) {
                        let must = match r.answer_read(0, 1, true) {
                            PartOutcome::Done if r.part_done() => r.finish(None),
                            _ => false,
                        };
                        maybe_complete(&r, must, &done, &status);
                        let must = r.release();
                        maybe_complete(&r, must, &done, &status);
                        return;
                    }
                    thread::yield_now();
                }
            })
        };
        let must = r.release();
        maybe_complete(&r, must, &done, &status);
        lost.join().unwrap();
        replica1.join().unwrap();
        assert!(done.load(Ordering::SeqCst) <= 1, "never twice");
        if done.load(Ordering::SeqCst) == 1 {
            assert_eq!(status.load(Ordering::SeqCst), 0);
        }
    });
}

/// A write races a repair copy of its stripe. The write puts version 2 on the source and the
/// target; the copy reads the source and puts what it read on the target. Whatever the
/// interleaving, if repair counts its copy (commit), the target holds what the source holds
/// once the write is done: a copy never overtakes a write and counts as current.
#[test]
fn a_repair_copy_never_overtakes_a_write() {
    model(|| {
        let g = Arc::new(StripeGate::new());
        let source = Arc::new(AtomicUsize::new(1));
        let target = Arc::new(AtomicUsize::new(0));
        let w = {
            let (g, source, target) = (g.clone(), source.clone(), target.clone());
            thread::spawn(move || {
                while !g.enter_write() {
                    thread::yield_now();
                }
                source.store(2, Ordering::SeqCst);
                target.store(2, Ordering::SeqCst);
                g.leave_write();
            })
        };
        // The copy on a thread of its own, not the main one: loom does not schedule a spawned
        // thread ahead of the main thread's plain loads (begin_copy), so the copy-during-a-write
        // case would go unexplored.
        let copy = {
            let (g, source, target) = (g.clone(), source.clone(), target.clone());
            thread::spawn(move || match g.begin_copy() {
                Some(ticket) => {
                    let v = source.load(Ordering::SeqCst);
                    target.store(v, Ordering::SeqCst);
                    let ok = g.commit(ticket);
                    if ok {
                        g.open();
                    }
                    ok
                }
                None => false,
            })
        };
        w.join().unwrap();
        let counted = copy.join().unwrap();
        if counted {
            assert_eq!(
                target.load(Ordering::SeqCst),
                source.load(Ordering::SeqCst),
                "a counted copy left the target older than the source"
            );
        }
    });
}

/// Both replicas of a one-page write lose their connections (each receive thread fails its
/// answer) while a late answer from replica 0 arrives: whoever gets the part's failure resends
/// it once to both, and a second failure is final. The request completes exactly once, the part
/// is resent at most once, and a success is reported only if some replica stored the page.
#[test]
fn a_write_resent_after_lost_connections_completes_once() {
    model(|| {
        let r = Arc::new(RequestState::new());
        let (done, status) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (resends, stored) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        r.start(5, 1);
        r.await_all(0, 0b11);
        // Finishes the request after `outcome` of the part; a failure resends it once, and the
        // resent copy is stored by replica 0 only. `stored` counts accepted successful answers.
        let settle = {
            let (r, resends, stored) = (r.clone(), resends.clone(), stored.clone());
            move |outcome: PartOutcome| -> bool {
                let final_outcome = |o: PartOutcome| match o {
                    PartOutcome::Done => r.part_done() && r.finish(None),
                    PartOutcome::Failed => r.finish(Some(10)),
                    _ => false,
                };
                if outcome == PartOutcome::Failed && r.resend_write(0, 0b11) {
                    resends.fetch_add(1, Ordering::SeqCst);
                    let refused = final_outcome(r.answer_write(0, 1, false));
                    let answer = r.answer_write(0, 0, true);
                    if answer != PartOutcome::Unexpected {
                        stored.fetch_add(1, Ordering::SeqCst);
                    }
                    let accepted = final_outcome(answer);
                    return refused || accepted;
                }
                final_outcome(outcome)
            }
        };
        let answer = |slot: u8, ok: bool| {
            let (r, done, status, stored) =
                (r.clone(), done.clone(), status.clone(), stored.clone());
            let settle = settle.clone();
            thread::spawn(move || {
                let answer = r.answer_write(0, slot, ok);
                if ok && answer != PartOutcome::Unexpected {
                    stored.fetch_add(1, Ordering::SeqCst);
                }
                let must = settle(answer);
                maybe_complete(&r, must, &done, &status);
            })
        };
        // The submitter's use is held throughout (the use counting has its own models above).
        let lost0 = answer(0, false);
        let lost1 = answer(1, false);
        let late0 = answer(0, true);
        for t in [lost0, lost1, late0] {
            t.join().unwrap();
        }
        let must = r.release();
        maybe_complete(&r, must, &done, &status);
        assert!(resends.load(Ordering::SeqCst) <= 1, "resent at most once");
        assert_eq!(done.load(Ordering::SeqCst), 1, "completes exactly once");
        if status.load(Ordering::SeqCst) == 0 {
            assert!(
                stored.load(Ordering::SeqCst) > 0,
                "success needs a stored copy the state machine accepted"
            );
        }
    });
}

/// One block of the cache device in a model: its state, the backing device's contents, and the
/// appliance's copies (one slot per generation, modulo [`CacheModel::GENS`]).
#[derive(Clone)]
struct CacheModel {
    s: Arc<CacheState>,
    backing: Arc<AtomicUsize>,
    appliance: Arc<Vec<AtomicUsize>>,
}

impl CacheModel {
    const GENS: usize = 8;

    fn new() -> CacheModel {
        CacheModel {
            s: Arc::new(CacheState::new()),
            backing: Arc::new(AtomicUsize::new(1)),
            appliance: Arc::new((0..Self::GENS).map(|_| AtomicUsize::new(0)).collect()),
        }
    }

    fn put(&self, gen: u32, v: usize) {
        self.appliance[gen as usize % Self::GENS].store(v, Ordering::SeqCst);
    }

    fn at(&self, gen: u32) -> usize {
        self.appliance[gen as usize % Self::GENS].load(Ordering::SeqCst)
    }

    /// A write of `v` on its own thread: to the backing device, then (alone) into the cache.
    fn spawn_write(&self, v: usize) -> thread::JoinHandle<()> {
        let m = self.clone();
        thread::spawn(move || {
            let (start, _) = m.s.begin_write().expect("room for a writer");
            m.backing.store(v, Ordering::SeqCst);
            if let Some(t) = m.s.end_write(start) {
                m.put(t.gen(), v);
                m.s.commit_fill(t);
            }
        })
    }

    /// A fill on its own thread (not the main one: loom does not schedule a spawned thread ahead
    /// of the main thread's plain loads, see `a_repair_copy_never_overtakes_a_write`).
    fn spawn_fill(&self) -> thread::JoinHandle<()> {
        let m = self.clone();
        thread::spawn(move || {
            if let Some(t) = m.s.fill_ticket() {
                m.put(t.gen(), m.backing.load(Ordering::SeqCst));
                m.s.commit_fill(t);
            }
        })
    }

    /// Once everything is done: a block the state calls readable holds the backing device's
    /// contents, and what a read asks for (the current generation) is never old.
    fn check(&self) {
        let now = self.backing.load(Ordering::SeqCst);
        if let Some(gen) = self.s.lookup() {
            assert_eq!(
                self.at(gen),
                now,
                "a readable cached block differs from the disk"
            );
        }
        let current = self.at(self.s.gen());
        assert!(
            current == 0 || current == now,
            "old contents under the current key"
        );
    }
}

/// The cache device: a write of a block (version 1 -> 2 on the backing device, then a put of
/// its contents under the generation its end gave it, when it was alone) races a fill (ticket,
/// read of the backing device, put under the ticket's generation, commit).
#[test]
fn a_cached_block_is_never_older_than_the_backing_device() {
    model(|| {
        let m = CacheModel::new();
        let w = m.spawn_write(2);
        let f = m.spawn_fill();
        w.join().unwrap();
        f.join().unwrap();
        m.check();
    });
}

/// Two overlapping writes of one block (1 -> 2 and 1 -> 3 on the backing device, in either
/// order), each putting what it wrote if its end says it was alone: the loser is never cached.
#[test]
fn overlapping_writes_never_cache_the_loser() {
    model(|| {
        let m = CacheModel::new();
        let a = m.spawn_write(2);
        let b = m.spawn_write(3);
        a.join().unwrap();
        b.join().unwrap();
        m.check();
    });
}
