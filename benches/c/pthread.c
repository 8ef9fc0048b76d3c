/* Plain threads: the floors the pools are measured against.
 *
 *   bench_pthread create n= warmup=    round trip as pthread_create of a no-op + pthread_join
 *   bench_pthread condvar n= warmup=   round trip to a long-lived thread through a mutex and
 *                                      two condition variables, both sides sleeping: the floor
 *                                      of a cross-thread round trip that does not spin
 *   bench_pthread spin n= warmup=      the same with both sides spinning on atomics
 *   bench_pthread sleep n= threads= sleep_us=  n sleeps shared by `threads` dedicated threads:
 *                                      the ideal of the sleeping-jobs figure */

#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>

#include "bench.h"

static void start_thread(pthread_t *thread, void *(*run)(void *), void *arg) {
    if (pthread_create(thread, NULL, run, arg) != 0)
        bench_fail("pthread_create");
}

static void *stamp_end(void *arg) {
    *(uint64_t *)arg = bench_now_ns();
    return NULL;
}

static uint64_t create_join(uint64_t *end) {
    pthread_t thread;
    start_thread(&thread, stamp_end, end);
    pthread_join(thread, NULL);
    return bench_now_ns();
}

static void create(void) { bench_round_trips(create_join); }

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t request_cond = PTHREAD_COND_INITIALIZER;
static pthread_cond_t reply_cond = PTHREAD_COND_INITIALIZER;
static uint64_t *request; /* the slot to stamp; NULL when there is no request */
static int replied, quit;

/* Both sides signal after unlocking, so that the woken thread does not wake only to wait for
 * the mutex. */
static void *condvar_server(void *arg) {
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&lock);
        while (!request && !quit)
            pthread_cond_wait(&request_cond, &lock);
        uint64_t *slot = request;
        request = NULL;
        pthread_mutex_unlock(&lock);
        if (!slot)
            return NULL;
        *slot = bench_now_ns();
        pthread_mutex_lock(&lock);
        replied = 1;
        pthread_mutex_unlock(&lock);
        pthread_cond_signal(&reply_cond);
    }
}

static uint64_t condvar_round_trip(uint64_t *end) {
    pthread_mutex_lock(&lock);
    request = end;
    replied = 0;
    pthread_mutex_unlock(&lock);
    pthread_cond_signal(&request_cond);
    pthread_mutex_lock(&lock);
    while (!replied)
        pthread_cond_wait(&reply_cond, &lock);
    pthread_mutex_unlock(&lock);
    return bench_now_ns();
}

static void condvar(void) {
    pthread_t server;
    start_thread(&server, condvar_server, NULL);
    bench_round_trips(condvar_round_trip);
    pthread_mutex_lock(&lock);
    quit = 1;
    pthread_cond_signal(&request_cond);
    pthread_mutex_unlock(&lock);
    pthread_join(server, NULL);
}

static _Atomic(uint64_t *) spin_request;
static atomic_bool spin_replied, spin_quit;

static void *spin_server(void *arg) {
    (void)arg;
    while (!atomic_load_explicit(&spin_quit, memory_order_acquire)) {
        uint64_t *slot = atomic_load_explicit(&spin_request, memory_order_acquire);
        if (!slot)
            continue;
        *slot = bench_now_ns();
        atomic_store_explicit(&spin_request, NULL, memory_order_relaxed);
        atomic_store_explicit(&spin_replied, true, memory_order_release);
    }
    return NULL;
}

static uint64_t spin_round_trip(uint64_t *end) {
    atomic_store_explicit(&spin_replied, false, memory_order_relaxed);
    atomic_store_explicit(&spin_request, end, memory_order_release);
    while (!atomic_load_explicit(&spin_replied, memory_order_acquire)) {
    }
    return bench_now_ns();
}

static void spin(void) {
    pthread_t server;
    start_thread(&server, spin_server, NULL);
    bench_round_trips(spin_round_trip);
    atomic_store_explicit(&spin_quit, true, memory_order_release);
    pthread_join(server, NULL);
}

static uint64_t sleep_us;
static atomic_llong sleeps_left; /* goes below 0 once every sleep is taken */

static void *sleeper(void *arg) {
    (void)arg;
    while (atomic_fetch_sub(&sleeps_left, 1) > 0)
        bench_sleep_us(sleep_us);
    return NULL;
}

static void dedicated_sleepers(void) {
    struct bench_sleeps s = bench_sleeps_args();
    pthread_t *ids = bench_calloc(s.threads, sizeof *ids);
    sleep_us = s.sleep_us;
    atomic_store(&sleeps_left, (long long)s.n);
    bench_threads_start();
    uint64_t start = bench_now_ns();
    for (size_t i = 0; i < s.threads; i++)
        start_thread(&ids[i], sleeper, NULL);
    for (size_t i = 0; i < s.threads; i++)
        pthread_join(ids[i], NULL);
    uint64_t elapsed = bench_now_ns() - start;
    bench_report_sleeps(&s, elapsed, bench_threads_stop());
    free(ids);
}

int main(int argc, char **argv) {
    static const struct bench_mode modes[] = {
        {"create", create}, {"condvar", condvar}, {"spin", spin}, {"sleep", dedicated_sleepers}};
    return bench_main(argc, argv, modes, sizeof modes / sizeof modes[0]);
}
