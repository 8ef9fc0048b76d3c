/* ffi_call: a C library call that may block, wrapped as a blocking job.
 *
 * sim_ffi_call(x, 50) sleeps 50 ms and returns x * 2. The argument is moved into the job on
 * the heap and freed by free_arg; the result comes back through tb_job_set_result. */
#include "example.h"

static int32_t call_library(void *arg, tb_job *job) {
    int input = *(int *)arg;
    tb_job_set_result(job, (void *)(intptr_t)sim_ffi_call(input, 50));
    return 0;
}

int main(void) {
    tb_runtime rt;
    tb_task t;
    int *input = malloc(sizeof *input);
    *input = 42;
    TRY(tb_runtime_default(&rt));
    TRY(tb_spawn_blocking(rt, call_library, input, free, &t)); /* the job owns input now */
    tb_outcome o = finish(t);
    printf("sim_ffi_call(42) = %d after %.1f ms on the blocking pool\n", (int)(intptr_t)o.value,
           (double)o.run_us / 1000);
    return 0;
}
