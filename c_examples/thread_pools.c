/* thread_pools: a runtime has two pools, and each callback runs on one of them.
 *
 * Async workers (<name>-worker-N) run timers; their number is fixed. Blocking threads
 * (<name>-blocking-N) run blocking jobs; they are started on demand, up to
 * max_blocking_threads, and leave after blocking_keep_alive_ms without work. */
#define _GNU_SOURCE
#include <pthread.h>

#include "example.h"

static int32_t on_worker(void *arg, uint64_t tick) {
    (void)tick;
    pthread_getname_np(pthread_self(), arg, 32);
    return 0;
}

static int32_t on_blocking(void *arg, tb_job *job) {
    (void)job;
    pthread_getname_np(pthread_self(), arg, 32);
    sim_sleep_ms(50);
    return 0;
}

int main(void) {
    tb_runtime rt = named_runtime("pl", 2, 4, 200);
    tb_task timer, jobs[6];
    char timer_thread[32], job_threads[6][32];
    printf("after start:    %d async workers, %d blocking threads\n",
           threads_named("pl-worker"), threads_named("pl-blocking"));

    TRY(tb_timer_start(rt, 1, 0, on_worker, timer_thread, NULL, &timer));
    finish(timer);
    printf("a timer ran on %s\n", timer_thread);

    for (int i = 0; i < 6; i++) {
        TRY(tb_spawn_blocking(rt, on_blocking, job_threads[i], NULL, &jobs[i]));
    }
    sim_sleep_ms(25);
    printf("6 jobs running: %d async workers, %d blocking threads (max 4)\n",
           threads_named("pl-worker"), threads_named("pl-blocking"));
    for (int i = 0; i < 6; i++) {
        finish(jobs[i]);
        printf("  job %d ran on %s\n", i, job_threads[i]);
    }
    sim_sleep_ms(600);
    printf("idle for 600 ms: %d async workers, %d blocking threads (keep-alive 200 ms)\n",
           threads_named("pl-worker"), threads_named("pl-blocking"));
    TRY(tb_runtime_shutdown(rt, TB_FOREVER));
    return 0;
}
