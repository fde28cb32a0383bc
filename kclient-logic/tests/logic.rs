//! Behaviour of kclient's kernel-free logic, one thread at a time (the interleavings are in
//! `loom.rs`).
#![cfg(not(loom))]

use kclient_logic::page_map::PageMap;
use kclient_logic::placement::{appliance_key, extent_of, place, EXTENT_PAGES, NO_APPLIANCE};
use kclient_logic::request::{PartOutcome, RequestState, GEN_MASK};
use kclient_logic::stripe_gate::StripeGate;
use kclient_logic::targets::{parse_targets, TargetError};
use kclient_logic::wire_id::{RepairId, RunId, WireId, CONTROL};
use std::sync::atomic::AtomicU64;

#[test]
fn a_failure_recorded_before_the_last_use_is_dropped_is_what_completes() {
    // The bug of the earlier blk.rs: DONE was set before the status, so the last user dropping
    // in between completed a failing request as OK. Here the status is stored first.
    let r = RequestState::new();
    r.start(5, 1);
    assert!(r.acquire(Some(5)), "a receive thread takes a use");
    assert!(!r.finish(Some(10)), "users remain");
    assert!(!r.release(), "the submitter's use");
    assert!(
        r.release(),
        "the last use of a finished request completes it"
    );
    assert_eq!(r.complete(), 10);
    assert!(!r.acquire(None), "completed: nothing acquires it");
}

#[test]
fn stale_generations_and_finished_requests_cannot_be_acquired() {
    let r = RequestState::new();
    r.start(7, 2);
    assert!(!r.acquire(Some(6)));
    assert!(
        r.acquire(Some(7 | (1 << 25))),
        "only the generation bits count"
    );
    assert!(!r.release());
    assert!(!r.finish(None), "the submitter still holds its use");
    assert!(!r.acquire(Some(7)), "finished");
    assert!(r.release());
    assert_eq!(r.complete(), 0);
    assert!(!r.finish(Some(3)), "finishing twice does nothing");
    assert_eq!(GEN_MASK, 0xfffff);
}

#[test]
fn write_parts_wait_for_every_replica_and_need_one_success() {
    let r = RequestState::new();
    r.start(1, 3);
    for p in 0..3 {
        r.await_all(p, 0b011);
    }
    assert_eq!(r.answer_write(0, 0, true), PartOutcome::Waiting);
    assert_eq!(
        r.answer_write(0, 0, true),
        PartOutcome::Unexpected,
        "duplicate"
    );
    assert_eq!(
        r.answer_write(0, 2, true),
        PartOutcome::Unexpected,
        "not sent there"
    );
    assert_eq!(
        r.answer_write(0, 1, false),
        PartOutcome::Done,
        "one replica stored it"
    );
    assert_eq!(r.answer_write(1, 1, false), PartOutcome::Waiting);
    assert_eq!(
        r.answer_write(1, 0, false),
        PartOutcome::Failed,
        "no replica stored it"
    );
    assert_eq!(
        r.answer_write(5, 0, true),
        PartOutcome::Unexpected,
        "no such part"
    );
    assert_eq!(
        r.answer_write(2, 3, true),
        PartOutcome::Unexpected,
        "no such slot"
    );
}

#[test]
fn read_parts_try_each_replica_once() {
    let r = RequestState::new();
    r.start(1, 2);
    assert!(r.await_read(0, 1));
    assert!(!r.await_read(0, 0), "one replica at a time");
    assert_eq!(r.answer_read(0, 0, true), PartOutcome::Unexpected);
    assert_eq!(r.answer_read(0, 1, false), PartOutcome::Failed);
    assert!(!r.await_read(0, 1), "tried already");
    assert_eq!(r.tried(0), 0b10);
    assert!(r.await_read(0, 0));
    assert_eq!(r.answer_read(0, 0, true), PartOutcome::Done);
    assert_eq!(
        r.answer_read(0, 0, true),
        PartOutcome::Unexpected,
        "answered"
    );
    assert!(r.local_part(1));
    assert!(!r.local_part(1));
    assert!(!r.part_done());
    assert!(r.part_done(), "the last part");
}

#[test]
fn parts_lost_with_their_connections_are_resent_once() {
    let r = RequestState::new();
    r.start(1, 2);
    // A write refused by one replica and lost with the other's connection: resent once.
    r.await_all(0, 0b11);
    assert_eq!(r.answer_write(0, 0, false), PartOutcome::Waiting);
    assert_eq!(r.answer_write(0, 1, false), PartOutcome::Failed);
    assert!(r.resend_write(0, 0b01));
    assert_eq!(r.awaiting(0), 0b01);
    assert_eq!(r.answer_write(0, 0, false), PartOutcome::Failed);
    assert!(!r.resend_write(0, 0b01), "only once: a resend cannot loop");
    // A stored write is not reopened.
    r.await_all(1, 0b01);
    assert_eq!(r.answer_write(1, 0, true), PartOutcome::Done);
    assert!(!r.resend_write(1, 0b01));

    let r = RequestState::new();
    r.start(2, 1);
    assert!(r.await_read(0, 0));
    assert!(!r.resend_read(0), "a replica still owes an answer");
    assert_eq!(r.answer_read(0, 0, false), PartOutcome::Failed);
    assert!(!r.await_read(0, 0), "tried already");
    assert!(r.resend_read(0));
    assert_eq!(r.tried(0), 0);
    assert!(r.await_read(0, 0), "tried again after the resend");
    assert_eq!(r.answer_read(0, 0, false), PartOutcome::Failed);
    assert!(!r.resend_read(0), "only once");
    r.fail_part(0);
    assert!(!r.resend_read(0), "finished");
}

#[test]
fn wire_ids_round_trip_and_do_not_collide() {
    let run = WireId::Run(RunId {
        gen: GEN_MASK,
        slot: 2,
        hctx: 7,
        tag: 0xbeef,
        first: 192,
        count: 64,
    });
    let rep = WireId::Repair(RepairId {
        slot: 1,
        put: true,
        seq: 0x07ff_ffff,
        page: u32::MAX,
    });
    for id in [run, rep, WireId::Keepalive(12345), WireId::Control] {
        assert_eq!(WireId::from_wire(id.to_wire()), Some(id));
    }
    assert_eq!(WireId::Control.to_wire(), CONTROL);
    assert_eq!(WireId::from_wire(CONTROL - 1), None);
    assert_ne!(run.to_wire() >> 62, rep.to_wire() >> 62);
}

#[test]
fn placement_is_stable_spread_and_moves_little_when_an_appliance_is_added() {
    let apps: Vec<(u64, bool)> = (1..=4u32)
        .map(|i| (appliance_key(0x0a00_0000 + i, 7777), true))
        .collect();
    let extents = 4000;
    let mut load = [0usize; 5];
    let mut before = Vec::new();
    for e in 0..extents {
        let set = place(e, &apps, 2);
        assert_ne!(set[0], set[1]);
        assert_eq!(set[2], NO_APPLIANCE);
        assert_eq!(set, place(e, &apps, 2), "deterministic");
        load[set[0] as usize] += 1;
        load[set[1] as usize] += 1;
        before.push(set);
    }
    for &l in &load[..4] {
        assert!((1600..2400).contains(&l), "uneven load {load:?}");
    }
    // A fifth appliance takes about 2/5 of the slots of newly placed extents; the rest keep
    // the same appliances.
    let mut five = apps.clone();
    five.push((appliance_key(0x0a00_0005, 7777), true));
    let moved: usize = (0..extents)
        .map(|e| {
            let set = place(e, &five, 2);
            set.iter()
                .take(2)
                .filter(|s| !before[e].contains(s))
                .count()
        })
        .sum();
    let share = moved as f64 / (2 * extents) as f64;
    assert!((0.15..0.25).contains(&share), "moved share {share}");
    // Ineligible (down or full) appliances are skipped; too few leaves slots empty.
    let mut some = apps.clone();
    some[0].1 = false;
    some[1].1 = false;
    some[2].1 = false;
    let set = place(3, &some, 2);
    assert_eq!(set, [3, NO_APPLIANCE, NO_APPLIANCE]);
    assert_eq!(extent_of(EXTENT_PAGES * 3 + 5), 3);
}

#[test]
fn targets_parse_and_refuse_what_they_should() {
    let t = parse_targets(b" 10.0.2.2:7777, 10.0.2.3:7778 ,").unwrap();
    assert_eq!(t.len(), 2);
    assert_eq!(t.as_slice()[1].ip, 0x0a00_0203);
    assert_eq!(parse_targets(b""), Err(TargetError::Empty));
    assert_eq!(parse_targets(b"1.2.3:4"), Err(TargetError::Syntax));
    assert_eq!(parse_targets(b"1.2.3.256:4"), Err(TargetError::Syntax));
    assert_eq!(parse_targets(b"1.2.3.4:0"), Err(TargetError::Syntax));
    assert_eq!(
        parse_targets(b"1.2.3.4:9,1.2.3.4:9"),
        Err(TargetError::Duplicate)
    );
    let nine: Vec<String> = (1..=9).map(|i| format!("1.2.3.{i}:9")).collect();
    assert_eq!(
        parse_targets(nine.join(",").as_bytes()),
        Err(TargetError::TooMany)
    );
}

#[test]
fn page_maps_find_stale_pages() {
    let words = PageMap::words_for(300);
    let mk = || (0..words).map(|_| AtomicU64::new(0)).collect::<Vec<_>>();
    let (stored, s0, s1, s2) = (mk(), mk(), mk(), mk());
    let m = PageMap {
        stored: &stored,
        stale: [&s0, &s1, &s2],
    };
    for p in [3, 70, 199, 299] {
        m.set_stored(p, true);
    }
    assert_eq!(m.mark_range_stale(1, 0..300), 4);
    assert_eq!(m.mark_range_stale(1, 0..300), 0, "already stale");
    m.set_stored(70, false);
    assert_eq!(m.next_stale(1, 0, 300), Some(3));
    assert_eq!(
        m.next_stale(1, 4, 300),
        Some(199),
        "discarded pages need no repair"
    );
    assert_eq!(m.next_stale(1, 200, 299), None, "end is exclusive");
    assert!(m.set_stale(1, 199, false));
    assert_eq!(m.next_stale(1, 4, 300), Some(299));
    assert!(!m.is_stale(0, 3));
    assert!(!m.set_stale(7, 3, true), "no such slot");
}

#[test]
fn stripe_gate_counts_a_copy_only_if_no_write_overlapped_it() {
    let g = StripeGate::new();
    assert!(g.enter_write());
    assert_eq!(g.begin_copy(), None, "a write inside: copy later");
    g.leave_write();
    let t = g.begin_copy().expect("quiet stripe");
    assert!(g.commit(t), "nothing entered during the copy");
    assert!(
        !g.enter_write(),
        "closed while the copied pages are marked current"
    );
    g.open();
    assert!(g.enter_write(), "open again");
    g.leave_write();

    let t = g.begin_copy().expect("quiet stripe");
    assert!(g.enter_write());
    g.leave_write();
    assert!(!g.commit(t), "a write entered and left during the copy");
    assert!(!g.writers_inside());
    let t = g.begin_copy().expect("quiet again");
    assert!(g.enter_write());
    assert!(!g.commit(t), "a write is inside");
}
