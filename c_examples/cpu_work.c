/* cpu_work: CPU-heavy work starves the async worker it runs on; on the blocking pool it does
 * not.
 *
 * The guide's loop, the wrapping sum of 0..1e9, runs once inside a timer callback and once
 * as a blocking job, on a current-thread runtime, while a 10 ms ticker counts its ticks. */
#include <stdatomic.h>

#include "example.h"

#define N 1000000000ULL

static atomic_int ticks;
static uint64_t sum_in_timer;

static int32_t ticker(void *arg, uint64_t tick) {
    (void)arg;
    (void)tick;
    atomic_fetch_add(&ticks, 1);
    return 0;
}

static int32_t sum_on_worker(void *arg, uint64_t tick) {
    (void)arg;
    (void)tick;
    sum_in_timer = sim_cpu_sum(N);
    return 0;
}

static int32_t sum_on_pool(void *arg, tb_job *job) {
    (void)arg;
    uint64_t *sum = malloc(sizeof *sum);
    *sum = sim_cpu_sum(N);
    tb_job_set_result(job, sum); /* handed to whoever reads the outcome */
    return 0;
}

int main(void) {
    tb_runtime rt = runtime_with(TB_CURRENT_THREAD, 1, 0);
    tb_task ticking, work;

    TRY(tb_timer_start(rt, 10, 10, ticker, NULL, NULL, &ticking));

    atomic_store(&ticks, 0);
    double start = sim_now_ms();
    TRY(tb_timer_start(rt, 0, 0, sum_on_worker, NULL, NULL, &work));
    finish(work);
    double took = sim_now_ms() - start;
    printf("on the async worker:  sum %llu in %.0f ms, the ticker ticked %d times of ~%.0f\n",
           (unsigned long long)sum_in_timer, took, atomic_load(&ticks), took / 10);

    atomic_store(&ticks, 0);
    start = sim_now_ms();
    TRY(tb_spawn_blocking(rt, sum_on_pool, NULL, NULL, &work));
    tb_outcome o = finish(work);
    took = sim_now_ms() - start;
    printf("on the blocking pool: sum %llu in %.0f ms, the ticker ticked %d times of ~%.0f\n",
           (unsigned long long)*(uint64_t *)o.value, took, atomic_load(&ticks), took / 10);
    free(o.value);

    TRY(tb_task_cancel(ticking));
    finish(ticking);
    TRY(tb_runtime_shutdown(rt, TB_FOREVER));
    return 0;
}
