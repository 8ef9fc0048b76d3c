/* A tokio_bridge user's program, built by tests/packaging.rs outside the source tree against the
   installed library only: with pkg-config (shared and static) and with CMake. It checks that the
   header and the library it runs with agree on the version, runs one blocking job, and prints
   one line for the test to compare. */
#include <tokio_bridge.h>

#include <stdio.h>
#include <string.h>

static int32_t answer(void *arg, tb_job *job) {
    (void)job;
    *(int *)arg = 42;
    return 0;
}

static int fail(const char *what) {
    char detail[256];
    tb_last_error(detail, sizeof detail);
    fprintf(stderr, "%s failed: %s\n", what, detail);
    return 1;
}

int main(void) {
    tb_runtime rt;
    tb_task task;
    tb_outcome outcome;
    int value = 0;
    if (tb_version() != TB_VERSION_HEX || strcmp(tb_version_string(), TB_VERSION_STRING) != 0) {
        fprintf(stderr, "header %s (%#x) but library %s (%#x)\n", TB_VERSION_STRING,
                (unsigned)TB_VERSION_HEX, tb_version_string(), (unsigned)tb_version());
        return 1;
    }
    if (tb_runtime_new(NULL, &rt) != TB_OK) return fail("tb_runtime_new");
    if (tb_spawn_blocking(rt, answer, &value, NULL, &task) != TB_OK) return fail("tb_spawn_blocking");
    if (tb_task_wait(task, TB_FOREVER) != TB_OK) return fail("tb_task_wait");
    if (tb_task_outcome(task, &outcome) != TB_OK) return fail("tb_task_outcome");
    printf("tokio_bridge %s: job %s, value %d\n", tb_version_string(),
           tb_status_name(outcome.status), value);
    tb_task_release(task);
    return tb_runtime_shutdown(rt, TB_FOREVER) == TB_OK ? 0 : fail("tb_runtime_shutdown");
}
