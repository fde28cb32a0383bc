//! kclient's kernel-free logic (`logic/*.rs`): the request state machine, placement, wire ids,
//! page maps, stripe gates, the cache device's block states, target parsing. The same files are
//! compiled on the host by the `kclient-logic` crate, where they are unit-tested and checked
//! with loom.

/// Atomics for the logic files: `core`'s here (loom's in the host crate under `--cfg loom`).
pub(crate) mod sync {
    pub(crate) use core::sync::atomic;
}

#[path = "logic/cache_state.rs"]
#[allow(dead_code, unreachable_pub, missing_docs)]
pub(crate) mod cache_state;
#[path = "logic/page_map.rs"]
#[allow(dead_code, unreachable_pub, missing_docs)]
pub(crate) mod page_map;
#[path = "logic/placement.rs"]
#[allow(dead_code, unreachable_pub, missing_docs)]
pub(crate) mod placement;
#[path = "logic/request.rs"]
#[allow(dead_code, unreachable_pub, missing_docs)]
pub(crate) mod request;
#[path = "logic/stripe_gate.rs"]
#[allow(dead_code, unreachable_pub, missing_docs)]
pub(crate) mod stripe_gate;
#[path = "logic/targets.rs"]
#[allow(dead_code, unreachable_pub, missing_docs)]
pub(crate) mod targets;
#[path = "logic/wire_id.rs"]
#[allow(dead_code, unreachable_pub, missing_docs)]
pub(crate) mod wire_id;
