/* simlib: a simulated blocking C library, the kind of code people wrap with tokio-bridge.
 *
 * Every call blocks the calling thread the way a real driver or library would (nanosleep,
 * CPU work, file I/O) and is counted: calls made, calls in flight now and at peak, and the
 * distinct threads that made them, so tests can assert where and how many calls ran. */
#ifndef SIMLIB_H
#define SIMLIB_H

#include <stddef.h>
#include <stdint.h>

#include "tokio_bridge.h"

/* A blocking "database driver" query: sleeps `ms`, then returns the rows as text
 * (malloc'd: the caller frees it). */
char *sim_db_query(const char *sql, unsigned ms);

/* A blocking C library call: sleeps `ms`, returns x * 2. */
int sim_ffi_call(int x, unsigned ms);

/* CPU-bound work: the wrapping sum of 0..n-1, computed one step at a time. */
uint64_t sim_cpu_sum(uint64_t n);

/* Real blocking file I/O: writes `bytes` of a pattern to `path` (NULL: a new temporary file),
 * fsyncs, reads them back and compares. Returns the number of bytes verified, -1 on error. */
long sim_file_roundtrip(const char *path, size_t bytes);

/* Fails on a deterministic pattern: returns 0, or a non-zero error code (10 + seed % 7) when
 * seed is a multiple of 3. */
int sim_flaky(uint32_t seed);

/* Long work in chunks of `chunk_ms` up to `ms_total`, checking tb_job_cancelled(job) between
 * chunks. Returns the number of chunks done (fewer than asked when it stopped early). */
unsigned sim_chunked(unsigned ms_total, unsigned chunk_ms, const tb_job *job);

/* What the library has seen since the last sim_reset(). */
typedef struct sim_counts {
    uint64_t calls;
    int in_flight;
    int peak_in_flight;
    int threads;
} sim_counts;

void sim_reset(void);
sim_counts sim_stats(void);

/* Milliseconds on the monotonic clock. */
double sim_now_ms(void);

/* Sleeps `ms` milliseconds (nanosleep, resumed after signals). */
void sim_sleep_ms(unsigned ms);

#endif
