/* Helpers shared by the C benchmark programs: arguments, clocks, statistics, thread counts,
 * memory and CPU use, and the delays of the timer benchmark.
 *
 * Every program is run as `PROGRAM MODE key=value...` by benches/run.py and prints one
 * `metric value` line per result on stdout. A program that finds its work not done exits
 * non-zero: a figure is only printed for work that really happened. */

#ifndef TB_BENCH_H
#define TB_BENCH_H

#include <stddef.h>
#include <stdint.h>

/* A mode of a benchmark program: `PROGRAM name key=value...` calls `run`. */
struct bench_mode {
    const char *name;
    void (*run)(void);
};

/* Reads `MODE key=value...` and runs the mode of that name; returns main's exit status. */
int bench_main(int argc, char **argv, const struct bench_mode *modes, size_t count);
/* The value of `key=`, or `fallback` when it is not given. */
uint64_t bench_arg(const char *key, uint64_t fallback);
/* Exits with an error if an argument was given that no bench_arg call asked for. */
void bench_args_done(void);

/* Prints a message to stderr and exits with status 1. */
void bench_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
/* calloc that exits on failure. */
void *bench_calloc(size_t n, size_t size);
/* Prints `name value`. */
void bench_report(const char *name, double value);
/* Sorts `ns` and prints `<prefix>_p50_us`, `<prefix>_p99_us` and `<prefix>_mean_us`. */
void bench_report_latency(const char *prefix, uint64_t *ns, size_t n);

/* CLOCK_MONOTONIC in nanoseconds: comparable between threads. */
uint64_t bench_now_ns(void);
/* Sleeps for `us` microseconds (nanosleep). */
void bench_sleep_us(uint64_t us);
/* CPU time of the whole process so far (user + system), in seconds. */
double bench_cpu_s(void);
/* Resident set size now and at its peak (VmRSS, VmHWM), in KiB. */
uint64_t bench_rss_kib(void);
uint64_t bench_peak_rss_kib(void);

/* Starts sampling the number of threads of the process (/proc/self/task) every 5 ms. */
void bench_threads_start(void);
/* Stops sampling; returns the most threads seen, not counting the main thread and the
 * sampler. */
unsigned bench_threads_stop(void);

/* Round trips. `one` submits a job that stamps its end into `*end`, waits for it, and returns
 * the time the waiting thread ran again. Reads n= and warmup=, makes `warmup` unmeasured round
 * trips then n measured ones, and prints rt_* and wake_* latencies (bench_report_latency) and
 * cpu_us_per_op, the process's CPU time per round trip. Returns how many round trips it made. */
size_t bench_round_trips(uint64_t (*one)(uint64_t *end));

/* The arguments of a throughput case: n= jobs, at most window= outstanding (default n),
 * threads= (0: the peer's default). Checks them and that no other was given. */
struct bench_jobs {
    size_t n, window;
    uint64_t threads;
};
struct bench_jobs bench_jobs_args(void);
/* Prints mops, cpu_s and threads. */
void bench_report_jobs(size_t n, uint64_t elapsed_ns, double cpu_s, unsigned threads);

/* The arguments of the sleeping-jobs case: n= jobs that each sleep sleep_us= on threads=. */
struct bench_sleeps {
    size_t n;
    uint64_t threads, sleep_us;
};
struct bench_sleeps bench_sleeps_args(void);
/* Prints kjobs_per_s, efficiency (the fraction of n * sleep_us / threads) and threads. */
void bench_report_sleeps(const struct bench_sleeps *s, uint64_t elapsed_ns, unsigned threads);

/* What a timer case saw, printed by bench_report_timers as wall_s (first start to last fire),
 * submit_s, bytes_per_timer (peak RSS growth over n), late_mean_ms, late_max_ms, threads. */
struct bench_timers {
    size_t n;
    uint64_t start_ns, submitted_ns, last_fire_ns, rss_kib, peak_rss_kib, late_sum_ns,
        late_max_ns;
    unsigned threads;
};
void bench_report_timers(const struct bench_timers *t);

/* The delay of timer `i`, uniform in [min_ms, max_ms]: the same sequence in every program
 * (splitmix64 of i), the native Tokio one included. */
uint64_t bench_delay_ms(uint64_t i, uint64_t min_ms, uint64_t max_ms);

#endif
