/* error_handling: the two layers of errors, as the guide describes for JoinError.
 *
 * The call's status says whether the library did what was asked (submitted, waited...). The
 * task's outcome says how the job ended: TB_OK, TB_ERR_CALLBACK with the job's own code,
 * TB_ERR_CANCELLED, TB_ERR_SHUTDOWN. tb_last_error explains any failed call. */
#include "example.h"

static int32_t flaky(void *arg, tb_job *job) {
    (void)job;
    return sim_flaky((uint32_t)(intptr_t)arg); /* non-zero on every third seed */
}

int main(void) {
    tb_runtime rt;
    tb_task t;
    char why[256];
    TRY(tb_runtime_default(&rt));

    for (int seed = 0; seed < 4; seed++) {
        TRY(tb_spawn_blocking(rt, flaky, (void *)(intptr_t)seed, NULL, &t));
        tb_outcome o = finish(t);
        printf("seed %d: outcome %-16s code %d\n", seed, tb_status_name(o.status), o.code);
    }

    /* Misuse is an error code with an explanation, never a crash. */
    tb_task released = t, forged = {0x2000000000001234ULL};
    tb_status s = tb_task_wait(released, 0);
    tb_last_error(why, sizeof why);
    printf("wait on a released handle: %s\n  %s\n", tb_status_name(s), why);
    s = tb_task_cancel(forged);
    tb_last_error(why, sizeof why);
    printf("cancel with a forged handle: %s\n  %s\n", tb_status_name(s), why);
    s = tb_spawn_blocking(rt, NULL, NULL, NULL, &t);
    tb_last_error(why, sizeof why);
    printf("submit without a function: %s\n  %s\n", tb_status_name(s), why);
    return 0;
}
