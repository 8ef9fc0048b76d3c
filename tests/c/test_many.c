/* Many cheap async tasks, and the threads on which callbacks run. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "simlib.h"

#define MANY 1000

static atomic_int fired[MANY];

static void on_done(void *arg, tb_task t, const tb_outcome *o) {
    (void)t;
    if (o->status == TB_OK) {
        atomic_fetch_add(&fired[(intptr_t)arg], 1);
    }
}

static int32_t once(void *arg, uint64_t tick) {
    (void)arg;
    return tick == 0 ? 0 : 1; /* one-shot timers never see tick 1 */
}

/* 10: 1000 sleeps all complete; 1000 timers with completion callbacks fire exactly once each. */
static void many_async_tasks(tb_runtime rt) {
    static tb_task tasks[MANY];
    double start = sim_now_ms();
    for (int i = 0; i < MANY; i++) {
        CHECK_STATUS(tb_sleep(rt, 1, &tasks[i]), TB_OK);
    }
    CHECK_STATUS(tb_wait_all(tasks, MANY, TB_FOREVER), TB_OK);
    int ok = 0;
    for (int i = 0; i < MANY; i++) {
        tb_outcome o;
        ok += tb_task_outcome(tasks[i], &o) == TB_OK && o.status == TB_OK;
        CHECK_STATUS(tb_task_release(tasks[i]), TB_OK);
    }
    printf("  %d sleeps of 1 ms completed in %.0f ms\n", ok, sim_now_ms() - start);
    CHECK(ok == MANY);

    for (int i = 0; i < MANY; i++) {
        CHECK_STATUS(tb_timer_start(rt, (uint64_t)(i % 20), 0, once, NULL, NULL, &tasks[i]),
                     TB_OK);
        CHECK_STATUS(tb_task_on_complete(tasks[i], on_done, (void *)(intptr_t)i), TB_OK);
    }
    CHECK_STATUS(tb_wait_all(tasks, MANY, TB_FOREVER), TB_OK);
    int exactly_once = 0;
    for (int i = 0; i < MANY; i++) {
        exactly_once += atomic_load(&fired[i]) == 1;
        CHECK_STATUS(tb_task_release(tasks[i]), TB_OK);
    }
    printf("  %d of %d timer completion callbacks fired exactly once\n", exactly_once, MANY);
    CHECK(exactly_once == MANY);
}

static char job_thread[32], job_done_thread[32], timer_thread[32], timer_done_thread[32];

static int32_t record_job(void *arg, tb_job *job) {
    (void)arg;
    (void)job;
    pthread_getname_np(pthread_self(), job_thread, sizeof job_thread);
    sim_sleep_ms(100); /* outlasts the registration of its completion callback */
    return 0;
}

static int32_t record_timer(void *arg, uint64_t tick) {
    (void)arg;
    (void)tick;
    pthread_getname_np(pthread_self(), timer_thread, sizeof timer_thread);
    return 1;
}

static void record_completion(void *arg, tb_task t, const tb_outcome *o) {
    (void)t;
    (void)o;
    pthread_getname_np(pthread_self(), (char *)arg, 32);
}

/* 11: callbacks run on the threads the header promises. */
static void callback_threads(uint32_t flavor) {
    tb_runtime_config cfg;
    tb_runtime rt;
    tb_task job, timer;
    tb_runtime_config_init(&cfg);
    cfg.flavor = flavor;
    cfg.worker_threads = 2 - flavor;
    cfg.thread_name = "hx";
    CHECK_STATUS(tb_runtime_new(&cfg, &rt), TB_OK);
    CHECK_STATUS(tb_spawn_blocking(rt, record_job, NULL, NULL, &job), TB_OK);
    CHECK_STATUS(tb_task_on_complete(job, record_completion, job_done_thread), TB_OK);
    /* Due well after its completion callback is registered, even under Valgrind: a task that
     * finished first would run the callback here, on the registering thread, as documented. */
    CHECK_STATUS(tb_timer_start(rt, 100, 0, record_timer, NULL, NULL, &timer), TB_OK);
    CHECK_STATUS(tb_task_on_complete(timer, record_completion, timer_done_thread), TB_OK);
    CHECK_STATUS(tb_task_wait(job, TB_FOREVER), TB_OK);
    CHECK_STATUS(tb_task_wait(timer, TB_FOREVER), TB_OK);
    printf("  flavor %u: job on %s, its completion on %s; timer on %s, its completion on %s\n",
           flavor, job_thread, job_done_thread, timer_thread, timer_done_thread);
    CHECK(strncmp(job_thread, "hx-blocking-", 12) == 0);
    CHECK(strcmp(job_done_thread, job_thread) == 0);
    CHECK(strncmp(timer_thread, "hx-worker-", 10) == 0);
    CHECK(strncmp(timer_done_thread, "hx-worker-", 10) == 0);
    if (flavor == TB_CURRENT_THREAD) {
        CHECK(strcmp(timer_thread, "hx-worker-0") == 0);
    }
    CHECK_STATUS(tb_task_release(job), TB_OK);
    CHECK_STATUS(tb_task_release(timer), TB_OK);
    CHECK_STATUS(tb_runtime_shutdown(rt, TB_FOREVER), TB_OK);
}

int main(void) {
    tb_runtime rt;
    CHECK_STATUS(tb_runtime_default(&rt), TB_OK);
    puts("10: many cheap async tasks");
    many_async_tasks(rt);
    puts("11: which thread runs which callback");
    callback_threads(TB_MULTI_THREAD);
    callback_threads(TB_CURRENT_THREAD);
    CHECK_DONE();
}
