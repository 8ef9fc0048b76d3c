/* pool_config: sizing the pools, as in the guide: 4 async workers, 16 blocking threads.
 *
 * 20 jobs of 100 ms: 16 start at once, the other 4 wait for a free thread, so the batch takes
 * two rounds. Threads are started on demand and leave after the keep-alive time. */
#include "example.h"

static int32_t job(void *arg, tb_job *j) {
    (void)arg;
    (void)j;
    sim_sleep_ms(100);
    return 0;
}

int main(void) {
    tb_runtime rt = named_runtime("cfg", 4, 16, 300); /* the guide's 4 workers, 16 threads */
    tb_task t[20];
    printf("before any job: %d blocking threads\n", threads_named("cfg-blocking"));
    double start = sim_now_ms();
    for (int i = 0; i < 20; i++) {
        TRY(tb_spawn_blocking(rt, job, NULL, NULL, &t[i]));
    }
    sim_sleep_ms(50);
    printf("20 jobs submitted: %d blocking threads running\n", threads_named("cfg-blocking"));
    TRY(tb_wait_all(t, 20, TB_FOREVER));
    printf("20 jobs of 100 ms done in %.0f ms\n", sim_now_ms() - start);
    for (int i = 0; i < 20; i++) {
        tb_outcome o = finish(t[i]);
        if (i % 5 == 0) {
            printf("  job %2d waited %3.0f ms in the queue\n", i, (double)o.queued_us / 1000);
        }
    }
    sim_sleep_ms(700);
    printf("idle for 700 ms (keep-alive 300 ms): %d blocking threads\n",
           threads_named("cfg-blocking"));
    TRY(tb_runtime_shutdown(rt, TB_FOREVER));
    return 0;
}
