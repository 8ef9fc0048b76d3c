/* timeouts_cancel: what a timeout and a cancel really do to a blocking call.
 *
 * A wait that times out leaves the job running: it finishes later, as the guide warns. A
 * running job cannot be stopped from outside: cancelling it returns TB_ERR_BUSY and sets a
 * flag; a job written in chunks checks tb_job_cancelled and stops early, one that does not
 * runs to its end. A job still in the queue is simply never run. */
#include "example.h"

static int32_t one_second(void *arg, tb_job *job) {
    (void)arg;
    (void)job;
    sim_sleep_ms(1000);
    return 0;
}

static int32_t in_chunks(void *arg, tb_job *job) {
    (void)arg;
    return (int32_t)sim_chunked(1000, 10, job); /* 100 chunks unless cancelled */
}

int main(void) {
    tb_runtime rt = runtime_with(TB_MULTI_THREAD, 1, 1); /* one blocking thread */
    tb_task slow, chunked, queued;

    double start = sim_now_ms();
    TRY(tb_spawn_blocking(rt, one_second, NULL, NULL, &slow));
    tb_status waited = tb_task_wait(slow, 50);
    printf("wait(50 ms) on a 1 s job: %s after %.0f ms\n", tb_status_name(waited),
           sim_now_ms() - start);
    TRY(tb_spawn_blocking(rt, one_second, NULL, NULL, &queued)); /* waits for the thread */
    printf("cancel of a running plain job: %s\n", tb_status_name(tb_task_cancel(slow)));
    printf("cancel of a queued job:        %s\n", tb_status_name(tb_task_cancel(queued)));
    tb_outcome o = finish(slow);
    printf("the plain job still ran to its end: %s after %.0f ms\n", tb_status_name(o.status),
           (double)o.run_us / 1000);
    o = finish(queued);
    printf("the queued job never ran: %s\n", tb_status_name(o.status));

    TRY(tb_spawn_blocking(rt, in_chunks, NULL, NULL, &chunked));
    sim_sleep_ms(100);
    start = sim_now_ms();
    printf("cancel of a running chunked job: %s\n", tb_status_name(tb_task_cancel(chunked)));
    o = finish(chunked);
    printf("it stopped after %d of 100 chunks, %.1f ms after the cancel\n", o.code,
           sim_now_ms() - start);
    TRY(tb_runtime_shutdown(rt, TB_FOREVER));
    return 0;
}
