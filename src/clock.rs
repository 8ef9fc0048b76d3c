//! The library's clocks: [`now_ns`], the monotonic clock in nanoseconds, and [`stamp`], a
//! cheaper time stamp for the intervals measured on the path of every blocking job: how long
//! it waited in the queue and how long it ran.
//!
//! Reading the monotonic clock costs about 22 ns on the development machine (the vDSO's
//! `clock_gettime`), which was a sixth of what a submitting thread spends per no-op job.
//! Where the kernel itself keeps time with the CPU's time-stamp counter (x86-64, an invariant
//! counter, clocksource `tsc`: the kernel checked that the CPUs' counters agree), a stamp is
//! that counter, read in about 10 ns; elsewhere it is [`now_ns`]. Stamps are converted to
//! nanoseconds only as differences ([`nanos_between`]), at the counter's rate measured against
//! the monotonic clock since the first stamp; that rate is fixed once a second has passed, and
//! measured again until then each time the time since the first stamp has grown by a
//! sixteenth (not at every conversion: a pair of readings costs more than the rest of a quick
//! job's bookkeeping).
//! Timers never use stamps: they keep [`now_ns`], which Tokio's timer follows too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Nanoseconds on the monotonic clock (since boot), never 0: a time that fits an atomic, read
/// without the arithmetic of `Instant`.
pub(crate) fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own; CLOCK_MONOTONIC cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64).max(1)
}

/// Microseconds from `from` to `to`, two [`now_ns`] readings; 0 if `to` is earlier.
pub(crate) fn micros_between(from: u64, to: u64) -> u64 {
    to.saturating_sub(from) / 1000
}

/// What stamps are.
#[derive(Debug)]
enum Source {
    /// The time-stamp counter, first read at `ticks0` when the monotonic clock read `ns0`.
    Counter { ticks0: u64, ns0: u64 },
    /// [`now_ns`] itself.
    Monotonic,
}

static SOURCE: OnceLock<Source> = OnceLock::new();
/// Nanoseconds per counter tick, in 32.32 fixed point, once fixed (0 until then).
static RATE: AtomicU64 = AtomicU64::new(0);
/// How long after the first stamp the counter's rate is fixed: by then a pair of readings a
/// few tens of nanoseconds apart gives it to better than one part in ten million.
const FIX_RATE_AFTER_NS: u64 = 1_000_000_000;

fn source() -> &'static Source {
    SOURCE.get_or_init(|| match counter_is_usable() {
        true => {
            let (ticks0, ns0) = paired_reading();
            Source::Counter { ticks0, ns0 }
        }
        false => Source::Monotonic,
    })
}

/// Decides what stamps are (which reads a file): called as a runtime starts, so that its first
/// submission does not.
pub(crate) fn prepare() {
    source();
}

/// A time stamp for [`nanos_between`]. Any thread; stamps from different threads compare.
pub(crate) fn stamp() -> u64 {
    match source() {
        Source::Counter { .. } => counter(),
        Source::Monotonic => now_ns(),
    }
}

/// Nanoseconds from stamp `from` to stamp `to`; 0 if `to` is earlier.
pub(crate) fn nanos_between(from: u64, to: u64) -> u64 {
    let ticks = to.saturating_sub(from);
    match *source() {
        Source::Counter { ticks0, ns0 } => {
            ((u128::from(ticks) * u128::from(rate(ticks0, ns0, to))) >> 32) as u64
        }
        Source::Monotonic => ticks,
    }
}

/// The stamp `ns` nanoseconds after stamp `from`, at the counter's rate as known now: a
/// deadline that later stamps compare with directly, without [`nanos_between`]'s conversion.
pub(crate) fn stamp_after(from: u64, ns: u64) -> u64 {
    match *source() {
        Source::Counter { ticks0, ns0 } => {
            let ticks = (u128::from(ns) << 32) / u128::from(rate(ticks0, ns0, from));
            from.saturating_add(u64::try_from(ticks).unwrap_or(u64::MAX))
        }
        Source::Monotonic => from.saturating_add(ns),
    }
}

/// Until the rate is fixed: the last one measured (0: none yet), and the counter's reading from
/// which it is measured again.
static PROVISIONAL_RATE: AtomicU64 = AtomicU64::new(0);
static REMEASURE_AT: AtomicU64 = AtomicU64::new(0);

/// The counter's rate: fixed, or the one last measured from the first reading, or measured now
/// if the time since the first reading had grown by a sixteenth since by `now` (a recent
/// reading of the counter). Threads racing here may store each other's measurements: any
/// recent one will do.
fn rate(ticks0: u64, ns0: u64, now: u64) -> u64 {
    let fixed = RATE.load(Ordering::Relaxed);
    if fixed != 0 {
        return fixed;
    }
    let provisional = PROVISIONAL_RATE.load(Ordering::Relaxed);
    if provisional != 0 && now < REMEASURE_AT.load(Ordering::Relaxed) {
        return provisional;
    }
    let (ticks, ns) = paired_reading();
    let elapsed_ns = ns.saturating_sub(ns0);
    let elapsed_ticks = ticks.saturating_sub(ticks0).max(1);
    let rate = ((u128::from(elapsed_ns) << 32) / u128::from(elapsed_ticks)).max(1) as u64;
    if elapsed_ns >= FIX_RATE_AFTER_NS {
        RATE.store(rate, Ordering::Relaxed);
    } else {
        PROVISIONAL_RATE.store(rate, Ordering::Relaxed);
        REMEASURE_AT.store(ticks + elapsed_ticks / 16, Ordering::Relaxed);
    }
    rate
}

/// The counter and the monotonic clock read together: the clock between two readings of the
/// counter, retried a few times if the thread was interrupted in between.
fn paired_reading() -> (u64, u64) {
    /// About 7 us at 3 GHz: an interrupt or a preemption, not the clock's own cost.
    const INTERRUPTED_TICKS: u64 = 20_000;
    let mut best = (0, 0, u64::MAX);
    for _ in 0..5 {
        let before = counter();
        let ns = now_ns();
        let after = counter();
        let width = after.saturating_sub(before);
        if width < best.2 {
            best = (before + width / 2, ns, width);
        }
        if width < INTERRUPTED_TICKS {
            break;
        }
    }
    (best.0, best.1)
}

#[cfg(all(target_arch = "x86_64", not(miri)))]
fn counter() -> u64 {
    // SAFETY: RDTSC exists on every x86-64 CPU.
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(not(all(target_arch = "x86_64", not(miri))))]
fn counter() -> u64 {
    now_ns()
}

/// True if the CPU's counter runs at a constant rate in every power state (CPUID's invariant
/// TSC) and the kernel keeps time with it (so it found the CPUs' counters in step).
#[cfg(all(target_arch = "x86_64", not(miri)))]
fn counter_is_usable() -> bool {
    use core::arch::x86_64::__cpuid;
    const INVARIANT_TSC: u32 = 1 << 8;
    // Leaf 0x80000007 is read only if the CPU reports it.
    __cpuid(0x8000_0000).eax >= 0x8000_0007
        && __cpuid(0x8000_0007).edx & INVARIANT_TSC != 0
        && std::fs::read_to_string(
            "/sys/devices/system/clocksource/clocksource0/current_clocksource",
        )
        .is_ok_and(|source| source.trim() == "tsc")
}

#[cfg(not(all(target_arch = "x86_64", not(miri))))]
fn counter_is_usable() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stamps measure what the monotonic clock measures, within a generous margin (the test
    /// thread may be preempted between the two clocks' readings).
    #[test]
    fn stamps_measure_intervals_as_the_monotonic_clock_does() {
        let (start_stamp, start_ns) = (stamp(), now_ns());
        std::thread::sleep(std::time::Duration::from_millis(20));
        let (end_stamp, end_ns) = (stamp(), now_ns());
        let by_stamps = nanos_between(start_stamp, end_stamp) as f64;
        let by_clock = (end_ns - start_ns) as f64;
        assert!(
            (0.8..1.25).contains(&(by_stamps / by_clock)),
            "stamps {by_stamps} ns, clock {by_clock} ns ({:?})",
            source()
        );
        assert_eq!(nanos_between(end_stamp, start_stamp), 0, "never negative");
        let later = stamp_after(end_stamp, 5_000_000);
        let back = nanos_between(end_stamp, later) as f64;
        assert!(
            (4_990_000.0..5_010_000.0).contains(&back),
            "5 ms on, {back} ns back"
        );
    }
}
