/* What every example shares: TRY() stops the program with the status name and the detailed
 * last error when a call fails, runtime_with() builds a runtime in one line, finish() waits
 * for a task and releases it, threads_named() counts the pools' threads. */
#ifndef EXAMPLE_H
#define EXAMPLE_H

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "simlib.h"
#include "tokio_bridge.h"

static inline void example_fail(const char *call, tb_status status) {
    char detail[256];
    tb_last_error(detail, sizeof detail);
    fprintf(stderr, "%s failed: %s\n  %s\n", call, tb_status_name(status), detail);
    exit(1);
}

#define TRY(call)                                                                        \
    do {                                                                                 \
        tb_status try_status_ = (call);                                                  \
        if (try_status_ < 0) {                                                           \
            example_fail(#call, try_status_);                                            \
        }                                                                                \
    } while (0)

/* A config of the given flavor, async workers and blocking threads (0: defaults). */
static inline tb_runtime_config example_config(uint32_t flavor, uint32_t workers,
                                               uint32_t max_blocking) {
    tb_runtime_config cfg;
    tb_runtime_config_init(&cfg);
    cfg.flavor = flavor;
    cfg.worker_threads = workers;
    cfg.max_blocking_threads = max_blocking;
    return cfg;
}

/* A runtime of the given flavor, async workers and blocking threads (0: defaults). */
static inline tb_runtime runtime_with(uint32_t flavor, uint32_t workers, uint32_t max_blocking) {
    tb_runtime_config cfg = example_config(flavor, workers, max_blocking);
    tb_runtime rt;
    TRY(tb_runtime_new(&cfg, &rt));
    return rt;
}

/* A runtime with a thread name prefix and a blocking keep-alive time, to watch its threads. */
static inline tb_runtime named_runtime(const char *name, uint32_t workers, uint32_t max_blocking,
                                       uint32_t keep_alive_ms) {
    tb_runtime_config cfg = example_config(TB_MULTI_THREAD, workers, max_blocking);
    tb_runtime rt;
    cfg.blocking_keep_alive_ms = keep_alive_ms;
    cfg.thread_name = name; /* the kernel keeps 15 bytes of a thread name */
    TRY(tb_runtime_new(&cfg, &rt));
    return rt;
}

/* Waits for a task, returns its outcome and releases the handle. */
static inline tb_outcome finish(tb_task t) {
    tb_outcome o;
    TRY(tb_task_wait(t, TB_FOREVER));
    TRY(tb_task_outcome(t, &o));
    TRY(tb_task_release(t));
    return o;
}

/* Counts this process's threads whose name starts with `prefix` (Linux: /proc/self/task). */
static inline int threads_named(const char *prefix) {
    DIR *dir = opendir("/proc/self/task");
    struct dirent *entry;
    int n = 0;
    while (dir != NULL && (entry = readdir(dir)) != NULL) {
        char path[300], name[32] = "";
        snprintf(path, sizeof path, "/proc/self/task/%s/comm", entry->d_name);
        FILE *f = fopen(path, "r");
        if (f != NULL) {
            n += fgets(name, sizeof name, f) != NULL && strncmp(name, prefix, strlen(prefix)) == 0;
            fclose(f);
        }
    }
    if (dir != NULL) {
        closedir(dir);
    }
    return n;
}

#endif
