/* The library loaded with dlopen, used, and dlclose()d while its threads still run.
 *
 * This program does not link libtokio_bridge: it loads the path given in TB_LIB_PATH. The
 * library is linked with -z nodelete, so dlclose() leaves it mapped while a periodic timer
 * and a blocking job keep running; the process then goes on and exits normally. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "tokio_bridge.h"

static int passed, failed;

#define EXPECT(cond)                                                                     \
    do {                                                                                 \
        if (cond) {                                                                      \
            passed++;                                                                    \
        } else {                                                                         \
            failed++;                                                                    \
            fprintf(stderr, "%s:%d: EXPECT failed: %s\n", __FILE__, __LINE__, #cond);    \
        }                                                                                \
    } while (0)

static atomic_int ticks, jobs_done;

static int32_t tick(void *arg, uint64_t n) {
    (void)arg;
    (void)n;
    atomic_fetch_add(&ticks, 1);
    return 0;
}

static int32_t job(void *arg, tb_job *j) {
    (void)arg;
    (void)j;
    struct timespec ts = {0, 200 * 1000000L};
    nanosleep(&ts, NULL);
    atomic_fetch_add(&jobs_done, 1);
    return 0;
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int main(void) {
    const char *path = getenv("TB_LIB_PATH");
    void *lib = path != NULL ? dlopen(path, RTLD_NOW | RTLD_LOCAL) : NULL;
    EXPECT(lib != NULL);
    if (lib == NULL) {
        fprintf(stderr, "dlopen(%s): %s\n", path ? path : "(TB_LIB_PATH unset)", dlerror());
        return 1;
    }
    /* ISO C cannot convert dlsym's void * to a function pointer; POSIX guarantees it works. */
    tb_status (*runtime_new)(const tb_runtime_config *, tb_runtime *);
    tb_status (*timer_start)(tb_runtime, uint64_t, uint64_t, tb_timer_fn, void *, tb_free_fn,
                             tb_task *);
    tb_status (*spawn_blocking)(tb_runtime, tb_blocking_fn, void *, tb_free_fn, tb_task *);
    *(void **)&runtime_new = dlsym(lib, "tb_runtime_new");
    *(void **)&timer_start = dlsym(lib, "tb_timer_start");
    *(void **)&spawn_blocking = dlsym(lib, "tb_spawn_blocking");
    EXPECT(runtime_new != NULL && timer_start != NULL && spawn_blocking != NULL);

    tb_runtime rt;
    tb_task timer, t;
    EXPECT(runtime_new(NULL, &rt) == TB_OK);
    EXPECT(timer_start(rt, 1, 5, tick, NULL, NULL, &timer) == TB_OK);
    EXPECT(spawn_blocking(rt, job, NULL, NULL, &t) == TB_OK);
    sleep_ms(20);
    EXPECT(dlclose(lib) == 0); /* threads are running library code right now */
    int before = atomic_load(&ticks);
    sleep_ms(300);
    printf("  after dlclose: %d more ticks, %d job(s) finished; no crash\n",
           atomic_load(&ticks) - before, atomic_load(&jobs_done));
    EXPECT(atomic_load(&ticks) > before);
    EXPECT(atomic_load(&jobs_done) == 1);
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
