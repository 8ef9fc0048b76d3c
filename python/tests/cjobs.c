/* C jobs for the Python tests and python/bench_queue.py: tb_blocking_fn functions that Python
 * submits with spawn_blocking_c, and the bench's C-side submission with completion callbacks. */
#define _POSIX_C_SOURCE 200809L
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#include "tokio_bridge.h"

static void sleep_ms(long ms) {
    struct timespec left = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&left, &left) != 0) {
    }
}

/* Sleeps 2 ms, then sets the result to arg. */
int32_t cj_echo_after_2ms(void *arg, tb_job *job) {
    sleep_ms(2);
    tb_job_set_result(job, arg);
    return 0;
}

/* Sets the result to arg at once. */
int32_t cj_echo(void *arg, tb_job *job) {
    tb_job_set_result(job, arg);
    return 0;
}

static atomic_int started;

/* How many cj_sleep and cj_until_cancelled jobs have started. */
int32_t cj_started(void) {
    return atomic_load(&started);
}

/* Sleeps arg milliseconds. */
int32_t cj_sleep(void *arg, tb_job *job) {
    (void)job;
    atomic_fetch_add(&started, 1);
    sleep_ms((long)(intptr_t)arg);
    return 0;
}

/* Fails with arg as its code. */
int32_t cj_fail(void *arg, tb_job *job) {
    (void)job;
    return (int32_t)(intptr_t)arg;
}

/* Checks tb_job_cancelled every millisecond for up to arg ms: returns 42 if asked to stop. */
int32_t cj_until_cancelled(void *arg, tb_job *job) {
    atomic_fetch_add(&started, 1);
    for (intptr_t ms = 0; ms < (intptr_t)arg; ms++) {
        if (tb_job_cancelled(job)) {
            return 42;
        }
        sleep_ms(1);
    }
    return 0;
}

/* arg is an int32_t[3]: waits 20 ms, stores the sum of the first two in the third. */
int32_t cj_sum_after_20ms(void *arg, tb_job *job) {
    int32_t *v = arg;
    (void)job;
    sleep_ms(20);
    v[2] = v[0] + v[1];
    return 0;
}

static atomic_uint_fast64_t completions;

static void count_completion(void *arg, tb_task task, const tb_outcome *outcome) {
    (void)arg;
    (void)task;
    (void)outcome;
    atomic_fetch_add_explicit(&completions, 1, memory_order_relaxed);
}

/* Completion callbacks counted so far by cj_spawn_noops. */
uint64_t cj_completions(void) {
    return atomic_load(&completions);
}

/* Submits n cj_echo jobs with their index as arg and writes their handles to out. how = 0: just
 * the jobs; 1: each with a completion callback that counts it; 2: each notifying q with its
 * index as the tag. Returns the first failing status, or TB_OK. */
tb_status cj_spawn_noops(tb_runtime rt, int how, tb_queue q, size_t n, tb_task *out) {
    for (size_t i = 0; i < n; i++) {
        tb_status s = tb_spawn_blocking(rt, cj_echo, (void *)(uintptr_t)i, NULL, &out[i]);
        if (s == TB_OK && how == 1) {
            s = tb_task_on_complete(out[i], count_completion, NULL);
        } else if (s == TB_OK && how == 2) {
            s = tb_task_notify(out[i], q, i);
        }
        if (s != TB_OK) {
            return s;
        }
    }
    return TB_OK;
}

/* Releases n task handles. */
void cj_release_all(const tb_task *tasks, size_t n) {
    for (size_t i = 0; i < n; i++) {
        tb_task_release(tasks[i]);
    }
}
