/* libuv: uv_queue_work on its thread pool, and uv_timer_t on the loop thread.
 *
 *   bench_uv roundtrip n= warmup=         one no-op work request at a time, loop run until done
 *   bench_uv noop n= window= threads=     n no-op requests, at most `window` outstanding
 *   bench_uv sleep n= threads= sleep_us=  n requests that sleep
 *   bench_uv timers n= min_ms= max_ms=    n one-shot timers with random delays, all at once
 *
 * threads=0 keeps libuv's default pool (4 threads); otherwise UV_THREADPOOL_SIZE is set before
 * the pool starts. The wake latency of a round trip is from the end of the work callback to the
 * start of the after-work callback on the loop thread. */

#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "bench.h"

static void check(int status, const char *what) {
    if (status != 0)
        bench_fail("%s: %s", what, uv_strerror(status));
}

static void set_pool_size(uint64_t threads) {
    char value[32];
    if (threads == 0)
        return;
    snprintf(value, sizeof value, "%llu", (unsigned long long)threads);
    setenv("UV_THREADPOOL_SIZE", value, 1);
}

struct stamped {
    uv_work_t req;
    uint64_t *end_slot;
    uint64_t woke;
};

static struct stamped stamped;

static void work_stamp(uv_work_t *req) { *((struct stamped *)req)->end_slot = bench_now_ns(); }

static void after_stamp(uv_work_t *req, int status) {
    check(status, "work request");
    ((struct stamped *)req)->woke = bench_now_ns();
}

static uint64_t round_trip(uint64_t *end) {
    uv_loop_t *loop = uv_default_loop();
    stamped.end_slot = end;
    stamped.woke = 0;
    check(uv_queue_work(loop, &stamped.req, work_stamp, after_stamp), "uv_queue_work");
    while (stamped.woke == 0)
        uv_run(loop, UV_RUN_ONCE);
    return stamped.woke;
}

static void roundtrip(void) {
    bench_round_trips(round_trip);
    check(uv_loop_close(uv_default_loop()), "uv_loop_close");
}

static size_t jobs, submitted, completed;
static uint64_t sleep_us;

static void work_nothing(uv_work_t *req) { (void)req; }

static void work_sleep(uv_work_t *req) {
    (void)req;
    bench_sleep_us(sleep_us);
}

/* Counts the request and reuses it for the next job, keeping the window full. */
static void after_job(uv_work_t *req, int status) {
    check(status, "work request");
    completed++;
    if (submitted < jobs) {
        submitted++;
        check(uv_queue_work(req->loop, req, sleep_us ? work_sleep : work_nothing, after_job),
              "uv_queue_work");
    }
}

/* Runs `n` jobs with at most `window` outstanding; returns the elapsed ns. */
static uint64_t run_jobs(size_t n, size_t window) {
    uv_loop_t *loop = uv_default_loop();
    uv_work_t *reqs = bench_calloc(window, sizeof *reqs);
    jobs = n;
    uint64_t start = bench_now_ns();
    for (submitted = 0; submitted < window;) {
        submitted++;
        check(uv_queue_work(loop, &reqs[submitted - 1], sleep_us ? work_sleep : work_nothing,
                            after_job),
              "uv_queue_work");
    }
    uv_run(loop, UV_RUN_DEFAULT);
    uint64_t elapsed = bench_now_ns() - start;
    if (completed != n)
        bench_fail("%zu jobs completed, expected %zu", completed, n);
    check(uv_loop_close(loop), "uv_loop_close");
    free(reqs);
    return elapsed;
}

static void noop(void) {
    struct bench_jobs jobs = bench_jobs_args();
    set_pool_size(jobs.threads);
    bench_threads_start();
    double cpu = bench_cpu_s();
    uint64_t elapsed = run_jobs(jobs.n, jobs.window);
    cpu = bench_cpu_s() - cpu;
    bench_report_jobs(jobs.n, elapsed, cpu, bench_threads_stop());
}

static void sleep_jobs(void) {
    struct bench_sleeps s = bench_sleeps_args();
    sleep_us = s.sleep_us;
    set_pool_size(s.threads);
    bench_threads_start();
    uint64_t elapsed = run_jobs(s.n, s.n);
    bench_report_sleeps(&s, elapsed, bench_threads_stop());
}

static size_t fired;
static uint64_t late_sum_ns, late_max_ns, last_fire_ns;

/* One-shot timer callback; the handle's data carries the due time in ns. */
static void fire(uv_timer_t *timer) {
    uint64_t now = bench_now_ns(), due = (uint64_t)(uintptr_t)timer->data;
    uint64_t late = now > due ? now - due : 0;
    late_sum_ns += late;
    if (late > late_max_ns)
        late_max_ns = late;
    last_fire_ns = now;
    fired++;
}

static void timers(void) {
    struct bench_timers r = {.n = bench_arg("n", 1000000)};
    uint64_t min_ms = bench_arg("min_ms", 10), max_ms = bench_arg("max_ms", 1000);
    bench_args_done();
    uv_loop_t *loop = uv_default_loop();
    bench_threads_start();
    r.rss_kib = bench_rss_kib();
    uv_timer_t *handles = bench_calloc(r.n, sizeof *handles);
    r.start_ns = bench_now_ns();
    for (size_t i = 0; i < r.n; i++) {
        uint64_t delay = bench_delay_ms(i, min_ms, max_ms);
        /* Like the others, each timer is due `delay` after its own start call: the loop's
           cached time is brought up to date first. */
        uv_update_time(loop);
        handles[i].data = (void *)(uintptr_t)(bench_now_ns() + delay * 1000000);
        check(uv_timer_init(loop, &handles[i]), "uv_timer_init");
        check(uv_timer_start(&handles[i], fire, delay, 0), "uv_timer_start");
    }
    r.submitted_ns = bench_now_ns();
    uv_run(loop, UV_RUN_DEFAULT);
    r.peak_rss_kib = bench_peak_rss_kib();
    r.threads = bench_threads_stop();
    if (fired != r.n)
        bench_fail("%zu timers fired, expected %zu", fired, r.n);
    for (size_t i = 0; i < r.n; i++)
        uv_close((uv_handle_t *)&handles[i], NULL);
    uv_run(loop, UV_RUN_DEFAULT);
    check(uv_loop_close(loop), "uv_loop_close");
    r.last_fire_ns = last_fire_ns;
    r.late_sum_ns = late_sum_ns;
    r.late_max_ns = late_max_ns;
    bench_report_timers(&r);
}

int main(int argc, char **argv) {
    static const struct bench_mode modes[] = {
        {"roundtrip", roundtrip}, {"noop", noop}, {"sleep", sleep_jobs}, {"timers", timers}};
    return bench_main(argc, argv, modes, sizeof modes / sizeof modes[0]);
}
