//! Fuzzes the argument-validation layer: each input is a sequence of C API calls with
//! arbitrary arguments, interpreted by `tests/calls/mod.rs` (shared with `cargo test`, which
//! runs it on seeded random inputs in `tests/fuzz_replay.rs`).
//!
//! `cargo +nightly fuzz run api_calls -- -max_total_time=30` (from the crate's root).

#![no_main]

#[path = "../../tests/common/mod.rs"]
mod common;

#[path = "../../tests/calls/mod.rs"]
mod calls;

libfuzzer_sys::fuzz_target!(|data: &[u8]| calls::run(data));
