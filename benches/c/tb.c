/* tokio-bridge from C: every figure of the suite through the public API only.
 *
 *   bench_tb roundtrip n= warmup=          one no-op job at a time: submit, tb_task_wait
 *   bench_tb noop n= window= threads=      n no-op jobs, at most `window` outstanding
 *   bench_tb rounds n= k= threads=         n no-op jobs in rounds of k, each waited with
 *                                          tb_wait_all (fork-join; not in the suite)
 *   bench_tb sleep n= threads= sleep_us=   n jobs that sleep, on `threads` blocking threads
 *   bench_tb timers n= min_ms= max_ms=     n one-shot timers with random delays, all at once
 *   bench_tb complete n= warmup=           job end to tb_task_on_complete callback
 *   bench_tb calls n=                      calls that do no work, in ns
 *   bench_tb idle ms= burst=               CPU used by an idle runtime after a burst
 *
 * threads=0 is the library's default configuration (tb_runtime_new with NULL). */

#define _GNU_SOURCE
#include <pthread.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>

#include "bench.h"
#include "tokio_bridge.h"

static void check(tb_status status, const char *what) {
    char detail[512];
    if (status == TB_OK)
        return;
    tb_last_error(detail, sizeof detail);
    bench_fail("%s: %s (%s)", what, tb_status_name(status), detail);
}

static tb_runtime runtime(uint64_t blocking_threads) {
    tb_runtime rt;
    if (blocking_threads == 0) {
        check(tb_runtime_new(NULL, &rt), "tb_runtime_new");
    } else {
        tb_runtime_config cfg;
        tb_runtime_config_init(&cfg);
        cfg.max_blocking_threads = (uint32_t)blocking_threads;
        check(tb_runtime_new(&cfg, &rt), "tb_runtime_new");
    }
    return rt;
}

static void shutdown(tb_runtime rt) {
    check(tb_runtime_shutdown(rt, TB_FOREVER), "tb_runtime_shutdown");
}

static tb_task spawn(tb_runtime rt, tb_blocking_fn func, void *arg) {
    tb_task t;
    check(tb_spawn_blocking(rt, func, arg, NULL, &t), "tb_spawn_blocking");
    return t;
}

static void finish(tb_task t) {
    check(tb_task_wait(t, TB_FOREVER), "tb_task_wait");
    check(tb_task_release(t), "tb_task_release");
}

static int32_t nothing(void *arg, tb_job *job) {
    (void)arg;
    (void)job;
    return 0;
}

static int32_t stamp_end(void *arg, tb_job *job) {
    (void)job;
    *(uint64_t *)arg = bench_now_ns();
    return 0;
}

static void check_completed(tb_runtime rt, uint64_t jobs) {
    tb_metrics m;
    memset(&m, 0, sizeof m);
    m.struct_size = sizeof m;
    check(tb_runtime_metrics(rt, &m), "tb_runtime_metrics");
    if (m.jobs_completed != jobs || m.jobs_failed != 0)
        bench_fail("%llu jobs completed (%llu failed), expected %llu",
                   (unsigned long long)m.jobs_completed, (unsigned long long)m.jobs_failed,
                   (unsigned long long)jobs);
}

static tb_runtime runtime_in_use;

static uint64_t round_trip(uint64_t *end) {
    tb_task t = spawn(runtime_in_use, stamp_end, end);
    check(tb_task_wait(t, TB_FOREVER), "tb_task_wait");
    uint64_t woke = bench_now_ns();
    check(tb_task_release(t), "tb_task_release");
    return woke;
}

static void roundtrip(void) {
    runtime_in_use = runtime(0);
    size_t made = bench_round_trips(round_trip);
    check_completed(runtime_in_use, made);
    shutdown(runtime_in_use);
}

static void noop(void) {
    struct bench_jobs jobs = bench_jobs_args();
    size_t n = jobs.n, window = jobs.window;
    tb_runtime rt = runtime(jobs.threads);
    tb_task *ring = bench_calloc(window, sizeof *ring);
    bench_threads_start();
    double cpu = bench_cpu_s();
    uint64_t start = bench_now_ns();
    for (size_t i = 0; i < n; i++) {
        tb_task *slot = &ring[i % window];
        if (i >= window)
            finish(*slot);
        *slot = spawn(rt, nothing, NULL);
    }
    for (size_t i = n - window; i < n; i++)
        finish(ring[i % window]);
    uint64_t elapsed = bench_now_ns() - start;
    cpu = bench_cpu_s() - cpu;
    unsigned threads = bench_threads_stop();
    check_completed(rt, n);
    shutdown(rt);
    bench_report_jobs(n, elapsed, cpu, threads);
}

static void rounds(void) {
    size_t n = bench_arg("n", 200000), k = bench_arg("k", 16);
    uint64_t threads = bench_arg("threads", 0);
    bench_args_done();
    if (k == 0 || k > n)
        bench_fail("k must be in 1..n");
    tb_runtime rt = runtime(threads);
    tb_task *round = bench_calloc(k, sizeof *round);
    size_t made = n / k * k;
    uint64_t start = bench_now_ns();
    for (size_t done = 0; done < made; done += k) {
        for (size_t i = 0; i < k; i++)
            round[i] = spawn(rt, nothing, NULL);
        check(tb_wait_all(round, k, TB_FOREVER), "tb_wait_all");
        for (size_t i = 0; i < k; i++)
            check(tb_task_release(round[i]), "tb_task_release");
    }
    uint64_t elapsed = bench_now_ns() - start;
    check_completed(rt, made);
    shutdown(rt);
    bench_report("us_per_round", (double)elapsed / 1e3 / (double)(made / k));
    bench_report("mops", (double)made / (double)elapsed * 1e3);
}

static int32_t sleeper(void *arg, tb_job *job) {
    (void)job;
    bench_sleep_us(*(const uint64_t *)arg);
    return 0;
}

static void sleep_jobs(void) {
    struct bench_sleeps s = bench_sleeps_args();
    tb_runtime rt = runtime(s.threads);
    tb_task *tasks = bench_calloc(s.n, sizeof *tasks);
    bench_threads_start();
    uint64_t start = bench_now_ns();
    for (size_t i = 0; i < s.n; i++)
        tasks[i] = spawn(rt, sleeper, &s.sleep_us);
    for (size_t i = 0; i < s.n; i++)
        finish(tasks[i]);
    uint64_t elapsed = bench_now_ns() - start;
    unsigned threads = bench_threads_stop();
    check_completed(rt, s.n);
    shutdown(rt);
    bench_report_sleeps(&s, elapsed, threads);
}

/* What the timers saw when they fired, kept per thread so that the workers firing timers do
 * not contend on one cache line: each thread updates its own shard, chosen on first use. */
struct fired {
    alignas(128) atomic_uint_fast64_t count;
    atomic_uint_fast64_t late_sum_ns, late_max_ns, last_ns;
};

#define SHARDS 64
static struct fired fired[SHARDS];

static struct fired *my_shard(void) {
    static atomic_uint next;
    static _Thread_local struct fired *mine;
    if (!mine)
        mine = &fired[atomic_fetch_add(&next, 1) % SHARDS];
    return mine;
}

static void store_max(atomic_uint_fast64_t *max, uint64_t value) {
    uint64_t seen = atomic_load_explicit(max, memory_order_relaxed);
    while (value > seen &&
           !atomic_compare_exchange_weak_explicit(max, &seen, value, memory_order_relaxed,
                                                  memory_order_relaxed)) {
    }
}

/* One-shot timer callback; `arg` carries the due time in ns. */
static int32_t fire(void *arg, uint64_t tick) {
    (void)tick;
    uint64_t now = bench_now_ns(), due = (uint64_t)(uintptr_t)arg;
    uint64_t late = now > due ? now - due : 0;
    struct fired *f = my_shard();
    atomic_fetch_add_explicit(&f->late_sum_ns, late, memory_order_relaxed);
    store_max(&f->late_max_ns, late);
    store_max(&f->last_ns, now);
    atomic_fetch_add_explicit(&f->count, 1, memory_order_release);
    return 0;
}

struct fired_total {
    uint64_t count, late_sum_ns, late_max_ns, last_ns;
};

/* The shards summed up. */
static struct fired_total fired_total(void) {
    struct fired_total t = {0, 0, 0, 0};
    for (size_t i = 0; i < SHARDS; i++) {
        uint64_t late_max = atomic_load_explicit(&fired[i].late_max_ns, memory_order_relaxed);
        uint64_t last = atomic_load_explicit(&fired[i].last_ns, memory_order_relaxed);
        t.count += atomic_load_explicit(&fired[i].count, memory_order_acquire);
        t.late_sum_ns += atomic_load_explicit(&fired[i].late_sum_ns, memory_order_relaxed);
        t.late_max_ns = late_max > t.late_max_ns ? late_max : t.late_max_ns;
        t.last_ns = last > t.last_ns ? last : t.last_ns;
    }
    return t;
}

static void timers(void) {
    struct bench_timers r = {.n = bench_arg("n", 1000000)};
    uint64_t min_ms = bench_arg("min_ms", 10), max_ms = bench_arg("max_ms", 1000);
    bench_args_done();
    tb_runtime rt = runtime(0);
    tb_task warm;
    check(tb_sleep(rt, 1, &warm), "tb_sleep");
    finish(warm);
    bench_threads_start();
    r.rss_kib = bench_rss_kib();
    tb_task *tasks = bench_calloc(r.n, sizeof *tasks);
    r.start_ns = bench_now_ns();
    for (size_t i = 0; i < r.n; i++) {
        uint64_t delay = bench_delay_ms(i, min_ms, max_ms);
        void *due = (void *)(uintptr_t)(bench_now_ns() + delay * 1000000);
        check(tb_timer_start(rt, delay, 0, fire, due, NULL, &tasks[i]), "tb_timer_start");
    }
    r.submitted_ns = bench_now_ns();
    while (fired_total().count < r.n)
        bench_sleep_us(1000);
    r.peak_rss_kib = bench_peak_rss_kib();
    r.threads = bench_threads_stop();
    for (size_t i = 0; i < r.n; i++)
        finish(tasks[i]);
    shutdown(rt);
    struct fired_total total = fired_total();
    r.last_fire_ns = total.last_ns;
    r.late_sum_ns = total.late_sum_ns;
    r.late_max_ns = total.late_max_ns;
    bench_report_timers(&r);
}

struct completion {
    atomic_bool registered;
    uint64_t end;
    uint64_t called;
};

/* Waits until the callback is registered, so that it runs on the completion path and not at
 * once in tb_task_on_complete (a no-op job would often be over before the registration). */
static int32_t end_after_registration(void *arg, tb_job *job) {
    struct completion *c = arg;
    (void)job;
    while (!atomic_load_explicit(&c->registered, memory_order_acquire)) {
    }
    c->end = bench_now_ns();
    return 0;
}

static void on_complete(void *arg, tb_task t, const tb_outcome *outcome) {
    (void)t;
    struct completion *c = arg;
    c->called = bench_now_ns();
    if (outcome->status != TB_OK)
        bench_fail("the job ended with %s", tb_status_name(outcome->status));
}

static void complete(void) {
    size_t n = bench_arg("n", 20000), warmup = bench_arg("warmup", 1000);
    bench_args_done();
    tb_runtime rt = runtime(0);
    uint64_t *latency = bench_calloc(n, sizeof *latency);
    for (size_t i = 0; i < warmup + n; i++) {
        struct completion c = {.end = 0, .called = 0};
        atomic_init(&c.registered, false);
        tb_task t = spawn(rt, end_after_registration, &c);
        check(tb_task_on_complete(t, on_complete, &c), "tb_task_on_complete");
        atomic_store_explicit(&c.registered, true, memory_order_release);
        finish(t);
        if (c.called == 0 || c.end == 0)
            bench_fail("the job or its completion callback did not run");
        if (i >= warmup)
            latency[i - warmup] = c.called - c.end;
    }
    shutdown(rt);
    bench_report_latency("cb", latency, n);
}

static tb_task live_task;
static size_t poll_calls;

static void *poll_loop(void *arg) {
    (void)arg;
    for (size_t i = 0; i < poll_calls; i++)
        if (tb_task_poll(live_task) != TB_PENDING)
            bench_fail("tb_task_poll: the live task is not pending");
    return NULL;
}

static double ns_per_call(uint64_t start, size_t n) {
    return (double)(bench_now_ns() - start) / (double)n;
}

static void calls(void) {
    size_t n = bench_arg("n", 2000000);
    bench_args_done();
    tb_runtime rt = runtime(0);
    tb_task stale = spawn(rt, nothing, NULL);
    finish(stale);
    check(tb_sleep(rt, 3600 * 1000, &live_task), "tb_sleep");
    poll_calls = n;

    uint64_t start = bench_now_ns();
    poll_loop(NULL);
    bench_report("poll_ns", ns_per_call(start, n));

    pthread_t other;
    start = bench_now_ns();
    if (pthread_create(&other, NULL, poll_loop, NULL) != 0)
        bench_fail("pthread_create");
    poll_loop(NULL);
    pthread_join(other, NULL);
    bench_report("poll_2threads_ns", ns_per_call(start, n));

    tb_outcome outcome;
    start = bench_now_ns();
    for (size_t i = 0; i < n; i++)
        if (tb_task_outcome(live_task, &outcome) != TB_PENDING)
            bench_fail("tb_task_outcome: the live task is not pending");
    bench_report("outcome_ns", ns_per_call(start, n));

    start = bench_now_ns();
    for (size_t i = 0; i < n; i++)
        if (tb_task_poll(stale) != TB_ERR_BAD_HANDLE)
            bench_fail("tb_task_poll: a released handle is not refused");
    bench_report("bad_handle_ns", ns_per_call(start, n));

    start = bench_now_ns();
    for (size_t i = 0; i < n; i++)
        if (tb_version() != TB_VERSION_HEX)
            bench_fail("tb_version");
    bench_report("version_ns", ns_per_call(start, n));

    check(tb_task_cancel(live_task), "tb_task_cancel");
    finish(live_task);
    shutdown(rt);
}

static void idle(void) {
    uint64_t ms = bench_arg("ms", 1000);
    size_t burst = bench_arg("burst", 10000);
    bench_args_done();
    tb_runtime rt = runtime(0);
    tb_task *tasks = bench_calloc(burst, sizeof *tasks);
    for (size_t i = 0; i < burst; i++)
        tasks[i] = spawn(rt, nothing, NULL);
    for (size_t i = 0; i < burst; i++)
        finish(tasks[i]);
    bench_sleep_us(100000);
    double cpu = bench_cpu_s();
    bench_sleep_us(ms * 1000);
    cpu = bench_cpu_s() - cpu;
    shutdown(rt);
    bench_report("idle_cpu_ms_per_s", cpu * 1e3 / ((double)ms / 1e3));
}

int main(int argc, char **argv) {
    static const struct bench_mode modes[] = {
        {"roundtrip", roundtrip}, {"noop", noop},   {"rounds", rounds}, {"sleep", sleep_jobs},
        {"timers", timers},       {"complete", complete}, {"calls", calls}, {"idle", idle}};
    return bench_main(argc, argv, modes, sizeof modes / sizeof modes[0]);
}
