//! tokio-bridge: Tokio's two pools for C programs and every language with a C FFI.
//!
//! A C program creates a runtime, submits blocking C callbacks (run on Tokio's blocking pool)
//! and async timers (run on Tokio's async workers), and gets results back through completion
//! handles. The C API is in `include/tokio_bridge.h`, generated from this crate by `build.rs`.
//!
//! Exported concepts, one module each: [`runtime`], [`job`] (blocking jobs), [`timer`] (sleeps
//! and timers), [`completion`] (task handles: wait, poll, outcome, cancel, callbacks, release,
//! groups), [`queue`] (completion queues for foreign event loops), [`metrics`] (the pools' state
//! and counters), [`stall`] (the stall detector), [`probe`] (the lateness probe), [`error`]
//! (status codes and the last error) and [`version`]. Plumbing: [`panic`] (the boundary
//! around every exported function), [`handle`] (generation-checked handle tables), [`reclaim`]
//! (when a removed object may be dropped), [`state`] (the completion state machine), [`task`]
//! (tasks and their handles), [`pool`] (the blocking-job queue), [`inbox`] (its entrance
//! without a lock), [`timer_queue`] (armed sleeps and timers), [`userdata`] (C data with its
//! destructor), [`context`] (what the current thread does) and [`sync`] (locking helpers).

#![allow(non_camel_case_types)]
// The exported functions are C entry points: they check every pointer for NULL and otherwise
// rely on the caller for its validity, as every C API does. Marking them `unsafe fn` would
// change nothing for C callers and only add noise to the Rust tests that call them.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

// Exported concepts, in the order the header presents them.
pub mod completion;
pub mod error;
pub mod job;
pub mod metrics;
pub mod probe;
pub mod queue;
pub mod runtime;
pub mod stall;
pub mod timer;
pub mod version;

mod clock;
mod context;
mod handle;
mod inbox;
mod panic;
mod pool;
mod reclaim;
mod state;
mod sync;
mod task;
mod timer_queue;
mod userdata;

#[cfg(test)]
mod header_tests;

pub use userdata::tb_free_fn;
