/* file_io: standard file I/O blocks, so it belongs on the blocking pool.
 *
 * Four jobs each write 4 MiB to a temporary file, fsync it, read it back and compare; the
 * outcome says how many bytes were verified. */
#include "example.h"

static int32_t roundtrip(void *arg, tb_job *job) {
    size_t bytes = *(size_t *)arg;
    long verified = sim_file_roundtrip(NULL, bytes);
    tb_job_set_result(job, (void *)(intptr_t)verified);
    return verified == (long)bytes ? 0 : 1;
}

int main(void) {
    tb_runtime rt;
    tb_task jobs[4];
    size_t bytes = 4u << 20;
    TRY(tb_runtime_default(&rt));
    double start = sim_now_ms();
    for (int i = 0; i < 4; i++) {
        TRY(tb_spawn_blocking(rt, roundtrip, &bytes, NULL, &jobs[i]));
    }
    for (int i = 0; i < 4; i++) {
        tb_outcome o = finish(jobs[i]);
        printf("job %d: %s, %ld bytes written, fsynced, read back and verified in %.1f ms\n", i,
               tb_status_name(o.status), (long)(intptr_t)o.value, (double)o.run_us / 1000);
    }
    printf("all four in %.1f ms\n", sim_now_ms() - start);
    return 0;
}
