/* blockwatch: catch a C callback blocking an async worker, then do it right.
 *
 * The runtime reports every C callback that runs on an async worker for longer than its
 * stall_threshold_ms (10 ms by default), while it runs and again when it ends, and a probe
 * measures how late a 5 ms tick runs. Round 1 runs blocking database queries in timer
 * callbacks: stalls, and ticks hundreds of ms late. Round 2 runs the same queries as blocking
 * jobs: no stall, ticks on time. (Set TB_STALL_LOG=1 to have the library print its own reports
 * to stderr too, with no code at all.) */
#include "example.h"

static const char *name_of(tb_any_fn f);

static void report(void *arg, const tb_stall *s) {
    (void)arg;
    printf("  stall: %s on %s, %6.1f ms %s\n", name_of(s->callback), s->thread_name,
           (double)s->duration_us / 1000, s->still_running ? "so far, still running" : "in all");
}

static int32_t query_in_timer(void *arg, uint64_t tick) {
    (void)arg;
    (void)tick;
    free(sim_db_query("SELECT * FROM orders", 150)); /* blocks the async worker */
    return 1;
}

static int32_t query_in_job(void *arg, tb_job *job) {
    (void)arg;
    (void)job;
    free(sim_db_query("SELECT * FROM orders", 150)); /* blocks a blocking-pool thread: fine */
    return 0;
}

static const char *name_of(tb_any_fn f) {
    return f == (tb_any_fn)query_in_timer ? "query_in_timer" : "another callback";
}

static void round_of(tb_runtime rt, const char *title, int on_pool) {
    tb_task t[3];
    tb_probe_stats probe = {.struct_size = sizeof probe};
    tb_metrics before = {.struct_size = sizeof before}, after = {.struct_size = sizeof after};
    printf("%s\n", title);
    TRY(tb_runtime_metrics(rt, &before));
    TRY(tb_runtime_probe_start(rt, 5));
    for (int i = 0; i < 3; i++) {
        if (on_pool) {
            TRY(tb_spawn_blocking(rt, query_in_job, NULL, NULL, &t[i]));
        } else {
            TRY(tb_timer_start(rt, (uint64_t)i * 10, 0, query_in_timer, NULL, NULL, &t[i]));
        }
    }
    for (int i = 0; i < 3; i++) {
        finish(t[i]);
    }
    sim_sleep_ms(20); /* let the last reports and ticks arrive */
    TRY(tb_runtime_probe_stats(rt, &probe));
    TRY(tb_runtime_probe_stop(rt));
    TRY(tb_runtime_metrics(rt, &after));
    printf("  => %llu stalls; 5 ms probe: %llu ticks, lateness p50 %.1f ms, p99 %.1f ms, "
           "max %.1f ms\n\n",
           (unsigned long long)(after.stalls - before.stalls), (unsigned long long)probe.ticks,
           (double)probe.p50_us / 1000, (double)probe.p99_us / 1000, (double)probe.max_us / 1000);
}

int main(void) {
    tb_runtime rt = runtime_with(TB_CURRENT_THREAD, 1, 0);
    TRY(tb_runtime_on_stall(rt, report, NULL));
    round_of(rt, "Round 1: three 150 ms queries in timer callbacks (wrong)", 0);
    round_of(rt, "Round 2: the same queries as blocking jobs (right)", 1);
    TRY(tb_runtime_shutdown(rt, TB_FOREVER));
    return 0;
}
