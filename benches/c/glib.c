/* GLib: GThreadPool. It has no completion handles, so each job reports its end the way a GLib
 * program would: through a GMutex and GCond the waiting thread sleeps on.
 *
 *   bench_glib roundtrip n= warmup=         push one no-op job at a time, wait on a GCond
 *   bench_glib noop n= window= threads=     n no-op jobs, at most `window` outstanding
 *   bench_glib sleep n= threads= sleep_us=  n jobs that sleep
 *
 * threads=0 is a pool without a thread limit (max_threads = -1), the closest to Tokio's grow on
 * demand; otherwise max_threads = threads. Pools are not exclusive (GLib's usual choice). */

#define _GNU_SOURCE
#include <glib.h>
#include <stdatomic.h>

#include "bench.h"

static GThreadPool *pool_new(GFunc func, uint64_t threads) {
    GError *error = NULL;
    GThreadPool *pool = g_thread_pool_new(func, NULL, threads ? (gint)threads : -1, FALSE, &error);
    if (!pool)
        bench_fail("g_thread_pool_new: %s", error->message);
    return pool;
}

static void push(GThreadPool *pool, gpointer data) {
    GError *error = NULL;
    if (!g_thread_pool_push(pool, data, &error))
        bench_fail("g_thread_pool_push: %s", error->message);
}

/* The round trip's job: stamps its end, then signals the waiting thread. */
struct stamped {
    GMutex lock;
    GCond done_cond;
    int done;
    uint64_t *end;
};

static struct stamped stamped;
static GThreadPool *round_trip_pool;

static void stamp_end(gpointer data, gpointer user) {
    struct stamped *s = data;
    (void)user;
    *s->end = bench_now_ns();
    g_mutex_lock(&s->lock);
    s->done = 1;
    g_cond_signal(&s->done_cond);
    g_mutex_unlock(&s->lock);
}

static uint64_t round_trip(uint64_t *end) {
    stamped.end = end;
    stamped.done = 0;
    push(round_trip_pool, &stamped);
    g_mutex_lock(&stamped.lock);
    while (!stamped.done)
        g_cond_wait(&stamped.done_cond, &stamped.lock);
    g_mutex_unlock(&stamped.lock);
    return bench_now_ns();
}

static void roundtrip(void) {
    g_mutex_init(&stamped.lock);
    g_cond_init(&stamped.done_cond);
    round_trip_pool = pool_new(stamp_end, 0);
    bench_round_trips(round_trip);
    g_thread_pool_free(round_trip_pool, FALSE, TRUE);
}

/* Jobs done so far; a job whose count reaches `wake_at` wakes the submitting thread. */
static atomic_size_t done, wake_at;
static GMutex done_lock;
static GCond done_cond;
static uint64_t sleep_us;

static void job(gpointer data, gpointer user) {
    (void)data;
    (void)user;
    if (sleep_us)
        bench_sleep_us(sleep_us);
    if (atomic_fetch_add(&done, 1) + 1 == atomic_load(&wake_at)) {
        g_mutex_lock(&done_lock);
        g_cond_signal(&done_cond);
        g_mutex_unlock(&done_lock);
    }
}

/* Sleeps until `target` jobs are done. The job that makes `done` equal `wake_at` either sees
 * the new `wake_at` and signals under the lock, or ran before it was stored, and then the load
 * of `done` below sees it (both are sequentially consistent). */
static void wait_done(size_t target) {
    if (atomic_load(&done) >= target)
        return;
    g_mutex_lock(&done_lock);
    atomic_store(&wake_at, target);
    while (atomic_load(&done) < target)
        g_cond_wait(&done_cond, &done_lock);
    g_mutex_unlock(&done_lock);
}

/* Runs `n` jobs with at most `window` outstanding; returns the elapsed ns. */
static uint64_t run_jobs(size_t n, size_t window, uint64_t threads) {
    GThreadPool *pool = pool_new(job, threads);
    uint64_t start = bench_now_ns();
    for (size_t i = 0; i < n; i++) {
        if (i >= window)
            wait_done(i - window + 1);
        push(pool, GSIZE_TO_POINTER(i + 1));
    }
    wait_done(n);
    uint64_t elapsed = bench_now_ns() - start;
    g_thread_pool_free(pool, FALSE, TRUE);
    return elapsed;
}

static void noop(void) {
    struct bench_jobs jobs = bench_jobs_args();
    bench_threads_start();
    double cpu = bench_cpu_s();
    uint64_t elapsed = run_jobs(jobs.n, jobs.window, jobs.threads);
    cpu = bench_cpu_s() - cpu;
    bench_report_jobs(jobs.n, elapsed, cpu, bench_threads_stop());
}

static void sleep_jobs(void) {
    struct bench_sleeps s = bench_sleeps_args();
    sleep_us = s.sleep_us;
    bench_threads_start();
    uint64_t elapsed = run_jobs(s.n, s.n, s.threads);
    bench_report_sleeps(&s, elapsed, bench_threads_stop());
}

int main(int argc, char **argv) {
    static const struct bench_mode modes[] = {
        {"roundtrip", roundtrip}, {"noop", noop}, {"sleep", sleep_jobs}};
    return bench_main(argc, argv, modes, sizeof modes / sizeof modes[0]);
}
