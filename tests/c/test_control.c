/* Timeouts, cancellation, moving and sharing data, and errors, as a C program sees them. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "simlib.h"

static atomic_int frees;

static void count_free(void *arg) {
    (void)arg;
    atomic_fetch_add(&frees, 1);
}

static tb_outcome finish(tb_task t) {
    tb_outcome o = {0};
    CHECK_STATUS(tb_task_wait(t, TB_FOREVER), TB_OK);
    CHECK_STATUS(tb_task_outcome(t, &o), TB_OK);
    CHECK_STATUS(tb_task_release(t), TB_OK);
    return o;
}

static int32_t query_job(void *arg, tb_job *job) {
    (void)job;
    free(sim_db_query("SELECT 1", (unsigned)(intptr_t)arg));
    return 0;
}

/* 6: a wait that times out leaves the blocking job running; it finishes later. */
static void timeouts(tb_runtime rt) {
    tb_task t;
    tb_outcome o;
    atomic_store(&frees, 0);
    CHECK_STATUS(tb_spawn_blocking(rt, query_job, (void *)(intptr_t)1000, count_free, &t), TB_OK);
    double start = sim_now_ms();
    CHECK_STATUS(tb_task_wait(t, 50), TB_TIMED_OUT);
    double waited = sim_now_ms() - start;
    printf("  wait(50) on a 1 s job returned TB_TIMED_OUT after %.0f ms\n", waited);
    CHECK(waited >= 45 && waited < 900);
    CHECK_STATUS(tb_task_outcome(t, &o), TB_PENDING);
    CHECK(atomic_load(&frees) == 0);
    o = finish(t);
    printf("  ... and the job still finished, %.0f ms after submission\n", sim_now_ms() - start);
    CHECK(o.status == TB_OK && o.run_us >= 950000);
    CHECK(atomic_load(&frees) == 1);
}

static atomic_int queued_runs;

static int32_t counted_job(void *arg, tb_job *job) {
    (void)arg;
    (void)job;
    atomic_fetch_add(&queued_runs, 1);
    return 0;
}

static int32_t chunked_job(void *arg, tb_job *job) {
    (void)arg;
    return (int32_t)sim_chunked(5000, 10, job);
}

static atomic_int timer_ticks;

static int32_t tick(void *arg, uint64_t n) {
    (void)arg;
    (void)n;
    atomic_fetch_add(&timer_ticks, 1);
    return 0;
}

/* 7: cancelling a queued job, a running one, and a timer. */
static void cancellation(void) {
    tb_runtime rt = check_runtime(TB_MULTI_THREAD, 1, 1);
    tb_task blocker, queued, chunked, timer;
    tb_outcome o;
    atomic_store(&frees, 0);
    CHECK_STATUS(tb_spawn_blocking(rt, query_job, (void *)(intptr_t)300, NULL, &blocker), TB_OK);
    CHECK_STATUS(tb_spawn_blocking(rt, counted_job, NULL, count_free, &queued), TB_OK);
    CHECK_STATUS(tb_task_cancel(queued), TB_OK);
    CHECK(atomic_load(&frees) == 1);
    CHECK_STATUS(tb_task_cancel(queued), TB_ERR_ALREADY);
    o = finish(queued);
    CHECK(o.status == TB_ERR_CANCELLED);
    finish(blocker);
    sim_sleep_ms(50);
    CHECK(atomic_load(&queued_runs) == 0);
    puts("  a cancelled queued job never ran; its free_arg ran once");

    sim_reset();
    CHECK_STATUS(tb_spawn_blocking(rt, chunked_job, NULL, NULL, &chunked), TB_OK);
    while (sim_stats().in_flight == 0) {
        sim_sleep_ms(1);
    }
    sim_sleep_ms(50);
    double start = sim_now_ms();
    CHECK_STATUS(tb_task_cancel(chunked), TB_ERR_BUSY);
    o = finish(chunked);
    double stopped = sim_now_ms() - start;
    printf("  a running 5 s chunked job: TB_ERR_BUSY, stopped after %d chunks, %.0f ms after "
           "the cancel\n",
           o.code, stopped);
    CHECK(o.status == TB_ERR_CALLBACK && o.code > 0 && o.code < 100);
    CHECK(stopped < 1000);

    CHECK_STATUS(tb_timer_start(rt, 10, 10, tick, NULL, NULL, &timer), TB_OK);
    while (atomic_load(&timer_ticks) < 5) {
        sim_sleep_ms(1);
    }
    CHECK_STATUS(tb_task_cancel(timer), TB_OK);
    o = finish(timer);
    int at_cancel = atomic_load(&timer_ticks);
    sim_sleep_ms(100);
    printf("  a 10 ms timer cancelled after %llu ticks: %d ticks 100 ms later\n",
           (unsigned long long)o.ticks, atomic_load(&timer_ticks));
    CHECK(o.status == TB_ERR_CANCELLED && (int)o.ticks == at_cancel);
    CHECK(atomic_load(&timer_ticks) == at_cancel);
    CHECK_STATUS(tb_runtime_shutdown(rt, TB_FOREVER), TB_OK);
}

/* 8: data moved into a job is freed once by free_arg; a shared, reference-counted buffer read
 * by 100 jobs is freed once, by whoever drops the last reference. */
typedef struct shared_buf {
    atomic_int refs;
    size_t len;
    unsigned char bytes[];
} shared_buf;

static atomic_int shared_frees;

static shared_buf *shared_ref(shared_buf *b) {
    atomic_fetch_add(&b->refs, 1);
    return b;
}

static void shared_unref(void *arg) {
    shared_buf *b = arg;
    if (atomic_fetch_sub(&b->refs, 1) == 1) {
        atomic_fetch_add(&shared_frees, 1);
        free(b);
    }
}

static int32_t sum_bytes(void *arg, tb_job *job) {
    const shared_buf *b = arg;
    uint64_t sum = 0;
    (void)job;
    for (size_t i = 0; i < b->len; i++) {
        sum += b->bytes[i];
    }
    return (int32_t)(sum % 1000003);
}

static atomic_int moved_frees;

static void free_moved(void *arg) {
    free(arg);
    atomic_fetch_add(&moved_frees, 1);
}

static int32_t sum_moved(void *arg, tb_job *job) {
    const int *v = arg;
    (void)job;
    return v[0] + v[1] + v[2] + v[3] + v[4];
}

static void moving_and_sharing(tb_runtime rt) {
    tb_task t, tasks[100];
    int *moved = malloc(5 * sizeof *moved);
    for (int i = 0; i < 5; i++) {
        moved[i] = i + 1;
    }
    CHECK_STATUS(tb_spawn_blocking(rt, sum_moved, moved, free_moved, &t), TB_OK);
    tb_outcome o = finish(t);
    CHECK(o.status == TB_ERR_CALLBACK && o.code == 15); /* non-zero return: the sum */
    CHECK(atomic_load(&moved_frees) == 1);

    shared_buf *b = malloc(sizeof *b + 4096);
    atomic_init(&b->refs, 1);
    b->len = 4096;
    uint64_t expected = 0;
    for (size_t i = 0; i < b->len; i++) {
        b->bytes[i] = (unsigned char)(i * 7);
        expected += b->bytes[i];
    }
    for (int i = 0; i < 100; i++) {
        CHECK_STATUS(tb_spawn_blocking(rt, sum_bytes, shared_ref(b), shared_unref, &tasks[i]),
                     TB_OK);
    }
    shared_unref(b); /* drop ours: the jobs keep it alive */
    CHECK_STATUS(tb_wait_all(tasks, 100, TB_FOREVER), TB_OK);
    int right = 0;
    for (int i = 0; i < 100; i++) {
        o = finish(tasks[i]);
        right += o.code == (int32_t)(expected % 1000003);
    }
    printf("  a moved buffer freed %d time(s); a shared buffer read right by %d jobs, freed %d "
           "time(s)\n",
           atomic_load(&moved_frees), right, atomic_load(&shared_frees));
    CHECK(right == 100);
    CHECK(atomic_load(&shared_frees) == 1);
}

static int32_t flaky_job(void *arg, tb_job *job) {
    (void)job;
    return sim_flaky((uint32_t)(intptr_t)arg);
}

static int32_t never_called(void *arg, tb_job *job) {
    (void)arg;
    (void)job;
    abort();
}

static int last_error_says(const char *what) {
    char err[256];
    return tb_last_error(err, sizeof err) > 0 && strstr(err, what) != NULL;
}

/* 9: failures come back with their code; misuse gives the documented status and a message. */
static void errors(void) {
    tb_runtime rt = check_runtime(TB_MULTI_THREAD, 1, 4), dead = check_runtime(TB_MULTI_THREAD, 1, 1);
    tb_task t, tasks[30];
    for (int i = 0; i < 30; i++) {
        CHECK_STATUS(tb_spawn_blocking(rt, flaky_job, (void *)(intptr_t)i, NULL, &tasks[i]),
                     TB_OK);
    }
    int failures = 0;
    for (int i = 0; i < 30; i++) {
        tb_outcome o = finish(tasks[i]);
        if (i % 3 == 0) {
            failures++;
            CHECK(o.status == TB_ERR_CALLBACK && o.code == 10 + i % 7);
        } else {
            CHECK(o.status == TB_OK && o.code == 0);
        }
    }
    printf("  %d of 30 flaky calls failed, each with its code\n", failures);

    tb_task zero = {0}, forged = {0x2000000700000042ULL};
    tb_runtime no_runtime = {0};
    CHECK_STATUS(tb_task_wait(zero, 0), TB_ERR_BAD_HANDLE);
    CHECK(last_error_says("zero"));
    CHECK_STATUS(tb_task_poll(forged), TB_ERR_BAD_HANDLE);
    CHECK(last_error_says("task handle"));
    CHECK_STATUS(tb_spawn_blocking(no_runtime, never_called, NULL, NULL, &t), TB_ERR_BAD_HANDLE);
    CHECK(last_error_says("runtime handle"));
    CHECK_STATUS(tb_spawn_blocking(rt, NULL, NULL, NULL, &t), TB_ERR_NULL);
    CHECK(last_error_says("func"));
    CHECK_STATUS(tb_wait_any(NULL, 1, 0, NULL), TB_ERR_NULL);
    CHECK_STATUS(tb_runtime_new(NULL, NULL), TB_ERR_NULL);
    CHECK_STATUS(tb_spawn_blocking(rt, flaky_job, NULL, NULL, &t), TB_OK);
    finish(t); /* released */
    CHECK_STATUS(tb_task_wait(t, 0), TB_ERR_BAD_HANDLE);
    CHECK(last_error_says("not live"));
    CHECK_STATUS(tb_runtime_shutdown(dead, TB_FOREVER), TB_OK);
    CHECK_STATUS(tb_spawn_blocking(dead, never_called, NULL, count_free, &t), TB_ERR_SHUTDOWN);
    CHECK(last_error_says("shut down"));
    CHECK_STATUS(tb_runtime_shutdown(dead, TB_FOREVER), TB_ERR_SHUTDOWN);
    CHECK_STATUS(tb_runtime_shutdown(rt, TB_FOREVER), TB_OK);
}

int main(void) {
    tb_runtime rt = check_runtime(TB_MULTI_THREAD, 2, 8);
    puts("6: timeouts");
    timeouts(rt);
    puts("7: cancellation");
    cancellation();
    puts("8: moving and sharing data");
    moving_and_sharing(rt);
    puts("9: errors");
    errors();
    CHECK_STATUS(tb_runtime_shutdown(rt, TB_FOREVER), TB_OK);
    CHECK_DONE();
}
