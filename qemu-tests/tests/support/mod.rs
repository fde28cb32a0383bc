//! Helpers shared by VM test files (each test file is its own crate: `mod support;`).

pub mod checks;
pub mod cluster;
