/* The core C API as a C program uses it: submit, wait, outcome, cancel, completion callbacks,
 * timers, bad handles, the last error and shutdown. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

static atomic_int frees;
static atomic_int completions;
static atomic_int ticks_seen;
static char completion_thread[32];

static void count_free(void *arg) {
    free(arg);
    atomic_fetch_add(&frees, 1);
}

/* Doubles the int it is given, after sleeping that many milliseconds; fails on odd input. */
static int32_t double_it(void *arg, tb_job *job) {
    int *x = arg;
    sleep_ms(*x);
    tb_job_set_result(job, (void *)(intptr_t)(*x * 2));
    return *x % 2;
}

/* Runs in 5 ms chunks for up to 5 s, stopping when cancelled. */
static int32_t chunked(void *arg, tb_job *job) {
    (void)arg;
    for (int i = 0; i < 1000; i++) {
        if (tb_job_cancelled(job)) {
            return 99;
        }
        sleep_ms(5);
    }
    return 0;
}

static void on_done(void *arg, tb_task t, const tb_outcome *o) {
    (void)t;
    (void)o;
    *(int *)arg += 1;
    pthread_getname_np(pthread_self(), completion_thread, sizeof completion_thread);
    atomic_fetch_add(&completions, 1);
}

static int32_t tick(void *arg, uint64_t n) {
    (void)arg;
    atomic_fetch_add(&ticks_seen, 1);
    return n == 4 ? 5 : 0;
}

static int *boxed(int v) {
    int *p = malloc(sizeof *p);
    *p = v;
    return p;
}

int main(void) {
    tb_runtime_config cfg;
    tb_runtime rt = {0};
    tb_task t, q, timer, s;
    tb_outcome o;
    char err[256];
    int called = 0;

    CHECK(tb_version() == TB_VERSION_HEX);
    CHECK(strcmp(tb_version_string(), TB_VERSION_STRING) == 0);

    tb_runtime_config_init(&cfg);
    CHECK(cfg.struct_size == sizeof cfg);
    cfg.worker_threads = 2;
    cfg.max_blocking_threads = 1; /* one blocking thread: the second job queues */
    CHECK_STATUS(tb_runtime_new(&cfg, &rt), TB_OK);

    /* Submit, wait, read the outcome. */
    CHECK_STATUS(tb_spawn_blocking(rt, double_it, boxed(20), count_free, &t), TB_OK);
    CHECK_STATUS(tb_task_poll(t), TB_PENDING);
    CHECK_STATUS(tb_task_on_complete(t, on_done, &called), TB_OK);
    CHECK_STATUS(tb_task_wait(t, TB_FOREVER), TB_OK);
    CHECK_STATUS(tb_task_outcome(t, &o), TB_OK);
    CHECK(o.status == TB_OK && o.code == 0 && (intptr_t)o.value == 40);
    CHECK(o.run_us >= 19000);
    CHECK(called == 1 && atomic_load(&frees) == 1);
    CHECK(strncmp(completion_thread, "tb-blocking-", 12) == 0);
    CHECK_STATUS(tb_task_release(t), TB_OK);

    /* A failing callback. */
    CHECK_STATUS(tb_spawn_blocking(rt, double_it, boxed(3), count_free, &t), TB_OK);
    CHECK_STATUS(tb_task_wait(t, TB_FOREVER), TB_OK);
    CHECK_STATUS(tb_task_outcome(t, &o), TB_OK);
    CHECK(o.status == TB_ERR_CALLBACK && o.code == 1);
    CHECK_STATUS(tb_task_release(t), TB_OK);

    /* Cancel: a running job is busy and stops at its next chunk; a queued one never runs. */
    CHECK_STATUS(tb_spawn_blocking(rt, chunked, NULL, NULL, &t), TB_OK);
    CHECK_STATUS(tb_spawn_blocking(rt, double_it, boxed(2), count_free, &q), TB_OK);
    sleep_ms(50); /* t holds the only blocking thread by now; q waits behind it */
    CHECK_STATUS(tb_task_cancel(q), TB_OK);
    CHECK(atomic_load(&frees) == 3); /* freed before cancel returned */
    CHECK_STATUS(tb_task_outcome(q, &o), TB_OK);
    CHECK(o.status == TB_ERR_CANCELLED);
    CHECK_STATUS(tb_task_cancel(t), TB_ERR_BUSY);
    CHECK_STATUS(tb_task_wait(t, 5000), TB_OK);
    CHECK_STATUS(tb_task_outcome(t, &o), TB_OK);
    CHECK(o.status == TB_ERR_CALLBACK && o.code == 99);
    CHECK_STATUS(tb_task_cancel(t), TB_ERR_ALREADY);
    CHECK_STATUS(tb_task_release(t), TB_OK);
    CHECK_STATUS(tb_task_release(q), TB_OK);

    /* Timers and sleeps. */
    CHECK_STATUS(tb_timer_start(rt, 1, 2, tick, NULL, NULL, &timer), TB_OK);
    CHECK_STATUS(tb_task_wait(timer, TB_FOREVER), TB_OK);
    CHECK_STATUS(tb_task_outcome(timer, &o), TB_OK);
    CHECK(o.status == TB_OK && o.code == 5 && o.ticks == 5 && atomic_load(&ticks_seen) == 5);
    CHECK_STATUS(tb_sleep(rt, 60000, &s), TB_OK);
    CHECK_STATUS(tb_task_on_complete(s, on_done, &called), TB_OK);
    CHECK_STATUS(tb_task_cancel(s), TB_OK);
    CHECK_STATUS(tb_task_wait(s, TB_FOREVER), TB_OK);
    CHECK_STATUS(tb_task_outcome(s, &o), TB_OK);
    CHECK(o.status == TB_ERR_CANCELLED && called == 2);
    CHECK(strncmp(completion_thread, "tb-worker-", 10) == 0);

    /* Bad handles, NULLs and the last error. */
    tb_task zero = {0}, forged = {0x2000000000abcdefULL}, wrong_type = {rt.id};
    CHECK_STATUS(tb_task_poll(zero), TB_ERR_BAD_HANDLE);
    CHECK_STATUS(tb_task_wait(forged, 0), TB_ERR_BAD_HANDLE);
    CHECK_STATUS(tb_task_cancel(wrong_type), TB_ERR_BAD_HANDLE);
    CHECK(tb_last_error(err, sizeof err) > 0 && strstr(err, "wrong type") != NULL);
    CHECK_STATUS(tb_task_release(timer), TB_OK);
    CHECK_STATUS(tb_task_release(timer), TB_ERR_BAD_HANDLE);
    CHECK_STATUS(tb_task_outcome(timer, &o), TB_ERR_BAD_HANDLE);
    CHECK_STATUS(tb_spawn_blocking(rt, NULL, NULL, NULL, &t), TB_ERR_NULL);
    CHECK_STATUS(tb_spawn_blocking(rt, double_it, NULL, NULL, NULL), TB_ERR_NULL);
    CHECK_STATUS(tb_task_outcome(s, NULL), TB_ERR_NULL);
    CHECK(tb_last_error(err, sizeof err) > 0 && strstr(err, "out") != NULL);
    CHECK(strcmp(tb_status_name(TB_ERR_NULL), "TB_ERR_NULL") == 0);
    CHECK(strcmp(tb_status_name(777), "TB_UNKNOWN") == 0);
    CHECK(strlen(tb_status_message(TB_ERR_SHUTDOWN)) > 0);

    /* Shutdown. */
    CHECK_STATUS(tb_runtime_shutdown(rt, 5000), TB_OK);
    CHECK_STATUS(tb_sleep(rt, 1, &t), TB_ERR_SHUTDOWN);
    CHECK_STATUS(tb_task_outcome(s, &o), TB_OK); /* task handles stay readable */
    CHECK_STATUS(tb_task_release(s), TB_OK);
    CHECK(atomic_load(&frees) == 3 && atomic_load(&completions) == 2);

    CHECK_DONE();
}
