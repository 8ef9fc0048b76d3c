/* Process-level faults: the OS refusing threads, and fork() with a runtime running.
 *
 * Both happen in child processes so that the parent stays a clean witness. The thread limit
 * comes first, before this process starts any runtime: a child forked after that would (by
 * design) refuse every call. */
#define _GNU_SOURCE
#include <signal.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "simlib.h"

/* Runs `body` in a child process that must exit 0 within `seconds`; the child's own checks
 * print like ours. */
static int in_child(int (*body)(void), unsigned seconds) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        alarm(seconds); /* a hang becomes SIGALRM, a failure */
        int rc = body();
        fflush(stdout);
        _exit(rc);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (WIFSIGNALED(status)) {
        printf("  child killed by signal %d\n", WTERMSIG(status));
    }
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

static int32_t never_runs(void *arg, tb_job *job) {
    (void)job;
    (*(int *)arg)++;
    return 0;
}

static int frees;

static void count_free(void *arg) {
    (void)arg;
    frees++;
}

/* Creates a runtime with one thread, then lets the OS refuse every further thread: a job that
 * needs a blocking thread is refused with TB_ERR_OS, its arg still the caller's. */
static int no_blocking_thread(void) {
    struct rlimit plenty = {64, 64}, two = {2, 2};
    if (setrlimit(RLIMIT_NPROC, &plenty) != 0 || (getuid() == 0 && setuid(65534) != 0)) {
        perror("setting up the thread limit");
        return 2;
    }
    tb_runtime_config cfg;
    tb_runtime rt;
    tb_task t;
    int ran = 0;
    tb_runtime_config_init(&cfg);
    cfg.flavor = TB_CURRENT_THREAD;
    cfg.stall_threshold_ms = 0;
    CHECK_STATUS(tb_runtime_new(&cfg, &rt), TB_OK); /* this thread and the worker: two */
    CHECK(setrlimit(RLIMIT_NPROC, &two) == 0);
    CHECK_STATUS(tb_spawn_blocking(rt, never_runs, &ran, count_free, &t), TB_ERR_OS);
    sim_sleep_ms(50);
    CHECK(ran == 0 && frees == 0);
    CHECK_STATUS(tb_sleep(rt, 1, &t), TB_OK); /* the async side still works */
    CHECK_STATUS(tb_task_wait(t, TB_FOREVER), TB_OK);
    CHECK_STATUS(tb_task_release(t), TB_OK);
    CHECK_STATUS(tb_runtime_shutdown(rt, TB_FOREVER), TB_OK);
    puts("  a job refused with TB_ERR_OS when no blocking thread can start; nothing ran or was freed");
    CHECK_DONE();
}

/* No thread can be started in this child: every call that needs one says TB_ERR_OS. */
static int without_threads(void) {
    struct rlimit one = {1, 1};
    /* As root the limit is not enforced, so become an ordinary user first; the limit counts
     * the threads of the real user, and this process is that user's only thread. */
    if (setrlimit(RLIMIT_NPROC, &one) != 0 || (getuid() == 0 && setuid(65534) != 0)) {
        perror("setting up the thread limit");
        return 2;
    }
    tb_runtime_config cfg;
    tb_runtime rt;
    char err[256];
    tb_runtime_config_init(&cfg);
    cfg.worker_threads = 2;
    CHECK_STATUS(tb_runtime_new(&cfg, &rt), TB_ERR_OS);
    CHECK(tb_last_error(err, sizeof err) > 0);
    printf("  multi-thread runtime without threads: %s\n", err);
    cfg.stall_threshold_ms = 0; /* no watchdog: the workers are the first threads asked for */
    CHECK_STATUS(tb_runtime_new(&cfg, &rt), TB_ERR_OS);
    tb_last_error(err, sizeof err);
    printf("  ... without a watchdog either: %s\n", err);
    cfg.stall_threshold_ms = 10;
    cfg.flavor = TB_CURRENT_THREAD;
    cfg.worker_threads = 1;
    CHECK_STATUS(tb_runtime_new(&cfg, &rt), TB_ERR_OS);
    cfg.stall_threshold_ms = 0;
    CHECK_STATUS(tb_runtime_new(&cfg, &rt), TB_ERR_OS);
    tb_last_error(err, sizeof err);
    printf("  current-thread runtime without threads: %s\n", err);
    CHECK_DONE();
}

static tb_task parent_job;
static tb_runtime parent_runtime;

/* A child of a process with a running runtime: every call refuses at once. */
static int after_fork(void) {
    tb_task t;
    tb_runtime rt;
    tb_outcome o;
    char err[256];
    int ran = 0;
    CHECK_STATUS(tb_spawn_blocking(parent_runtime, never_runs, &ran, count_free, &t),
                 TB_ERR_FORKED);
    CHECK_STATUS(tb_task_wait(parent_job, TB_FOREVER), TB_ERR_FORKED);
    CHECK_STATUS(tb_task_poll(parent_job), TB_ERR_FORKED);
    CHECK_STATUS(tb_task_outcome(parent_job, &o), TB_ERR_FORKED);
    CHECK_STATUS(tb_sleep(parent_runtime, 1, &t), TB_ERR_FORKED);
    CHECK_STATUS(tb_runtime_new(NULL, &rt), TB_ERR_FORKED);
    CHECK_STATUS(tb_runtime_default(&rt), TB_ERR_FORKED);
    CHECK_STATUS(tb_runtime_shutdown(parent_runtime, TB_FOREVER), TB_ERR_FORKED);
    CHECK(!tb_job_cancelled(NULL));
    CHECK(tb_last_error(err, sizeof err) > 0 && strstr(err, "fork") != NULL);
    CHECK(strcmp(tb_status_name(TB_ERR_FORKED), "TB_ERR_FORKED") == 0);
    CHECK(tb_version() == TB_VERSION_HEX);
    CHECK(ran == 0 && frees == 0);
    printf("  in the child: %s\n", err);
    CHECK_DONE();
}

static int32_t slow(void *arg, tb_job *job) {
    (void)arg;
    (void)job;
    sim_sleep_ms(300);
    return 0;
}

int main(void) {
    puts("the OS refuses threads (RLIMIT_NPROC in a child)");
    CHECK(in_child(without_threads, 30));
    CHECK(in_child(no_blocking_thread, 30));

    puts("fork() while a runtime runs a job");
    parent_runtime = check_runtime(TB_MULTI_THREAD, 2, 4);
    CHECK_STATUS(tb_spawn_blocking(parent_runtime, slow, NULL, NULL, &parent_job), TB_OK);
    CHECK(in_child(after_fork, 30));
    /* The parent is unaffected. */
    CHECK_STATUS(tb_task_wait(parent_job, TB_FOREVER), TB_OK);
    CHECK_STATUS(tb_task_release(parent_job), TB_OK);
    CHECK_STATUS(tb_runtime_shutdown(parent_runtime, TB_FOREVER), TB_OK);
    CHECK_DONE();
}
