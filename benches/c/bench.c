#define _GNU_SOURCE
#include "bench.h"

#include <dirent.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#define MAX_ARGS 32

static int arg_count;
static char **args;
static int arg_used[MAX_ARGS];

int bench_main(int argc, char **argv, const struct bench_mode *modes, size_t count) {
    if (argc < 2 || argc - 2 > MAX_ARGS)
        bench_fail("usage: %s MODE [key=value...] (at most %d)", argv[0], MAX_ARGS);
    arg_count = argc;
    args = argv;
    for (size_t i = 0; i < count; i++) {
        if (strcmp(argv[1], modes[i].name) == 0) {
            modes[i].run();
            return 0;
        }
    }
    bench_fail("%s: unknown mode %s", argv[0], argv[1]);
}

uint64_t bench_arg(const char *key, uint64_t fallback) {
    size_t len = strlen(key);
    for (int i = 2; i < arg_count; i++) {
        if (strncmp(args[i], key, len) == 0 && args[i][len] == '=') {
            char *end;
            unsigned long long value = strtoull(args[i] + len + 1, &end, 10);
            if (*end != '\0' || end == args[i] + len + 1)
                bench_fail("%s: not a number", args[i]);
            arg_used[i - 2] = 1;
            return value;
        }
    }
    return fallback;
}

void bench_args_done(void) {
    for (int i = 2; i < arg_count; i++)
        if (!arg_used[i - 2])
            bench_fail("mode %s takes no argument %s", args[1], args[i]);
}

void bench_fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("bench: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

void *bench_calloc(size_t n, size_t size) {
    void *p = calloc(n, size);
    if (!p)
        bench_fail("out of memory (%zu x %zu bytes)", n, size);
    return p;
}

void bench_report(const char *name, double value) {
    printf("%s %.6g\n", name, value);
    fflush(stdout);
}

static int compare_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

void bench_report_latency(const char *prefix, uint64_t *ns, size_t n) {
    char name[64];
    double sum = 0;
    if (n == 0)
        bench_fail("%s: no samples", prefix);
    qsort(ns, n, sizeof *ns, compare_u64);
    for (size_t i = 0; i < n; i++)
        sum += (double)ns[i];
    snprintf(name, sizeof name, "%s_p50_us", prefix);
    bench_report(name, (double)ns[n / 2] / 1e3);
    snprintf(name, sizeof name, "%s_p99_us", prefix);
    bench_report(name, (double)ns[n * 99 / 100] / 1e3);
    snprintf(name, sizeof name, "%s_mean_us", prefix);
    bench_report(name, sum / (double)n / 1e3);
}

uint64_t bench_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void bench_sleep_us(uint64_t us) {
    struct timespec ts = {(time_t)(us / 1000000), (long)(us % 1000000) * 1000};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

double bench_cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static uint64_t status_kib(const char *field) {
    char line[256];
    size_t len = strlen(field);
    uint64_t kib = 0;
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        bench_fail("cannot open /proc/self/status");
    while (fgets(line, sizeof line, f))
        if (strncmp(line, field, len) == 0 && line[len] == ':')
            kib = strtoull(line + len + 1, NULL, 10);
    fclose(f);
    if (kib == 0)
        bench_fail("no %s in /proc/self/status", field);
    return kib;
}

uint64_t bench_rss_kib(void) { return status_kib("VmRSS"); }

uint64_t bench_peak_rss_kib(void) { return status_kib("VmHWM"); }

static pthread_t sampler;
static atomic_bool sampler_stop;
static unsigned sampler_peak;

static unsigned count_threads(void) {
    unsigned n = 0;
    struct dirent *entry;
    DIR *dir = opendir("/proc/self/task");
    if (!dir)
        bench_fail("cannot open /proc/self/task");
    while ((entry = readdir(dir)) != NULL)
        n += entry->d_name[0] != '.';
    closedir(dir);
    return n;
}

static void *sample_threads(void *arg) {
    (void)arg;
    while (!atomic_load(&sampler_stop)) {
        unsigned n = count_threads();
        if (n > sampler_peak)
            sampler_peak = n;
        bench_sleep_us(5000);
    }
    return NULL;
}

void bench_threads_start(void) {
    sampler_peak = 0;
    atomic_store(&sampler_stop, false);
    if (pthread_create(&sampler, NULL, sample_threads, NULL) != 0)
        bench_fail("cannot start the thread sampler");
}

unsigned bench_threads_stop(void) {
    unsigned now = count_threads();
    atomic_store(&sampler_stop, true);
    pthread_join(sampler, NULL);
    if (now > sampler_peak)
        sampler_peak = now;
    return sampler_peak - 2;
}

size_t bench_round_trips(uint64_t (*one)(uint64_t *end)) {
    size_t n = bench_arg("n", 20000), warmup = bench_arg("warmup", 1000);
    bench_args_done();
    uint64_t *rtt = bench_calloc(n, sizeof *rtt), *wake = bench_calloc(n, sizeof *wake);
    double cpu = 0;
    for (size_t i = 0; i < warmup + n; i++) {
        uint64_t end = 0;
        if (i == warmup)
            cpu = bench_cpu_s();
        uint64_t start = bench_now_ns();
        uint64_t woke = one(&end);
        if (end == 0)
            bench_fail("the job did not run");
        if (i >= warmup) {
            rtt[i - warmup] = woke - start;
            wake[i - warmup] = woke - end;
        }
    }
    cpu = bench_cpu_s() - cpu;
    bench_report_latency("rt", rtt, n);
    bench_report_latency("wake", wake, n);
    bench_report("cpu_us_per_op", cpu * 1e6 / (double)n);
    free(rtt);
    free(wake);
    return warmup + n;
}

struct bench_jobs bench_jobs_args(void) {
    struct bench_jobs jobs;
    jobs.n = bench_arg("n", 1000000);
    jobs.window = bench_arg("window", jobs.n);
    jobs.threads = bench_arg("threads", 0);
    bench_args_done();
    if (jobs.window == 0 || jobs.window > jobs.n)
        bench_fail("window must be in 1..n");
    return jobs;
}

void bench_report_jobs(size_t n, uint64_t elapsed_ns, double cpu_s, unsigned threads) {
    bench_report("mops", (double)n / (double)elapsed_ns * 1e3);
    bench_report("cpu_s", cpu_s);
    bench_report("threads", threads);
}

struct bench_sleeps bench_sleeps_args(void) {
    struct bench_sleeps s;
    s.n = bench_arg("n", 25600);
    s.threads = bench_arg("threads", 64);
    s.sleep_us = bench_arg("sleep_us", 1000);
    bench_args_done();
    if (s.threads == 0)
        bench_fail("threads must be at least 1");
    return s;
}

void bench_report_sleeps(const struct bench_sleeps *s, uint64_t elapsed_ns, unsigned threads) {
    bench_report("kjobs_per_s", (double)s->n / (double)elapsed_ns * 1e6);
    bench_report("efficiency", (double)s->n * (double)s->sleep_us * 1e3 / (double)s->threads /
                                   (double)elapsed_ns);
    bench_report("threads", threads);
}

void bench_report_timers(const struct bench_timers *t) {
    bench_report("wall_s", (double)(t->last_fire_ns - t->start_ns) / 1e9);
    bench_report("submit_s", (double)(t->submitted_ns - t->start_ns) / 1e9);
    bench_report("bytes_per_timer", (double)(t->peak_rss_kib - t->rss_kib) * 1024.0 / (double)t->n);
    bench_report("late_mean_ms", (double)t->late_sum_ns / (double)t->n / 1e6);
    bench_report("late_max_ms", (double)t->late_max_ns / 1e6);
    bench_report("threads", t->threads);
}

uint64_t bench_delay_ms(uint64_t i, uint64_t min_ms, uint64_t max_ms) {
    uint64_t z = i + 0x9e3779b97f4a7c15u;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    z ^= z >> 31;
    return min_ms + z % (max_ms - min_ms + 1);
}
