/* when_to_use: measure how long a piece of work holds its thread, then pick the pool.
 *
 * Rule of thumb: an async worker may run a callback for at most ~100 us before it delays the
 * worker's other tasks noticeably; anything longer, and anything that may block on I/O or a
 * lock, belongs on the blocking pool. Each kind of work runs once as a blocking job here so
 * its run time can be measured safely. */
#include "example.h"

typedef struct work {
    const char *what;
    void (*run)(void);
} work;

static void count_a_tick(void) {
    static volatile int ticks;
    ticks++;
}
static void small_sum(void) {
    (void)sim_cpu_sum(1000);
}
static void big_sum(void) {
    (void)sim_cpu_sum(100000000);
}
static void write_and_fsync(void) {
    (void)sim_file_roundtrip(NULL, 64 << 10);
}
static void db_query(void) {
    free(sim_db_query("SELECT 1", 5));
}
static void library_call(void) {
    (void)sim_ffi_call(1, 1);
}

static int32_t measure(void *arg, tb_job *job) {
    (void)job;
    ((const work *)arg)->run();
    return 0;
}

int main(void) {
    static const work kinds[] = {
        {"increment a counter", count_a_tick},
        {"sum 1e3 numbers", small_sum},
        {"sum 1e8 numbers", big_sum},
        {"write 64 KiB + fsync", write_and_fsync},
        {"database query (5 ms)", db_query},
        {"blocking library call (1 ms)", library_call},
    };
    tb_runtime rt;
    TRY(tb_runtime_default(&rt));
    printf("%-30s %12s   %s\n", "work", "holds (us)", "submit with");
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        tb_task t;
        TRY(tb_spawn_blocking(rt, measure, (void *)&kinds[i], NULL, &t));
        tb_outcome o = finish(t);
        printf("%-30s %12llu   %s\n", kinds[i].what, (unsigned long long)o.run_us,
               o.run_us > 100 ? "tb_spawn_blocking (blocking pool)"
                              : "tb_timer_start (async worker) is fine");
    }
    return 0;
}
