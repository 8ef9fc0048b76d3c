/* demo: the claims of the guide tokio-bridge grew from, measured one by one from C.
 *
 * Each row states a claim, what was measured on which runtime shape, and a verdict, plus what
 * the library itself saw meanwhile: the worst p99 lateness of a 5 ms probe tick and the number
 * of stalls (C callbacks that held an async worker for more than 10 ms). The blocking work
 * comes from the simulated blocking library (tests/c/simlib.c): sleeps standing for driver
 * round trips, and a CPU loop. Prints a markdown table. */
#include <stdatomic.h>
#include <stdarg.h>

#include "example.h"

typedef struct row {
    const char *claim;
    char measured[160];
    const char *verdict;
    double probe_p99_ms; /* -1: no probe during this claim */
    uint64_t stalls;
} row;

/* What the runtime saw during a scenario: the probe's lateness and the stalls. */
static tb_metrics watched_from;

static void watch(tb_runtime rt) {
    watched_from.struct_size = sizeof watched_from;
    TRY(tb_runtime_metrics(rt, &watched_from));
    TRY(tb_runtime_probe_start(rt, 5));
}

static void unwatch(tb_runtime rt, row *r) {
    tb_probe_stats probe = {.struct_size = sizeof probe};
    tb_metrics now = {.struct_size = sizeof now};
    sim_sleep_ms(15); /* the watchdog reports stalls that just ended within 5 ms */
    TRY(tb_runtime_probe_stats(rt, &probe));
    TRY(tb_runtime_probe_stop(rt));
    TRY(tb_runtime_metrics(rt, &now));
    if ((double)probe.p99_us / 1000 > r->probe_p99_ms) {
        r->probe_p99_ms = (double)probe.p99_us / 1000;
    }
    r->stalls += now.stalls - watched_from.stalls;
}

static void say(row *r, const char *verdict, const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    vsnprintf(r->measured, sizeof r->measured, fmt, args);
    va_end(args);
    r->verdict = verdict;
}

/* ---- work used by the claims ---- */

static atomic_int ticks;
static double due_at, late_by;

static int32_t count_tick(void *arg, uint64_t tick) {
    (void)arg;
    (void)tick;
    atomic_fetch_add(&ticks, 1);
    return 0;
}

static int32_t record_lateness(void *arg, uint64_t tick) {
    (void)arg;
    (void)tick;
    late_by = sim_now_ms() - due_at;
    return 0;
}

/* A blocking library call of `arg` ms, in a timer callback (wrong) or a blocking job (right). */
static int32_t sleep_in_timer(void *arg, uint64_t tick) {
    (void)tick;
    return sim_ffi_call(0, (unsigned)(intptr_t)arg);
}

static int32_t sleep_in_job(void *arg, tb_job *job) {
    (void)job;
    return sim_ffi_call(0, (unsigned)(intptr_t)arg);
}

static int32_t sum_in_timer(void *arg, uint64_t tick) {
    (void)tick;
    *(uint64_t *)arg = sim_cpu_sum(1000000000ULL);
    return 0;
}

static int32_t sum_in_job(void *arg, tb_job *job) {
    (void)job;
    *(uint64_t *)arg = sim_cpu_sum(1000000000ULL);
    return 0;
}

static int32_t chunks(void *arg, tb_job *job) {
    (void)arg;
    return (int32_t)sim_chunked(1000, 10, job);
}

static int32_t nothing(void *arg, tb_job *job) {
    (void)arg;
    (void)job;
    return 0;
}

/* Runs `n` copies of a sleep of `ms`, in timer callbacks or as jobs, watched for `r`; returns
 * the wall time. */
static double sleeps(tb_runtime rt, int on_pool, int n, unsigned ms, row *r) {
    tb_task t[32];
    watch(rt);
    double start = sim_now_ms();
    for (int i = 0; i < n; i++) {
        if (on_pool) {
            TRY(tb_spawn_blocking(rt, sleep_in_job, (void *)(intptr_t)ms, NULL, &t[i]));
        } else {
            TRY(tb_timer_start(rt, 0, 0, sleep_in_timer, (void *)(intptr_t)ms, NULL, &t[i]));
        }
    }
    TRY(tb_wait_all(t, (size_t)n, TB_FOREVER));
    double took = sim_now_ms() - start;
    for (int i = 0; i < n; i++) {
        finish(t[i]);
    }
    unwatch(rt, r);
    return took;
}

/* Waits for `work`, started at `start`; returns the ticks counted meanwhile, fills the time. */
static int ticks_until_done(tb_task work, double start, double *took) {
    finish(work);
    *took = sim_now_ms() - start;
    return atomic_load(&ticks);
}

static tb_task ticker(tb_runtime rt, unsigned period) {
    tb_task t;
    TRY(tb_timer_start(rt, period, period, count_tick, NULL, NULL, &t));
    sim_sleep_ms(3 * period);
    atomic_store(&ticks, 0);
    return t;
}

static void stop(tb_task t) {
    TRY(tb_task_cancel(t));
    finish(t);
}

/* ---- the claims ---- */

static void four_blocking_tasks(row *wrong_place, row *right_place) {
    double on_workers[3], on_pool[3];
    static const uint32_t flavors[] = {TB_MULTI_THREAD, TB_MULTI_THREAD, TB_CURRENT_THREAD};
    static const uint32_t workers[] = {4, 1, 1};
    for (int i = 0; i < 3; i++) {
        tb_runtime rt = runtime_with(flavors[i], workers[i], 0);
        on_workers[i] = sleeps(rt, 0, 4, 100, wrong_place);
        on_pool[i] = sleeps(rt, 1, 4, 100, right_place);
        TRY(tb_runtime_shutdown(rt, TB_FOREVER));
    }
    say(wrong_place, "wrong",
        "%.0f ms on 4 workers (they block in parallel, all 4 stuck); %.0f on 1 worker; %.0f on "
        "current-thread",
        on_workers[0], on_workers[1], on_workers[2]);
    say(right_place, "true", "%.0f / %.0f / %.0f ms on 4 workers / 1 worker / current-thread",
        on_pool[0], on_pool[1], on_pool[2]);
}

static void others_delayed(row *r) {
    double late[2];
    static const uint32_t flavors[] = {TB_CURRENT_THREAD, TB_MULTI_THREAD};
    static const uint32_t workers[] = {1, 2};
    for (int i = 0; i < 2; i++) {
        tb_runtime rt = runtime_with(flavors[i], workers[i], 0);
        tb_task blocker, victim;
        watch(rt);
        TRY(tb_timer_start(rt, 0, 0, sleep_in_timer, (void *)(intptr_t)500, NULL, &blocker));
        sim_sleep_ms(5);
        due_at = sim_now_ms() + 10;
        TRY(tb_timer_start(rt, 10, 0, record_lateness, NULL, NULL, &victim));
        finish(victim);
        finish(blocker);
        late[i] = late_by;
        unwatch(rt, r);
        TRY(tb_runtime_shutdown(rt, TB_FOREVER));
    }
    say(r, "partly",
        "a 10 ms timer ran %.0f ms late on current-thread, %.0f ms late with 2 workers (it moves "
        "to the free worker)",
        late[0], late[1]);
}

static void stays_responsive(row *r) {
    tb_runtime rt = runtime_with(TB_CURRENT_THREAD, 1, 0);
    tb_task tick = ticker(rt, 100), job;
    watch(rt);
    double start = sim_now_ms(), took;
    TRY(tb_spawn_blocking(rt, sleep_in_job, (void *)(intptr_t)1000, NULL, &job));
    int n = ticks_until_done(job, start, &took);
    unwatch(rt, r);
    stop(tick);
    TRY(tb_runtime_shutdown(rt, TB_FOREVER));
    say(r, "true", "%d ticks of 100 ms during a %.0f ms blocking job, on current-thread", n,
        took);
}

static void cpu_starves(row *r) {
    tb_runtime rt = runtime_with(TB_CURRENT_THREAD, 1, 0);
    tb_task tick = ticker(rt, 10), work;
    uint64_t on_worker = 0, on_pool = 0;
    watch(rt);
    double start = sim_now_ms(), worker_ms, pool_ms;
    TRY(tb_timer_start(rt, 0, 0, sum_in_timer, &on_worker, NULL, &work));
    int worker_ticks = ticks_until_done(work, start, &worker_ms);
    atomic_store(&ticks, 0);
    start = sim_now_ms();
    TRY(tb_spawn_blocking(rt, sum_in_job, &on_pool, NULL, &work));
    int pool_ticks = ticks_until_done(work, start, &pool_ms);
    unwatch(rt, r);
    stop(tick);
    TRY(tb_runtime_shutdown(rt, TB_FOREVER));
    say(r, on_worker == on_pool ? "true" : "WRONG SUM",
        "sum 0..1e9 = %llu: on the worker %d of ~%.0f ticks of 10 ms, on the pool %d of ~%.0f",
        (unsigned long long)on_pool, worker_ticks, worker_ms / 10, pool_ticks, pool_ms / 10);
}

static void pool_grows_and_shrinks(row *grows, row *shrinks) {
    tb_runtime rt = named_runtime("demo", 4, 16, 300);
    int before = threads_named("demo-blocking");
    sim_reset();
    double took = sleeps(rt, 1, 20, 100, grows);
    int peak = sim_stats().peak_in_flight;
    int after = threads_named("demo-blocking");
    sim_sleep_ms(700);
    int idle = threads_named("demo-blocking");
    TRY(tb_runtime_shutdown(rt, TB_FOREVER));
    say(grows, "true",
        "20 jobs of 100 ms, max 16: %d threads before, %d in use at peak, %.0f ms (two rounds)",
        before, peak, took);
    say(shrinks, "true", "%d blocking threads right after the jobs, %d after 700 ms idle "
        "(keep-alive 300 ms; default 10 s)", after, idle);
}

static void timeout_continues(row *r) {
    tb_runtime rt;
    tb_task t;
    TRY(tb_runtime_default(&rt));
    watch(rt);
    double start = sim_now_ms();
    TRY(tb_spawn_blocking(rt, sleep_in_job, (void *)(intptr_t)1000, NULL, &t));
    tb_status waited = tb_task_wait(t, 50);
    double timed_out = sim_now_ms() - start;
    tb_outcome o = finish(t);
    unwatch(rt, r);
    say(r, "true", "wait(50 ms) gave %s after %.0f ms; the job went on and ended %s at %.0f ms",
        tb_status_name(waited), timed_out, tb_status_name(o.status), sim_now_ms() - start);
}

static void abort_does_not_stop(row *r) {
    tb_runtime rt;
    tb_task plain, coop;
    TRY(tb_runtime_default(&rt));
    watch(rt);
    TRY(tb_spawn_blocking(rt, sleep_in_job, (void *)(intptr_t)500, NULL, &plain));
    TRY(tb_spawn_blocking(rt, chunks, NULL, NULL, &coop));
    sim_sleep_ms(50);
    tb_status cancelled = tb_task_cancel(plain);
    double start = sim_now_ms();
    tb_task_cancel(coop); /* TB_ERR_BUSY too: it is running */
    tb_outcome c = finish(coop);
    double stopped = sim_now_ms() - start;
    tb_outcome p = finish(plain);
    unwatch(rt, r);
    say(r, "true",
        "cancel gave %s; the plain job ran its full %.0f ms; one that checks tb_job_cancelled "
        "stopped %.0f ms after, at chunk %d of 100",
        tb_status_name(cancelled), (double)p.run_us / 1000, stopped, c.code);
}

/* Per-task cost of `n` sleeps of 0 ms or no-op jobs: all submitted at once, then one at a time. */
static void per_task_cost(tb_runtime rt, int blocking, double *batch_us, double *one_us) {
    enum { N = 10000 };
    static tb_task t[N];
    double start = sim_now_ms();
    for (int i = 0; i < N; i++) {
        TRY(blocking ? tb_spawn_blocking(rt, nothing, NULL, NULL, &t[i]) : tb_sleep(rt, 0, &t[i]));
    }
    TRY(tb_wait_all(t, N, TB_FOREVER));
    *batch_us = (sim_now_ms() - start) * 1000 / N;
    for (int i = 0; i < N; i++) {
        TRY(tb_task_release(t[i]));
    }
    start = sim_now_ms();
    for (int i = 0; i < N / 10; i++) {
        TRY(blocking ? tb_spawn_blocking(rt, nothing, NULL, NULL, &t[0]) : tb_sleep(rt, 0, &t[0]));
        finish(t[0]);
    }
    *one_us = (sim_now_ms() - start) * 1000 / (N / 10);
}

static void overhead(row *r) {
    tb_runtime rt = named_runtime("cost", 0, 0, 0);
    double async_batch, async_one, blocking_batch, blocking_one;
    watch(rt);
    per_task_cost(rt, 0, &async_batch, &async_one);
    per_task_cost(rt, 1, &blocking_batch, &blocking_one);
    unwatch(rt, r);
    int threads = threads_named("cost-blocking");
    TRY(tb_runtime_shutdown(rt, TB_FOREVER));
    int dearer = (blocking_batch > async_batch) + (blocking_one > async_one);
    say(r, dearer == 2 ? "true" : dearer == 1 ? "partly" : "wrong",
        "per task, 10k at once / one at a time: async sleep %.2f / %.1f us, no-op blocking job "
        "%.2f / %.1f us; %d threads served them all (no thread per job)",
        async_batch, async_one, blocking_batch, blocking_one, threads);
}

int main(void) {
    row rows[] = {
        {"Four tasks blocking 100 ms on 4 core threads take ~400 ms", "", "", -1, 0},
        {"With spawn_blocking they take ~100 ms instead of ~400 ms", "", "", -1, 0},
        {"Other async tasks can't run while a worker is blocked", "", "", -1, 0},
        {"Async tasks stay responsive during a 1 s spawn_blocking job", "", "", -1, 0},
        {"CPU work on the runtime starves other tasks; spawn_blocking does not", "", "", -1, 0},
        {"The blocking pool grows on demand up to max_blocking_threads", "", "", -1, 0},
        {"Idle blocking threads are removed", "", "", -1, 0},
        {"Timed out, but the blocking thread continues", "", "", -1, 0},
        {"Abort doesn't stop the blocking thread", "", "", -1, 0},
        {"spawn is cheap; spawn_blocking costs more (thread allocation)", "", "", -1, 0},
    };
    printf("tokio-bridge %s: measuring the guide's claims (about 10 s)...\n",
           tb_version_string());
    fflush(stdout);
    four_blocking_tasks(&rows[0], &rows[1]);
    others_delayed(&rows[2]);
    stays_responsive(&rows[3]);
    cpu_starves(&rows[4]);
    pool_grows_and_shrinks(&rows[5], &rows[6]);
    timeout_continues(&rows[7]);
    abort_does_not_stop(&rows[8]);
    overhead(&rows[9]);

    printf("\n| # | the guide says | measured | verdict | probe p99 | stalls |\n"
           "|---|---|---|---|---|---|\n");
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        char p99[32] = "n/a";
        if (rows[i].probe_p99_ms >= 0) {
            snprintf(p99, sizeof p99, "%.1f ms", rows[i].probe_p99_ms);
        }
        printf("| %zu | %s | %s | %s | %s | %llu |\n", i + 1, rows[i].claim, rows[i].measured,
               rows[i].verdict, p99, (unsigned long long)rows[i].stalls);
    }
    printf("\nprobe p99: the 99th percentile of how late a 5 ms async tick ran during the "
           "scenario (worst runtime shape);\nstalls: C callbacks that held an async worker for "
           "more than 10 ms.\n");
    return 0;
}
