/* async_timers: sleeps and timers are async tasks, cheap enough to start by the thousand.
 *
 * 1000 concurrent 1 ms sleeps take about as long as one, because no thread waits for them:
 * the runtime's timer wakes each task when it is due. */
#include "example.h"

#define N 1000

static int32_t count(void *arg, uint64_t tick) {
    (void)tick;
    (*(int *)arg)++;
    return 0;
}

int main(void) {
    static tb_task sleeps[N];
    tb_runtime rt;
    tb_task timer;
    int ticks = 0;
    TRY(tb_runtime_default(&rt));

    double start = sim_now_ms();
    for (int i = 0; i < N; i++) {
        TRY(tb_sleep(rt, 1, &sleeps[i]));
    }
    TRY(tb_wait_all(sleeps, N, TB_FOREVER));
    printf("%d concurrent sleeps of 1 ms: %.1f ms in all\n", N, sim_now_ms() - start);
    for (int i = 0; i < N; i++) {
        TRY(tb_task_release(sleeps[i]));
    }

    /* A periodic timer: every 20 ms, stopped after 200 ms by cancelling it. */
    TRY(tb_timer_start(rt, 20, 20, count, &ticks, NULL, &timer));
    sim_sleep_ms(210);
    TRY(tb_task_cancel(timer));
    tb_outcome o = finish(timer);
    printf("a 20 ms timer cancelled after 210 ms ticked %llu times (%s)\n",
           (unsigned long long)o.ticks, tb_status_name(o.status));
    return 0;
}
