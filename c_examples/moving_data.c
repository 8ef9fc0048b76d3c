/* moving_data: giving data to jobs, either moved (one owner) or shared (reference counted).
 *
 * Moved: the job owns a heap buffer; free_arg frees it once the job is done, or if the job
 * is cancelled before it runs. Shared: each job holds a reference to one buffer (C11 atomics);
 * the last reference dropped frees it, whoever drops it. */
#include <stdatomic.h>

#include "example.h"

typedef struct shared {
    atomic_int refs;
    int values[3];
} shared;

static shared *ref(shared *s) {
    atomic_fetch_add(&s->refs, 1);
    return s;
}

static void unref(void *arg) {
    shared *s = arg;
    if (atomic_fetch_sub(&s->refs, 1) == 1) {
        puts("  last reference dropped: shared buffer freed");
        free(s);
    }
}

static void free_moved(void *arg) {
    puts("  moved buffer freed by free_arg");
    free(arg);
}

static int32_t sum_moved(void *arg, tb_job *job) {
    int *v = arg;
    tb_job_set_result(job, (void *)(intptr_t)(v[0] + v[1] + v[2] + v[3] + v[4]));
    return 0;
}

static int32_t sum_shared(void *arg, tb_job *job) {
    shared *s = arg;
    tb_job_set_result(job, (void *)(intptr_t)(s->values[0] + s->values[1] + s->values[2]));
    return 0;
}

int main(void) {
    tb_runtime rt;
    tb_task t, many[3];
    TRY(tb_runtime_default(&rt));

    int *moved = malloc(5 * sizeof *moved);
    for (int i = 0; i < 5; i++) {
        moved[i] = i + 1;
    }
    TRY(tb_spawn_blocking(rt, sum_moved, moved, free_moved, &t)); /* moved: do not touch it */
    printf("sum of the moved buffer: %d\n", (int)(intptr_t)finish(t).value);

    shared *s = malloc(sizeof *s);
    atomic_init(&s->refs, 1);
    s->values[0] = 10, s->values[1] = 20, s->values[2] = 30;
    for (int i = 0; i < 3; i++) {
        TRY(tb_spawn_blocking(rt, sum_shared, ref(s), unref, &many[i]));
    }
    printf("main still reads the shared buffer: %d\n", s->values[0]);
    unref(s); /* main's own reference */
    for (int i = 0; i < 3; i++) {
        printf("job %d: sum of the shared buffer: %d\n", i, (int)(intptr_t)finish(many[i]).value);
    }
    return 0;
}
