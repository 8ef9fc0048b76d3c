/* A tiny check library for the C test programs: each CHECK counts a pass or prints the
 * failure with its file and line; CHECK_DONE prints "N passed, N failed" and gives the exit
 * status. Status checks print status names and the thread's last error. */
#ifndef CHECK_H
#define CHECK_H

#include <stdio.h>
#include "tokio_bridge.h"

static int check_passed, check_failed;

#define CHECK(cond)                                                                      \
    do {                                                                                 \
        if (cond) {                                                                      \
            check_passed++;                                                              \
        } else {                                                                         \
            check_failed++;                                                              \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);     \
        }                                                                                \
    } while (0)

#define CHECK_STATUS(expr, expected)                                                     \
    do {                                                                                 \
        tb_status check_got_ = (expr);                                                   \
        if (check_got_ == (expected)) {                                                  \
            check_passed++;                                                              \
        } else {                                                                         \
            char check_err_[256];                                                        \
            check_failed++;                                                              \
            tb_last_error(check_err_, sizeof check_err_);                                \
            fprintf(stderr, "%s:%d: %s returned %s, expected %s (last error: %s)\n",     \
                    __FILE__, __LINE__, #expr, tb_status_name(check_got_),               \
                    tb_status_name(expected), check_err_);                               \
        }                                                                                \
    } while (0)

#define CHECK_DONE()                                                                     \
    do {                                                                                 \
        printf("%d passed, %d failed\n", check_passed, check_failed);                    \
        return check_failed == 0 ? 0 : 1;                                                \
    } while (0)

/* A runtime of the given flavor, async workers and blocking threads (0: defaults). */
static inline tb_runtime check_runtime(uint32_t flavor, uint32_t workers, uint32_t max_blocking) {
    tb_runtime_config cfg;
    tb_runtime rt = {0};
    tb_runtime_config_init(&cfg);
    cfg.flavor = flavor;
    cfg.worker_threads = workers;
    cfg.max_blocking_threads = max_blocking;
    CHECK_STATUS(tb_runtime_new(&cfg, &rt), TB_OK);
    return rt;
}

#endif
