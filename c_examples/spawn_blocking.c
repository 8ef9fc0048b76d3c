/* spawn_blocking: blocking work goes to the blocking pool, and async work goes on meanwhile.
 *
 * A job sleeps 1 s on a blocking-pool thread while a timer, due after 100 ms, runs on time on
 * the async worker. */
#include "example.h"

static double due_at, ran_at;

static int32_t blocking_work(void *arg, tb_job *job) {
    (void)arg;
    (void)job;
    sim_sleep_ms(1000); /* fine here: this thread exists to block */
    return 0;
}

static int32_t async_work(void *arg, uint64_t tick) {
    (void)arg;
    (void)tick;
    ran_at = sim_now_ms();
    return 0;
}

int main(void) {
    tb_runtime rt = runtime_with(TB_CURRENT_THREAD, 1, 0);
    tb_task job, timer;
    double start = sim_now_ms();
    TRY(tb_spawn_blocking(rt, blocking_work, NULL, NULL, &job));
    due_at = sim_now_ms() + 100;
    TRY(tb_timer_start(rt, 100, 0, async_work, NULL, NULL, &timer));
    finish(timer);
    printf("the timer due at 100 ms ran %.1f ms late, while the job was blocking\n",
           ran_at - due_at);
    tb_outcome o = finish(job);
    printf("the blocking job finished after %.0f ms (%s)\n", sim_now_ms() - start,
           tb_status_name(o.status));
    TRY(tb_runtime_shutdown(rt, TB_FOREVER));
    return 0;
}
