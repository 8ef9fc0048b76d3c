/* responsiveness: with the blocking work on the pool, async tasks keep their rhythm.
 *
 * As in the guide: a 1 s blocking job, and an async task ticking every 100 ms meanwhile. */
#include "example.h"

static double start;

static int32_t tick(void *arg, uint64_t n) {
    (void)arg;
    printf("async tick %llu at %4.0f ms\n", (unsigned long long)n + 1, sim_now_ms() - start);
    return sim_now_ms() - start >= 1000 ? 1 : 0;
}

static int32_t blocking(void *arg, tb_job *job) {
    (void)arg;
    (void)job;
    sim_sleep_ms(1000);
    return 0;
}

int main(void) {
    tb_runtime rt = runtime_with(TB_CURRENT_THREAD, 1, 0);
    tb_task job, ticker;
    start = sim_now_ms();
    TRY(tb_spawn_blocking(rt, blocking, NULL, NULL, &job));
    TRY(tb_timer_start(rt, 100, 100, tick, NULL, NULL, &ticker));
    tb_outcome j = finish(job), t = finish(ticker);
    printf("blocking job: %s after %.0f ms; async ticks: %llu\n", tb_status_name(j.status),
           (double)j.run_us / 1000, (unsigned long long)t.ticks);
    TRY(tb_runtime_shutdown(rt, TB_FOREVER));
    return 0;
}
