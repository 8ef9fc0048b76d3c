/* problem_blocking: a timer callback that blocks delays every other task of its worker.
 *
 * A callback that sleeps 1 s runs on the runtime's only async worker; a second timer, due
 * 10 ms later, can only run once the worker is free again. With two workers the second timer
 * moves to the free one. */
#include "example.h"

static double due_at;
static double late_by;

static int32_t blocks_the_worker(void *arg, uint64_t tick) {
    (void)arg;
    (void)tick;
    sim_sleep_ms(1000); /* a blocking call on an async worker: the mistake */
    return 0;
}

static int32_t might_be_delayed(void *arg, uint64_t tick) {
    (void)arg;
    (void)tick;
    late_by = sim_now_ms() - due_at;
    return 0;
}

static void run(const char *shape, uint32_t flavor, uint32_t workers) {
    tb_runtime rt = runtime_with(flavor, workers, 0);
    tb_task blocker, victim;
    TRY(tb_timer_start(rt, 0, 0, blocks_the_worker, NULL, NULL, &blocker));
    sim_sleep_ms(5);
    due_at = sim_now_ms() + 10;
    TRY(tb_timer_start(rt, 10, 0, might_be_delayed, NULL, NULL, &victim));
    finish(victim);
    finish(blocker);
    printf("%-16s the 10 ms timer ran %4.0f ms late\n", shape, late_by);
    TRY(tb_runtime_shutdown(rt, TB_FOREVER));
}

int main(void) {
    puts("A timer callback sleeps 1 s on an async worker; another timer is due 10 ms later.");
    run("current-thread:", TB_CURRENT_THREAD, 1);
    run("1 worker:", TB_MULTI_THREAD, 1);
    run("2 workers:", TB_MULTI_THREAD, 2);
    return 0;
}
