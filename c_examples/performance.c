/* performance: four 100 ms blocking calls, on the async workers and on the blocking pool.
 *
 * The guide says this takes ~400 ms on 4 worker threads and ~100 ms with spawn_blocking.
 * Measured here on three runtime shapes. */
#include "example.h"

static int32_t on_worker(void *arg, uint64_t tick) {
    (void)arg;
    (void)tick;
    sim_sleep_ms(100);
    return 0;
}

static int32_t on_pool(void *arg, tb_job *job) {
    (void)arg;
    (void)job;
    sim_sleep_ms(100);
    return 0;
}

static double four_calls(tb_runtime rt, int pool) {
    tb_task t[4];
    double start = sim_now_ms();
    for (int i = 0; i < 4; i++) {
        if (pool) {
            TRY(tb_spawn_blocking(rt, on_pool, NULL, NULL, &t[i]));
        } else {
            TRY(tb_timer_start(rt, 0, 0, on_worker, NULL, NULL, &t[i]));
        }
    }
    TRY(tb_wait_all(t, 4, TB_FOREVER));
    double took = sim_now_ms() - start;
    for (int i = 0; i < 4; i++) {
        finish(t[i]);
    }
    return took;
}

int main(void) {
    static const struct {
        const char *name;
        uint32_t flavor, workers;
    } shapes[] = {{"current-thread", TB_CURRENT_THREAD, 1},
                  {"1 worker", TB_MULTI_THREAD, 1},
                  {"4 workers", TB_MULTI_THREAD, 4}};
    printf("%-16s %22s %22s\n", "runtime", "on the workers (ms)", "spawn_blocking (ms)");
    for (int i = 0; i < 3; i++) {
        tb_runtime rt = runtime_with(shapes[i].flavor, shapes[i].workers, 0);
        double blocking_runtime = four_calls(rt, 0);
        double pool = four_calls(rt, 1);
        printf("%-16s %22.0f %22.0f\n", shapes[i].name, blocking_runtime, pool);
        TRY(tb_runtime_shutdown(rt, TB_FOREVER));
    }
    return 0;
}
