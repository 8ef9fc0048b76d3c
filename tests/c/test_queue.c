/* Completion queues from C: tags exactly once through a pollable fd, completion racing
 * tb_task_notify, a drain on another thread, and freeing a queue with notifications pending. */
#define _GNU_SOURCE
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "simlib.h"

#define N 2000

static int32_t quick(void *arg, tb_job *job) {
    (void)arg;
    (void)job;
    return 0;
}

static int32_t slow(void *arg, tb_job *job) {
    (void)arg;
    (void)job;
    return sim_ffi_call(1, 100) == 2 ? 0 : 1;
}

static int readable(int fd, int timeout_ms) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, timeout_ms) == 1;
}

/* Drains everything; counts each tag in seen[]. Returns how many tags it took. */
static size_t drain_all(tb_queue q, int *seen) {
    uint64_t tags[128];
    size_t got, total = 0;
    do {
        CHECK_STATUS(tb_queue_drain(q, tags, 128, &got), TB_OK);
        for (size_t i = 0; i < got; i++) {
            seen[tags[i]]++;
        }
        total += got;
    } while (got == 128);
    return total;
}

static tb_queue shared_queue;
static int seen_by_drainer[N];

static void *drainer(void *arg) {
    size_t total = 0;
    (void)arg;
    while (total < N && tb_queue_wait(shared_queue, 10000) == TB_OK) {
        total += drain_all(shared_queue, seen_by_drainer);
    }
    return NULL;
}

int main(void) {
    static int seen[N];
    tb_runtime rt = check_runtime(TB_MULTI_THREAD, 2, 8);
    tb_queue q;
    tb_task t;
    int fd;

    /* Completion racing notify: quick jobs finish around the time notify is registered. */
    CHECK_STATUS(tb_queue_new(&q), TB_OK);
    CHECK_STATUS(tb_queue_fd(q, &fd), TB_OK);
    CHECK(!readable(fd, 0));
    for (int i = 0; i < N; i++) {
        CHECK_STATUS(tb_spawn_blocking(rt, quick, NULL, NULL, &t), TB_OK);
        CHECK_STATUS(tb_task_notify(t, q, (uint64_t)i), TB_OK);
        CHECK_STATUS(tb_task_release(t), TB_OK);
    }
    size_t total = 0;
    double start = sim_now_ms();
    while (total < N && sim_now_ms() - start < 20000) {
        if (readable(fd, 1000)) {
            total += drain_all(q, seen);
            CHECK(!readable(fd, 0) || tb_queue_wait(q, 0) == TB_OK);
        }
    }
    int once = 0;
    for (int i = 0; i < N; i++) {
        once += seen[i] == 1;
    }
    tb_queue_stats stats = {.struct_size = sizeof stats};
    CHECK_STATUS(tb_queue_get_stats(q, &stats), TB_OK);
    printf("  %d of %d tags exactly once; %llu fd wake-ups for %llu completions\n", once, N,
           (unsigned long long)stats.wakeups, (unsigned long long)stats.pushed);
    CHECK(once == N && stats.pending == 0 && !readable(fd, 0));
    CHECK_STATUS(tb_queue_free(q), TB_OK);

    /* Another thread drains while this one submits. */
    CHECK_STATUS(tb_queue_new(&shared_queue), TB_OK);
    pthread_t th;
    pthread_create(&th, NULL, drainer, NULL);
    for (int i = 0; i < N; i++) {
        CHECK_STATUS(tb_spawn_blocking(rt, quick, NULL, NULL, &t), TB_OK);
        CHECK_STATUS(tb_task_notify(t, shared_queue, (uint64_t)i), TB_OK);
        CHECK_STATUS(tb_task_release(t), TB_OK);
    }
    pthread_join(th, NULL);
    once = 0;
    for (int i = 0; i < N; i++) {
        once += seen_by_drainer[i] == 1;
    }
    printf("  a drainer thread got %d of %d tags exactly once\n", once, N);
    CHECK(once == N);
    CHECK_STATUS(tb_queue_free(shared_queue), TB_OK);

    /* Freeing a queue while a task will still notify it, and with a tag waiting. */
    tb_task running, finished;
    CHECK_STATUS(tb_queue_new(&q), TB_OK);
    CHECK_STATUS(tb_spawn_blocking(rt, slow, NULL, NULL, &running), TB_OK);
    CHECK_STATUS(tb_task_notify(running, q, 1), TB_OK);
    CHECK_STATUS(tb_spawn_blocking(rt, quick, NULL, NULL, &finished), TB_OK);
    CHECK_STATUS(tb_task_wait(finished, TB_FOREVER), TB_OK);
    CHECK_STATUS(tb_task_notify(finished, q, 2), TB_OK);
    CHECK_STATUS(tb_task_notify(finished, q, 3), TB_ERR_ALREADY);
    CHECK_STATUS(tb_queue_wait(q, 0), TB_OK);
    CHECK_STATUS(tb_queue_free(q), TB_OK);
    CHECK_STATUS(tb_queue_free(q), TB_ERR_BAD_HANDLE);
    CHECK_STATUS(tb_queue_wait(q, 0), TB_ERR_BAD_HANDLE);
    CHECK_STATUS(tb_task_wait(running, TB_FOREVER), TB_OK);
    tb_outcome o;
    CHECK_STATUS(tb_task_outcome(running, &o), TB_OK);
    CHECK(o.status == TB_OK);
    CHECK_STATUS(tb_task_release(running), TB_OK);
    CHECK_STATUS(tb_task_release(finished), TB_OK);
    puts("  a queue freed with a tag waiting and a task still to notify it: no crash");

    CHECK_STATUS(tb_queue_new(NULL), TB_ERR_NULL);
    CHECK_STATUS(tb_runtime_shutdown(rt, TB_FOREVER), TB_OK);
    CHECK_DONE();
}
