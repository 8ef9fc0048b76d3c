/* A program built against an older header, whose tb_runtime_config ended after
   max_blocking_threads. The library must read only the struct_size bytes it is given and take
   the defaults for the fields the old struct lacks.

   The old struct lies at the start of today's struct, whose later fields are set to tripwires:
   values the library would refuse (thread_stack_size) or that would show (blocking_keep_alive_ms,
   max_queued_blocking, thread_name) if it read past struct_size. Built by tests/packaging.rs
   against the installed library, with the C harness's tests/c/check.h. */
#define _GNU_SOURCE
#include <tokio_bridge.h>

#include "check.h"

#include <pthread.h>
#include <stddef.h>
#include <string.h>
#include <time.h>

/* tb_runtime_config as the older header declared it. */
struct old_runtime_config {
    uint32_t struct_size;
    uint32_t flavor;
    uint32_t worker_threads;
    uint32_t max_blocking_threads;
};

_Static_assert(sizeof(struct old_runtime_config) ==
                   offsetof(tb_runtime_config, max_blocking_threads) + sizeof(uint32_t),
               "the old struct ends where max_blocking_threads ends today");

union config_memory {
    struct old_runtime_config old;
    tb_runtime_config now;
};

/* What one job saw: the name of its thread. */
struct probe {
    char thread[16];
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int in_flight, peak;

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int32_t job(void *arg, tb_job *j) {
    struct probe *probe = arg;
    (void)j;
    pthread_getname_np(pthread_self(), probe->thread, sizeof probe->thread);
    pthread_mutex_lock(&lock);
    if (++in_flight > peak) peak = in_flight;
    pthread_mutex_unlock(&lock);
    sleep_ms(50);
    pthread_mutex_lock(&lock);
    in_flight--;
    pthread_mutex_unlock(&lock);
    return 0;
}

/* Every job must have run on the one blocking thread, named from the default prefix "tb". */
static void check_thread(const struct probe *probe) {
    CHECK(strcmp(probe->thread, "tb-blocking-0") == 0);
    if (strcmp(probe->thread, "tb-blocking-0") != 0) fprintf(stderr, "  it ran on %s\n", probe->thread);
}

/* Runs `n` jobs at once and waits for them; returns how many were accepted. */
static int run_jobs(tb_runtime rt, struct probe *probes, int n) {
    tb_task tasks[3];
    int accepted = 0;
    for (int i = 0; i < n; i++) {
        if (tb_spawn_blocking(rt, job, &probes[i], NULL, &tasks[accepted]) == TB_OK) accepted++;
    }
    tb_wait_all(tasks, (size_t)accepted, TB_FOREVER);
    for (int i = 0; i < accepted; i++) tb_task_release(tasks[i]);
    return accepted;
}

int main(void) {
    union config_memory mem;
    tb_runtime rt;
    struct probe first[3] = {{""}, {""}, {""}}, later = {""};

    tb_runtime_config_init(&mem.now);
    mem.now.blocking_keep_alive_ms = 1; /* default 10 s; 1 ms: an idle thread would exit */
    mem.now.max_queued_blocking = 1;    /* default unbounded; 1: a third job would be refused */
    mem.now.thread_stack_size = 1;      /* default 0; 1 is refused */
    mem.now.thread_name = "read";       /* default "tb" */
    mem.old.flavor = TB_MULTI_THREAD;
    mem.old.worker_threads = 1;
    mem.old.max_blocking_threads = 1;

    mem.old.struct_size = sizeof mem.now; /* the tripwires are refused when read */
    CHECK_STATUS(tb_runtime_new(&mem.now, &rt), TB_ERR_INVALID_ARG);
    mem.old.struct_size = sizeof mem.old - 1; /* not the end of a field */
    CHECK_STATUS(tb_runtime_new(&mem.now, &rt), TB_ERR_INVALID_ARG);

    mem.old.struct_size = sizeof mem.old;
    CHECK_STATUS(tb_runtime_new((const tb_runtime_config *)&mem.old, &rt), TB_OK);
    if (check_failed > 0) CHECK_DONE();

    /* max_queued_blocking took its default: three jobs queue behind the one thread. */
    CHECK(run_jobs(rt, first, 3) == 3);
    /* max_blocking_threads = 1 was read: one job at a time. */
    CHECK(peak == 1);
    /* thread_name took its default. */
    for (int i = 0; i < 3; i++) check_thread(&first[i]);
    /* blocking_keep_alive_ms took its default: after 300 ms idle the same thread runs a job. */
    sleep_ms(300);
    CHECK(run_jobs(rt, &later, 1) == 1);
    check_thread(&later);
    CHECK_STATUS(tb_runtime_shutdown(rt, TB_FOREVER), TB_OK);
    CHECK_DONE();
}
