//! kclient's kernel-free logic, for host tests: the very files the kernel module compiles
//! (`kclient/logic/*.rs`, included with `#[path]` as the module includes them), so the
//! state machines several kernel threads drive are checked here, every interleaving with `loom`
//! (`RUSTFLAGS="--cfg loom" cargo test -p kclient-logic --release --test loom`).

#![cfg_attr(not(loom), no_std)]
#![forbid(unsafe_code)]

/// Atomics: `core`'s, or `loom`'s under `--cfg loom` (the kernel module uses `core`'s).
pub mod sync {
    #[cfg(loom)]
    pub use loom::sync::atomic;

    #[cfg(not(loom))]
    pub use core::sync::atomic;
}

#[path = "../../kclient/logic/cache_state.rs"]
pub mod cache_state;
#[path = "../../kclient/logic/page_map.rs"]
pub mod page_map;
#[path = "../../kclient/logic/placement.rs"]
pub mod placement;
#[path = "../../kclient/logic/request.rs"]
pub mod request;
#[path = "../../kclient/logic/stripe_gate.rs"]
pub mod stripe_gate;
#[path = "../../kclient/logic/targets.rs"]
pub mod targets;
#[path = "../../kclient/logic/wire_id.rs"]
pub mod wire_id;
