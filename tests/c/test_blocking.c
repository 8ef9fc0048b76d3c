/* What blocking does to an async runtime, and what the blocking pool fixes, measured from C
 * with the simulated blocking library. Every timing claim is a generous ratio or bound. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "simlib.h"

#define QUERY_MS 100
#define TICK_MS 10

static atomic_int ticks;

static int32_t ticker(void *arg, uint64_t tick) {
    (void)arg;
    (void)tick;
    atomic_fetch_add(&ticks, 1);
    return 0;
}

static int32_t query_in_timer(void *arg, uint64_t tick) {
    (void)tick;
    free(sim_db_query("SELECT * FROM users", (unsigned)(intptr_t)arg));
    return 0;
}

static int32_t query_job(void *arg, tb_job *job) {
    (void)job;
    free(sim_db_query("SELECT * FROM users", (unsigned)(intptr_t)arg));
    return 0;
}

static tb_task start_ticker(tb_runtime rt) {
    tb_task t = {0};
    CHECK_STATUS(tb_timer_start(rt, TICK_MS, TICK_MS, ticker, NULL, NULL, &t), TB_OK);
    sim_sleep_ms(30);
    atomic_store(&ticks, 0);
    return t;
}

static void stop(tb_task t) {
    CHECK_STATUS(tb_task_cancel(t), TB_OK);
    CHECK_STATUS(tb_task_wait(t, TB_FOREVER), TB_OK);
    CHECK_STATUS(tb_task_release(t), TB_OK);
}

/* Runs `n` queries of `ms` in timer callbacks (on_pool = 0) or as blocking jobs; returns ms. */
static double run_queries(tb_runtime rt, int on_pool, int n, unsigned ms) {
    tb_task tasks[64];
    void *arg = (void *)(intptr_t)ms;
    double start = sim_now_ms();
    for (int i = 0; i < n; i++) {
        if (on_pool) {
            CHECK_STATUS(tb_spawn_blocking(rt, query_job, arg, NULL, &tasks[i]), TB_OK);
        } else {
            CHECK_STATUS(tb_timer_start(rt, 0, 0, query_in_timer, arg, NULL, &tasks[i]), TB_OK);
        }
    }
    CHECK_STATUS(tb_wait_all(tasks, (size_t)n, TB_FOREVER), TB_OK);
    double elapsed = sim_now_ms() - start;
    for (int i = 0; i < n; i++) {
        tb_outcome o;
        CHECK_STATUS(tb_task_outcome(tasks[i], &o), TB_OK);
        CHECK(o.status == TB_OK);
        CHECK_STATUS(tb_task_release(tasks[i]), TB_OK);
    }
    return elapsed;
}

/* 1 and 2: four queries in timer callbacks run one after another and starve a ticker; the same
 * four on the blocking pool run in parallel and the ticker keeps ticking. */
static void wrong_place_then_right_place(uint32_t flavor, uint32_t workers) {
    tb_runtime rt = check_runtime(flavor, workers, 0);
    tb_task tick = start_ticker(rt);

    sim_reset();
    double serial = run_queries(rt, 0, 4, QUERY_MS);
    int starved_ticks = atomic_load(&ticks);
    printf("  flavor %u, %u worker(s): in timer callbacks %.0f ms, %d ticks of ~%.0f\n",
           flavor, workers, serial, starved_ticks, serial / TICK_MS);
    CHECK(serial >= 350);
    CHECK(sim_stats().peak_in_flight == 1);
    CHECK(starved_ticks < 0.3 * serial / TICK_MS);

    sim_reset();
    atomic_store(&ticks, 0);
    double parallel = run_queries(rt, 1, 4, QUERY_MS);
    int kept_ticks = atomic_load(&ticks);
    printf("  flavor %u, %u worker(s): on the pool %.0f ms, %d ticks of ~%.0f\n", flavor,
           workers, parallel, kept_ticks, parallel / TICK_MS);
    CHECK(parallel < 0.6 * serial);
    CHECK(sim_stats().peak_in_flight == 4);

    /* A 1 s blocking call on the pool: the ticker keeps >= 70% of its ticks meanwhile. */
    atomic_store(&ticks, 0);
    double one_second = run_queries(rt, 1, 1, 1000);
    int ticks_during = atomic_load(&ticks);
    printf("  during a 1 s pool job: %d ticks of ~%.0f\n", ticks_during, one_second / TICK_MS);
    CHECK(ticks_during >= 0.7 * one_second / TICK_MS);

    stop(tick);
    CHECK_STATUS(tb_runtime_shutdown(rt, TB_FOREVER), TB_OK);
}

/* 3: the pool honours max_blocking_threads. */
static void pool_limits(void) {
    tb_runtime rt = check_runtime(TB_MULTI_THREAD, 1, 4);
    sim_reset();
    double two_rounds = run_queries(rt, 1, 8, QUERY_MS);
    printf("  8 jobs of %d ms on 4 threads: %.0f ms, peak %d\n", QUERY_MS, two_rounds,
           sim_stats().peak_in_flight);
    CHECK(two_rounds >= 190);
    CHECK(sim_stats().peak_in_flight == 4);
    CHECK_STATUS(tb_runtime_shutdown(rt, TB_FOREVER), TB_OK);

    /* The guide's configuration: 4 workers, 16 blocking threads, 20 jobs. */
    rt = check_runtime(TB_MULTI_THREAD, 4, 16);
    sim_reset();
    double elapsed = run_queries(rt, 1, 20, 300);
    printf("  20 jobs of 300 ms on 16 threads: %.0f ms, peak %d, calls %llu\n", elapsed,
           sim_stats().peak_in_flight, (unsigned long long)sim_stats().calls);
    CHECK(sim_stats().calls == 20);
    CHECK(sim_stats().peak_in_flight == 16);
    CHECK(sim_stats().threads == 16);
    CHECK_STATUS(tb_runtime_shutdown(rt, TB_FOREVER), TB_OK);
}

static uint64_t expected_sum(uint64_t n) {
    return n % 2 == 0 ? (n / 2) * (n - 1) : n * ((n - 1) / 2);
}

static uint64_t cpu_n;

static int32_t cpu_job(void *arg, tb_job *job) {
    (void)arg;
    uint64_t *result = malloc(sizeof *result);
    *result = sim_cpu_sum(cpu_n);
    tb_job_set_result(job, result);
    return 0;
}

static int32_t cpu_in_timer(void *arg, uint64_t tick) {
    (void)tick;
    *(uint64_t *)arg = sim_cpu_sum(cpu_n);
    return 0;
}

/* 4: CPU-bound work on the blocking pool leaves timers on time; on the only worker it does not. */
static void cpu_work(void) {
    /* Size the work to about 300 ms on this machine. */
    double start = sim_now_ms();
    CHECK(sim_cpu_sum(10000000) == expected_sum(10000000));
    double per_10m = sim_now_ms() - start;
    cpu_n = (uint64_t)(10000000.0 * 300.0 / (per_10m > 0.1 ? per_10m : 0.1));

    tb_runtime rt = check_runtime(TB_CURRENT_THREAD, 1, 0);
    tb_task tick = start_ticker(rt), t;
    tb_outcome o;
    start = sim_now_ms();
    CHECK_STATUS(tb_spawn_blocking(rt, cpu_job, NULL, NULL, &t), TB_OK);
    CHECK_STATUS(tb_task_wait(t, TB_FOREVER), TB_OK);
    double on_pool = sim_now_ms() - start;
    int ticks_pool = atomic_load(&ticks);
    CHECK_STATUS(tb_task_outcome(t, &o), TB_OK);
    CHECK(o.status == TB_OK && o.value != NULL && *(uint64_t *)o.value == expected_sum(cpu_n));
    free(o.value);
    CHECK_STATUS(tb_task_release(t), TB_OK);

    uint64_t sum = 0;
    atomic_store(&ticks, 0);
    start = sim_now_ms();
    CHECK_STATUS(tb_timer_start(rt, 0, 0, cpu_in_timer, &sum, NULL, &t), TB_OK);
    CHECK_STATUS(tb_task_wait(t, TB_FOREVER), TB_OK);
    double on_worker = sim_now_ms() - start;
    int ticks_worker = atomic_load(&ticks);
    CHECK(sum == expected_sum(cpu_n));
    CHECK_STATUS(tb_task_release(t), TB_OK);

    printf("  sum of %llu numbers: on the pool %.0f ms with %d ticks of ~%.0f; on the worker "
           "%.0f ms with %d ticks of ~%.0f\n",
           (unsigned long long)cpu_n, on_pool, ticks_pool, on_pool / TICK_MS, on_worker,
           ticks_worker, on_worker / TICK_MS);
    /* Under a tool that runs one thread at a time (Valgrind), CPU work cannot run beside the
     * ticker anywhere: that comparison needs real parallel threads. */
    if (getenv("TB_TEST_WRAPPER") == NULL) {
        CHECK(ticks_pool >= 0.7 * on_pool / TICK_MS);
    } else {
        puts("  (under TB_TEST_WRAPPER: threads do not run in parallel, ticks on the pool not checked)");
    }
    CHECK(ticks_worker <= 0.3 * on_worker / TICK_MS);
    stop(tick);
    CHECK_STATUS(tb_runtime_shutdown(rt, TB_FOREVER), TB_OK);
}

static int32_t file_job(void *arg, tb_job *job) {
    (void)job;
    long verified = sim_file_roundtrip(NULL, (size_t)(intptr_t)arg);
    return verified == (long)(intptr_t)arg ? 0 : 1;
}

/* 5: blocking file I/O through the pool returns the right bytes. */
static void file_io(void) {
    tb_runtime rt = check_runtime(TB_MULTI_THREAD, 1, 4);
    tb_task t[4];
    for (int i = 0; i < 4; i++) {
        CHECK_STATUS(tb_spawn_blocking(rt, file_job, (void *)(intptr_t)(1 << 20), NULL, &t[i]),
                     TB_OK);
    }
    CHECK_STATUS(tb_wait_all(t, 4, TB_FOREVER), TB_OK);
    for (int i = 0; i < 4; i++) {
        tb_outcome o;
        CHECK_STATUS(tb_task_outcome(t[i], &o), TB_OK);
        CHECK(o.status == TB_OK);
        CHECK_STATUS(tb_task_release(t[i]), TB_OK);
    }
    CHECK_STATUS(tb_runtime_shutdown(rt, TB_FOREVER), TB_OK);
}

int main(void) {
    puts("1, 2: blocking in the wrong place, then in the right one");
    wrong_place_then_right_place(TB_CURRENT_THREAD, 1);
    wrong_place_then_right_place(TB_MULTI_THREAD, 1);
    puts("3: pool limits");
    pool_limits();
    puts("4: CPU-bound work");
    cpu_work();
    puts("5: blocking file I/O");
    file_io();
    CHECK_DONE();
}
