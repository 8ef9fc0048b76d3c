/* simlib: see simlib.h. */
#define _GNU_SOURCE
#include "simlib.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SIM_MAX_THREADS 4096

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static sim_counts counts;
static pthread_t seen[SIM_MAX_THREADS];

static void enter(void) {
    pthread_t self = pthread_self();
    int known = 0;
    pthread_mutex_lock(&lock);
    counts.calls++;
    if (++counts.in_flight > counts.peak_in_flight) {
        counts.peak_in_flight = counts.in_flight;
    }
    for (int i = 0; i < counts.threads && !known; i++) {
        known = pthread_equal(seen[i], self);
    }
    if (!known && counts.threads < SIM_MAX_THREADS) {
        seen[counts.threads++] = self;
    }
    pthread_mutex_unlock(&lock);
}

static void leave(void) {
    pthread_mutex_lock(&lock);
    counts.in_flight--;
    pthread_mutex_unlock(&lock);
}

void sim_reset(void) {
    pthread_mutex_lock(&lock);
    memset(&counts, 0, sizeof counts);
    pthread_mutex_unlock(&lock);
}

sim_counts sim_stats(void) {
    pthread_mutex_lock(&lock);
    sim_counts copy = counts;
    pthread_mutex_unlock(&lock);
    return copy;
}

double sim_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

void sim_sleep_ms(unsigned ms) {
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

char *sim_db_query(const char *sql, unsigned ms) {
    enter();
    sim_sleep_ms(ms);
    size_t n = strlen(sql) + 32;
    char *rows = malloc(n);
    if (rows != NULL) {
        snprintf(rows, n, "Result for: %s", sql);
    }
    leave();
    return rows;
}

int sim_ffi_call(int x, unsigned ms) {
    enter();
    sim_sleep_ms(ms);
    leave();
    return x * 2;
}

uint64_t sim_cpu_sum(uint64_t n) {
    uint64_t sum = 0;
    enter();
    for (uint64_t i = 0; i < n; i++) {
        sum += i;
        /* An empty asm the optimiser must assume reads and changes `sum`: no closed form. */
        __asm__ volatile("" : "+r"(sum));
    }
    leave();
    return sum;
}

long sim_file_roundtrip(const char *path, size_t bytes) {
    char template[] = "/tmp/simlib-XXXXXX";
    long verified = -1;
    enter();
    int fd = path != NULL ? open(path, O_RDWR | O_CREAT | O_TRUNC, 0600) : mkstemp(template);
    unsigned char *out = malloc(bytes + 1), *in = malloc(bytes + 1);
    if (fd >= 0 && out != NULL && in != NULL) {
        for (size_t i = 0; i < bytes; i++) {
            out[i] = (unsigned char)(i * 31 + 7);
        }
        size_t done = 0;
        while (done < bytes) {
            ssize_t w = write(fd, out + done, bytes - done);
            if (w <= 0) {
                break;
            }
            done += (size_t)w;
        }
        if (done == bytes && fsync(fd) == 0 && lseek(fd, 0, SEEK_SET) == 0) {
            size_t got = 0;
            ssize_t r;
            while (got < bytes && (r = read(fd, in + got, bytes - got)) > 0) {
                got += (size_t)r;
            }
            if (got == bytes && memcmp(in, out, bytes) == 0) {
                verified = (long)bytes;
            }
        }
    }
    if (fd >= 0) {
        close(fd);
        unlink(path != NULL ? path : template);
    }
    free(out);
    free(in);
    leave();
    return verified;
}

int sim_flaky(uint32_t seed) {
    enter();
    leave();
    return seed % 3 == 0 ? 10 + (int)(seed % 7) : 0;
}

unsigned sim_chunked(unsigned ms_total, unsigned chunk_ms, const tb_job *job) {
    unsigned chunks = 0, wanted = chunk_ms == 0 ? 0 : ms_total / chunk_ms;
    enter();
    while (chunks < wanted && !tb_job_cancelled(job)) {
        sim_sleep_ms(chunk_ms);
        chunks++;
    }
    leave();
    return chunks;
}
