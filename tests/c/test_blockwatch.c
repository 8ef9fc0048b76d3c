/* Seeing blocking happen from C: stall reports while a callback runs and after it ends, none
 * for a correct program, the probe's lateness with and without a blocked worker, and metrics
 * that match the work done. Run by the harness with TB_STALL_LOG=1, which must also print the
 * stalls on stderr. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "simlib.h"

typedef struct seen {
    tb_any_fn callback;
    int running;
    uint64_t duration_us;
    char thread[16];
} seen;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static seen reports[16];
static int n_reports;

static void on_stall(void *arg, const tb_stall *s) {
    (void)arg;
    pthread_mutex_lock(&lock);
    if (n_reports < 16) {
        seen *r = &reports[n_reports++];
        r->callback = s->callback;
        r->running = s->still_running;
        r->duration_us = s->duration_us;
        memcpy(r->thread, s->thread_name, sizeof r->thread);
    }
    pthread_mutex_unlock(&lock);
}

static int count_reports(void) {
    pthread_mutex_lock(&lock);
    int n = n_reports;
    pthread_mutex_unlock(&lock);
    return n;
}

static int32_t sleepy_tick(void *arg, uint64_t tick) {
    (void)tick;
    return sim_ffi_call(0, (unsigned)(intptr_t)arg) == 0 ? 1 : 2;
}

static int32_t quick_tick(void *arg, uint64_t tick) {
    (void)arg;
    return tick == 3;
}

static int32_t pool_job(void *arg, tb_job *job) {
    (void)job;
    return sim_ffi_call(1, (unsigned)(intptr_t)arg) == 2 ? 0 : 1;
}

static tb_probe_stats probe(tb_runtime rt) {
    tb_probe_stats s = {.struct_size = sizeof s};
    CHECK_STATUS(tb_runtime_probe_stats(rt, &s), TB_OK);
    return s;
}

static tb_metrics metrics(tb_runtime rt) {
    tb_metrics m = {.struct_size = sizeof m};
    CHECK_STATUS(tb_runtime_metrics(rt, &m), TB_OK);
    return m;
}

static void finish(tb_task t) {
    CHECK_STATUS(tb_task_wait(t, TB_FOREVER), TB_OK);
    CHECK_STATUS(tb_task_release(t), TB_OK);
}

int main(void) {
    tb_runtime_config cfg;
    tb_runtime rt;
    tb_task t, jobs[8];
    tb_runtime_config_init(&cfg);
    cfg.flavor = TB_CURRENT_THREAD;
    cfg.max_blocking_threads = 8;
    /* Under a tool such as Valgrind, even a trivial callback can take 10 ms the first time it
     * runs (its code is translated then); a wider threshold still catches the 200 ms stall. */
    if (getenv("TB_TEST_WRAPPER") != NULL) {
        cfg.stall_threshold_ms = 100;
    }
    CHECK_STATUS(tb_runtime_new(&cfg, &rt), TB_OK);
    CHECK_STATUS(tb_runtime_on_stall(rt, on_stall, NULL), TB_OK);

    /* A correct program: blocking work on the pool, quick timers. No stall, and the probe's
     * lateness under that load stays within 5x of its lateness at rest. */
    CHECK_STATUS(tb_runtime_probe_start(rt, 5), TB_OK);
    sim_sleep_ms(300);
    tb_probe_stats rest = probe(rt);
    CHECK_STATUS(tb_runtime_probe_stop(rt), TB_OK);
    CHECK_STATUS(tb_runtime_probe_start(rt, 5), TB_OK);
    for (int i = 0; i < 8; i++) {
        CHECK_STATUS(tb_spawn_blocking(rt, pool_job, (void *)(intptr_t)300, NULL, &jobs[i]),
                     TB_OK);
    }
    CHECK_STATUS(tb_timer_start(rt, 1, 5, quick_tick, NULL, NULL, &t), TB_OK);
    finish(t);
    for (int i = 0; i < 8; i++) {
        finish(jobs[i]);
    }
    tb_probe_stats loaded = probe(rt);
    CHECK_STATUS(tb_runtime_probe_stop(rt), TB_OK);
    uint64_t floor_us = rest.p99_us > 1000 ? rest.p99_us : 1000;
    printf("  probe p99 at rest %llu us, with 8 pool jobs %llu us; stalls %d\n",
           (unsigned long long)rest.p99_us, (unsigned long long)loaded.p99_us, count_reports());
    CHECK(loaded.p99_us < 5 * floor_us);
    CHECK(count_reports() == 0);

    /* The wrong place: a 200 ms blocking call in a timer callback on the only worker. */
    CHECK_STATUS(tb_runtime_probe_start(rt, 5), TB_OK);
    sim_sleep_ms(20);
    double start = sim_now_ms();
    CHECK_STATUS(tb_timer_start(rt, 0, 0, sleepy_tick, (void *)(intptr_t)200, NULL, &t), TB_OK);
    while (count_reports() == 0 && sim_now_ms() - start < 10000) {
        sim_sleep_ms(1);
    }
    double reported_after = sim_now_ms() - start;
    CHECK_STATUS(tb_task_poll(t), TB_PENDING); /* reported while it still runs */
    finish(t);
    sim_sleep_ms(20);
    tb_probe_stats blocked = probe(rt);
    while (count_reports() < 2 && sim_now_ms() - start < 10000) {
        sim_sleep_ms(1);
    }
    printf("  a 200 ms timer callback: first report after %.0f ms; %d reports; probe max %llu "
           "us\n",
           reported_after, count_reports(), (unsigned long long)blocked.max_us);
    CHECK(count_reports() == 2);
    CHECK(reports[0].running && !reports[1].running);
    CHECK(reports[0].callback == (tb_any_fn)sleepy_tick);
    CHECK(reports[1].callback == (tb_any_fn)sleepy_tick);
    CHECK(reports[1].duration_us >= 195000);
    CHECK(strcmp(reports[0].thread, "tb-worker-0") == 0);
    CHECK(blocked.max_us > 100000);

    /* Metrics match the work: 8 jobs ran, none failed or cancelled, one stall. */
    tb_metrics m = metrics(rt);
    CHECK(m.jobs_submitted == 8 && m.jobs_completed == 8 && m.jobs_failed == 0);
    CHECK(m.jobs_cancelled == 0 && m.blocking_queued == 0 && m.blocking_running == 0);
    CHECK(m.stalls == 1 && m.longest_stall_us >= 195000);
    CHECK(m.worker_threads == 1 && m.timers_active == 0);

    CHECK_STATUS(tb_runtime_shutdown(rt, TB_FOREVER), TB_OK);
    CHECK_DONE();
}
