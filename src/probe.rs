//! The lateness probe: a periodic async tick that measures how late the runtime's workers run
//! it. Near zero while blocking work stays on the blocking pool; as long as the blocking call
//! when a worker is blocked.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::{tb_status, Error, TB_ERR_ALREADY, TB_OK};
use crate::metrics::{versioned_size, write_versioned};
use crate::panic::boundary;
use crate::runtime::{self, tb_runtime};
use crate::sync::lock;

/// Lateness of the probe's ticks, filled by `tb_runtime_probe_stats`.
///
/// Percentiles are over the last 65,536 ticks; `ticks`, `max_us` and `mean_us` over all ticks
/// since `tb_runtime_probe_start`. A tick's lateness is how long after its due time a worker
/// ran it; Tokio's timer has a 1 ms resolution, so an idle runtime shows up to ~1 ms.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct tb_probe_stats {
    /// `sizeof(tb_probe_stats)` as the caller knows it: set it before the call.
    pub struct_size: u32,
    /// The probe's period in ms, 0 if it never ran.
    pub period_ms: u32,
    /// Ticks measured.
    pub ticks: u64,
    /// Median lateness, in microseconds.
    pub p50_us: u64,
    /// 99th percentile of lateness, in microseconds.
    pub p99_us: u64,
    /// Largest lateness, in microseconds.
    pub max_us: u64,
    /// Mean lateness, in microseconds.
    pub mean_us: u64,
}

const WINDOW: usize = 65_536;
const MAX_PERIOD_MS: u32 = 60_000;

/// The lateness samples of one probe run.
#[derive(Default)]
struct Samples {
    recent: Vec<u32>,
    next: usize,
    ticks: u64,
    total_us: u64,
    max_us: u64,
}

impl Samples {
    fn record(&mut self, late_us: u64) {
        let sample = u32::try_from(late_us).unwrap_or(u32::MAX);
        if self.recent.len() < WINDOW {
            self.recent.push(sample);
        } else {
            self.recent[self.next] = sample;
        }
        self.next = (self.next + 1) % WINDOW;
        self.ticks += 1;
        self.total_us += late_us;
        self.max_us = self.max_us.max(late_us);
    }

    fn stats(&self, period_ms: u32) -> tb_probe_stats {
        let mut sorted = self.recent.clone();
        sorted.sort_unstable();
        let percentile = |p: usize| {
            sorted
                .get((sorted.len() * p / 100).min(sorted.len().saturating_sub(1)))
                .map_or(0, |&v| u64::from(v))
        };
        tb_probe_stats {
            struct_size: 0,
            period_ms,
            ticks: self.ticks,
            p50_us: percentile(50),
            p99_us: percentile(99),
            max_us: self.max_us,
            mean_us: self.total_us.checked_div(self.ticks).unwrap_or(0),
        }
    }
}

/// A runtime's probe: the running tick task, if any, and the samples of the last run.
#[derive(Default)]
pub(crate) struct Probe {
    running: Option<tokio::task::AbortHandle>,
    period_ms: u32,
    samples: Arc<Mutex<Samples>>,
}

async fn tick(period: Duration, samples: Arc<Mutex<Samples>>) {
    let mut due = tokio::time::Instant::now() + period;
    loop {
        tokio::time::sleep_until(due).await;
        let now = tokio::time::Instant::now();
        lock!(samples).record((now - due).as_micros() as u64);
        // Due times stay on the grid; ticks missed while the workers were busy are skipped.
        while due <= now {
            due += period;
        }
    }
}

/// Starts the lateness probe of runtime `rt`: a tick every `period_ms` (1 to 60000) on its
/// async workers, each measuring how late it runs. Statistics restart from zero.
///
/// The tick is an async task like a timer; it costs a few microseconds of worker time per
/// period. Read the results with `tb_runtime_probe_stats`. Errors: `TB_ERR_BAD_HANDLE`,
/// `TB_ERR_SHUTDOWN`, `TB_ERR_INVALID_ARG` (`period_ms`), `TB_ERR_ALREADY` (already running).
/// Any thread.
#[no_mangle]
pub extern "C" fn tb_runtime_probe_start(rt: tb_runtime, period_ms: u32) -> tb_status {
    boundary("tb_runtime_probe_start", || {
        if period_ms == 0 || period_ms > MAX_PERIOD_MS {
            return Err(Error::invalid(format!(
                "period_ms is {period_ms}; use 1 to {MAX_PERIOD_MS}"
            )));
        }
        let runtime = runtime::lookup(rt)?;
        let mut probe = lock!(runtime.probe);
        if probe.running.is_some() {
            return Err(Error::new(TB_ERR_ALREADY, "the probe is already running"));
        }
        let samples = Arc::new(Mutex::new(Samples::default()));
        let period = Duration::from_millis(u64::from(period_ms));
        let task = runtime.handle.spawn(tick(period, Arc::clone(&samples)));
        *probe = Probe {
            running: Some(task.abort_handle()),
            period_ms,
            samples,
        };
        Ok(TB_OK)
    })
}

/// Stops the lateness probe of runtime `rt`; its statistics stay readable.
///
/// Errors: `TB_ERR_BAD_HANDLE`, `TB_ERR_SHUTDOWN`, `TB_ERR_ALREADY` (not running). Any thread.
#[no_mangle]
pub extern "C" fn tb_runtime_probe_stop(rt: tb_runtime) -> tb_status {
    boundary("tb_runtime_probe_stop", || {
        let runtime = runtime::lookup(rt)?;
        let running = lock!(runtime.probe).running.take();
        running
            .ok_or_else(|| Error::new(TB_ERR_ALREADY, "the probe is not running"))?
            .abort();
        Ok(TB_OK)
    })
}

/// Fills `*out` with the lateness statistics of runtime `rt`'s probe (running or stopped).
///
/// Set `out->struct_size` first. All zero if the probe never ran. Errors: `TB_ERR_NULL`
/// (`out`), `TB_ERR_INVALID_ARG` (`struct_size`), `TB_ERR_BAD_HANDLE`, `TB_ERR_SHUTDOWN`.
/// Any thread.
#[no_mangle]
pub extern "C" fn tb_runtime_probe_stats(rt: tb_runtime, out: *mut tb_probe_stats) -> tb_status {
    boundary("tb_runtime_probe_stats", || {
        let size = versioned_size::<tb_probe_stats>(out.cast(), "tb_probe_stats")?;
        let runtime = runtime::lookup(rt)?;
        let (period_ms, samples) = {
            let probe = lock!(runtime.probe);
            (probe.period_ms, Arc::clone(&probe.samples))
        };
        let mut stats = lock!(samples).stats(period_ms);
        stats.struct_size = size as u32;
        // SAFETY: `out` is non-NULL and has `size <= sizeof(tb_probe_stats)` bytes.
        unsafe { write_versioned(&stats, out.cast(), size) };
        Ok(TB_OK)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_recent_window() {
        let mut samples = Samples::default();
        for late in 1..=100 {
            samples.record(late);
        }
        let stats = samples.stats(5);
        assert_eq!(
            (stats.ticks, stats.p50_us, stats.p99_us, stats.max_us),
            (100, 51, 100, 100)
        );
        assert_eq!(stats.mean_us, 50);
        for _ in 0..WINDOW {
            samples.record(7);
        }
        let stats = samples.stats(5);
        assert_eq!((stats.p50_us, stats.p99_us, stats.max_us), (7, 7, 100));
    }
}
