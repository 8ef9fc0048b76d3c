/* demo: blocking work and async timers side by side, claim by claim.
 *
 * Four 100 ms blocking "database queries" run either inside timer callbacks (on async
 * workers: the wrong place) or as blocking jobs (on the blocking pool: the right place), on
 * several runtime shapes, while a 10 ms ticker runs on the same runtime. The table shows how
 * long the four queries took and how many ticks the ticker managed meanwhile. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "simlib.h"
#include "tokio_bridge.h"

#define QUERIES 4
#define QUERY_MS 100
#define TICK_MS 10

static void die(const char *what, tb_status s) {
    char err[256];
    tb_last_error(err, sizeof err);
    fprintf(stderr, "%s: %s (%s)\n", what, tb_status_name(s), err);
    exit(1);
}

#define TRY(call)                                                                        \
    do {                                                                                 \
        tb_status try_status_ = (call);                                                  \
        if (try_status_ < 0) {                                                           \
            die(#call, try_status_);                                                     \
        }                                                                                \
    } while (0)

static atomic_int ticks;

static int32_t ticker(void *arg, uint64_t tick) {
    (void)arg;
    (void)tick;
    atomic_fetch_add(&ticks, 1);
    return 0;
}

/* The wrong place: a timer callback (async worker) that calls a blocking driver. */
static int32_t query_on_worker(void *arg, uint64_t tick) {
    (void)arg;
    (void)tick;
    free(sim_db_query("SELECT * FROM users", QUERY_MS));
    return 0;
}

/* The right place: a blocking job on the blocking pool. */
static int32_t query_on_pool(void *arg, tb_job *job) {
    (void)arg;
    (void)job;
    free(sim_db_query("SELECT * FROM users", QUERY_MS));
    return 0;
}

typedef struct result {
    double wall_ms;
    int ticks;
    int peak;
} result;

/* Runs QUERIES queries on `rt`, on its workers or on its blocking pool, with a ticker alongside. */
static result measure(tb_runtime rt, int on_pool) {
    tb_task tasks[QUERIES], tick_task;
    result r;
    sim_reset();
    TRY(tb_timer_start(rt, TICK_MS, TICK_MS, ticker, NULL, NULL, &tick_task));
    sim_sleep_ms(50); /* let the ticker settle */
    atomic_store(&ticks, 0);
    double start = sim_now_ms();
    for (int i = 0; i < QUERIES; i++) {
        if (on_pool) {
            TRY(tb_spawn_blocking(rt, query_on_pool, NULL, NULL, &tasks[i]));
        } else {
            TRY(tb_timer_start(rt, 0, 0, query_on_worker, NULL, NULL, &tasks[i]));
        }
    }
    TRY(tb_wait_all(tasks, QUERIES, TB_FOREVER));
    r.wall_ms = sim_now_ms() - start;
    r.ticks = atomic_load(&ticks);
    r.peak = sim_stats().peak_in_flight;
    TRY(tb_task_cancel(tick_task));
    TRY(tb_task_wait(tick_task, TB_FOREVER));
    for (int i = 0; i < QUERIES; i++) {
        TRY(tb_task_release(tasks[i]));
    }
    TRY(tb_task_release(tick_task));
    return r;
}

static tb_runtime make_runtime(uint32_t flavor, uint32_t workers) {
    tb_runtime_config cfg;
    tb_runtime rt;
    tb_runtime_config_init(&cfg);
    cfg.flavor = flavor;
    cfg.worker_threads = workers;
    TRY(tb_runtime_new(&cfg, &rt));
    return rt;
}

int main(void) {
    static const struct {
        const char *shape;
        uint32_t flavor, workers;
    } shapes[] = {
        {"current-thread", TB_CURRENT_THREAD, 1},
        {"1 worker", TB_MULTI_THREAD, 1},
        {"4 workers", TB_MULTI_THREAD, 4},
    };
    printf("tokio-bridge %s: %d queries of %d ms each, a %d ms ticker alongside\n\n",
           tb_version_string(), QUERIES, QUERY_MS, TICK_MS);
    printf("| %-14s | %-30s | %9s | %11s | %13s |\n", "runtime", "where the queries run",
           "wall (ms)", "peak in C", "ticker ticks");
    printf("|----------------|--------------------------------|-----------|-------------|---------------|\n");
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        for (int on_pool = 0; on_pool <= 1; on_pool++) {
            tb_runtime rt = make_runtime(shapes[i].flavor, shapes[i].workers);
            result r = measure(rt, on_pool);
            printf("| %-14s | %-30s | %9.0f | %11d | %5d of ~%3.0f |\n", shapes[i].shape,
                   on_pool ? "blocking pool (spawn_blocking)" : "timer callbacks (workers)",
                   r.wall_ms, r.peak, r.ticks, r.wall_ms / TICK_MS);
            TRY(tb_runtime_shutdown(rt, TB_FOREVER));
        }
    }
    return 0;
}
