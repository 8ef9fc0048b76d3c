//! The documented contract of every function that returns a `tb_status`: the codes its doc
//! comment in `include/tokio_bridge.h` allows, and nothing else. The model test, the stress
//! test and the fuzz driver check every status they get against this table; a test in
//! `tests/model.rs` checks the table against the header itself.
//!
//! `TB_ERR_PANIC` is in no row: the panic boundary keeps a panic from crossing into C, but a
//! panic is a bug, so these tests report it. `TB_ERR_FORKED` is in no row either: these tests
//! never call the library in a forked child.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio_bridge::error::*;

/// A set of status codes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Codes(u32);

impl Codes {
    pub const NONE: Codes = Codes(0);

    const fn bit(status: tb_status) -> u32 {
        // Codes run from TB_ERR_FORKED (-12) to TB_TIMED_OUT (2); anything else maps to bit 31.
        if status >= -16 && status <= 14 {
            1 << (status + 16)
        } else {
            1 << 31
        }
    }

    pub const fn of(statuses: &[tb_status]) -> Codes {
        let mut bits = 0;
        let mut i = 0;
        while i < statuses.len() {
            bits |= Codes::bit(statuses[i]);
            i += 1;
        }
        Codes(bits)
    }

    pub const fn contains(self, status: tb_status) -> bool {
        self.0 & Codes::bit(status) != 0
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub const fn with(self, other: Codes) -> Codes {
        Codes(self.0 | other.0)
    }

    /// The names of the codes in the set, for messages.
    pub fn names(self) -> Vec<String> {
        (-16..=14)
            .filter(|&s| self.contains(s))
            .map(status_name)
            .collect()
    }
}

impl std::ops::BitOr for Codes {
    type Output = Codes;
    fn bitor(self, other: Codes) -> Codes {
        self.with(other)
    }
}

pub fn status_name(status: tb_status) -> String {
    // SAFETY: tb_status_name returns a static NUL-terminated string for any value.
    unsafe { std::ffi::CStr::from_ptr(tb_status_name(status)) }
        .to_string_lossy()
        .into_owned()
}

macro_rules! apis {
    ($($variant:ident = $name:literal: [$($code:ident),* $(,)?];)*) => {
        /// Every exported function that returns a `tb_status`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Api { $($variant),* }

        pub const ALL: &[Api] = &[$(Api::$variant),*];

        impl Api {
            /// The C name of the function.
            pub const fn name(self) -> &'static str {
                match self { $(Api::$variant => $name),* }
            }

            /// The codes the header documents for the function.
            pub const fn documented(self) -> Codes {
                match self { $(Api::$variant => Codes::of(&[$($code),*])),* }
            }
        }
    };
}

apis! {
    TaskWait = "tb_task_wait":
        [TB_OK, TB_TIMED_OUT, TB_ERR_BAD_HANDLE, TB_ERR_ON_RUNTIME_THREAD, TB_ERR_INVALID_ARG];
    TaskPoll = "tb_task_poll": [TB_OK, TB_PENDING, TB_ERR_BAD_HANDLE];
    TaskOutcome = "tb_task_outcome": [TB_OK, TB_PENDING, TB_ERR_NULL, TB_ERR_BAD_HANDLE];
    TaskCancel = "tb_task_cancel": [TB_OK, TB_ERR_BUSY, TB_ERR_ALREADY, TB_ERR_BAD_HANDLE];
    TaskOnComplete = "tb_task_on_complete":
        [TB_OK, TB_ERR_NULL, TB_ERR_BAD_HANDLE, TB_ERR_ALREADY];
    TaskRelease = "tb_task_release": [TB_OK, TB_ERR_BAD_HANDLE];
    WaitAll = "tb_wait_all": [TB_OK, TB_TIMED_OUT, TB_ERR_NULL, TB_ERR_BAD_HANDLE,
        TB_ERR_ON_RUNTIME_THREAD, TB_ERR_INVALID_ARG];
    WaitAny = "tb_wait_any": [TB_OK, TB_TIMED_OUT, TB_ERR_NULL, TB_ERR_INVALID_ARG,
        TB_ERR_BAD_HANDLE, TB_ERR_ON_RUNTIME_THREAD];
    SpawnBlocking = "tb_spawn_blocking": [TB_OK, TB_ERR_NULL, TB_ERR_BAD_HANDLE,
        TB_ERR_SHUTDOWN, TB_ERR_BUSY, TB_ERR_OS];
    RuntimeMetrics = "tb_runtime_metrics":
        [TB_OK, TB_ERR_NULL, TB_ERR_INVALID_ARG, TB_ERR_BAD_HANDLE, TB_ERR_SHUTDOWN];
    ProbeStart = "tb_runtime_probe_start":
        [TB_OK, TB_ERR_BAD_HANDLE, TB_ERR_SHUTDOWN, TB_ERR_INVALID_ARG, TB_ERR_ALREADY];
    ProbeStop = "tb_runtime_probe_stop":
        [TB_OK, TB_ERR_BAD_HANDLE, TB_ERR_SHUTDOWN, TB_ERR_ALREADY];
    ProbeStats = "tb_runtime_probe_stats":
        [TB_OK, TB_ERR_NULL, TB_ERR_INVALID_ARG, TB_ERR_BAD_HANDLE, TB_ERR_SHUTDOWN];
    QueueNew = "tb_queue_new": [TB_OK, TB_ERR_NULL, TB_ERR_OS];
    QueueFd = "tb_queue_fd": [TB_OK, TB_ERR_NULL, TB_ERR_BAD_HANDLE];
    TaskNotify = "tb_task_notify": [TB_OK, TB_ERR_BAD_HANDLE, TB_ERR_ALREADY];
    QueueDrain = "tb_queue_drain":
        [TB_OK, TB_ERR_NULL, TB_ERR_INVALID_ARG, TB_ERR_BAD_HANDLE];
    QueueWait = "tb_queue_wait":
        [TB_OK, TB_TIMED_OUT, TB_ERR_BAD_HANDLE, TB_ERR_ON_RUNTIME_THREAD];
    QueueStats = "tb_queue_get_stats":
        [TB_OK, TB_ERR_NULL, TB_ERR_INVALID_ARG, TB_ERR_BAD_HANDLE];
    QueueFree = "tb_queue_free": [TB_OK, TB_ERR_BAD_HANDLE];
    RuntimeNew = "tb_runtime_new": [TB_OK, TB_ERR_NULL, TB_ERR_INVALID_ARG, TB_ERR_OS];
    RuntimeDefault = "tb_runtime_default": [TB_OK, TB_ERR_NULL, TB_ERR_OS];
    RuntimeShutdown = "tb_runtime_shutdown": [TB_OK, TB_TIMED_OUT, TB_PENDING,
        TB_ERR_BAD_HANDLE, TB_ERR_SHUTDOWN, TB_ERR_INVALID_ARG];
    OnStall = "tb_runtime_on_stall":
        [TB_OK, TB_ERR_BAD_HANDLE, TB_ERR_SHUTDOWN, TB_ERR_INVALID_ARG];
    Sleep = "tb_sleep": [TB_OK, TB_ERR_NULL, TB_ERR_BAD_HANDLE, TB_ERR_SHUTDOWN];
    TimerStart = "tb_timer_start": [TB_OK, TB_ERR_NULL, TB_ERR_BAD_HANDLE, TB_ERR_SHUTDOWN];
}

/// How many calls of each function the tests made, by `Api` index.
static CALLS: [AtomicU64; ALL.len()] = [const { AtomicU64::new(0) }; ALL.len()];

/// Counts a call of `api` and checks that `status` is one the header documents for it.
pub fn documented(api: Api, status: tb_status) -> Result<(), String> {
    CALLS[api as usize].fetch_add(1, Ordering::Relaxed);
    if api.documented().contains(status) {
        Ok(())
    } else {
        Err(format!(
            "{} returned {} ({status}), which its documentation does not list (it lists {})",
            api.name(),
            status_name(status),
            api.documented().names().join(", ")
        ))
    }
}

/// Calls made so far, per function and in all.
pub fn calls() -> (Vec<(Api, u64)>, u64) {
    let per: Vec<(Api, u64)> = ALL
        .iter()
        .map(|&api| (api, CALLS[api as usize].load(Ordering::Relaxed)))
        .collect();
    let total = per.iter().map(|(_, n)| n).sum();
    (per, total)
}
