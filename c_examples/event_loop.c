/* event_loop: blocking work driven from an epoll loop that owns the main thread.
 *
 * The loop serves three fds: a 10 ms timerfd, an input pipe fed by another thread (it stands for
 * stdin, one line every 20 ms), and a tokio-bridge completion queue. 1000 blocking database
 * queries run on the blocking pool; each pushes its tag to the queue when it finishes, and the
 * loop drains the tags and reads the results on its own thread. No callback of the program ever
 * runs on a library thread: only the queries themselves run there. */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "example.h"

#define JOBS 1000
#define QUERY_MS 20

static int32_t query(void *arg, tb_job *job) {
    tb_job_set_result(job, sim_db_query(arg, QUERY_MS));
    return 0;
}

static int typist_fd;

/* Stands for a user at the keyboard: a line every 20 ms until the pipe is closed. */
static void *typist(void *arg) {
    (void)arg;
    for (int i = 0;; i++) {
        char line[32];
        int n = snprintf(line, sizeof line, "line %d\n", i);
        if (write(typist_fd, line, (size_t)n) != n) {
            return NULL; /* the loop closed its end */
        }
        sim_sleep_ms(20);
    }
}

static int watch(int epfd, int fd) {
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
    return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
}

int main(void) {
    static tb_task tasks[JOBS];
    static uint64_t tags[256];
    tb_runtime rt = runtime_with(TB_MULTI_THREAD, 1, 64);
    tb_queue q;
    int queue_fd, input[2], epfd = epoll_create1(EPOLL_CLOEXEC);
    int timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    struct itimerspec every_10ms = {{0, 10000000}, {0, 10000000}};
    pthread_t typing;

    TRY(tb_queue_new(&q));
    TRY(tb_queue_fd(q, &queue_fd));
    if (epfd < 0 || timer_fd < 0 || pipe(input) != 0 ||
        timerfd_settime(timer_fd, 0, &every_10ms, NULL) != 0 || watch(epfd, queue_fd) != 0 ||
        watch(epfd, timer_fd) != 0 || watch(epfd, input[0]) != 0) {
        perror("setting up the loop");
        return 1;
    }
    typist_fd = input[1];
    signal(SIGPIPE, SIG_IGN); /* the typist learns of the closed pipe from write() instead */
    pthread_create(&typing, NULL, typist, NULL);

    double start = sim_now_ms();
    for (int i = 0; i < JOBS; i++) {
        TRY(tb_spawn_blocking(rt, query, "SELECT * FROM users", NULL, &tasks[i]));
        TRY(tb_task_notify(tasks[i], q, (uint64_t)i));
    }

    int done = 0, wakeups = 0, lines = 0, ticks = 0;
    uint64_t worst_expirations = 0;
    while (done < JOBS) {
        struct epoll_event events[3];
        int n = epoll_wait(epfd, events, 3, 1000);
        for (int e = 0; e < n; e++) {
            int fd = events[e].data.fd;
            if (fd == queue_fd) {
                wakeups++;
                size_t got;
                do {
                    TRY(tb_queue_drain(q, tags, 256, &got));
                    for (size_t k = 0; k < got; k++) {
                        tb_outcome o = finish(tasks[tags[k]]);
                        if (o.status == TB_OK && strncmp(o.value, "Result for:", 11) == 0) {
                            done++;
                        }
                        free(o.value);
                    }
                } while (got == 256);
            } else if (fd == timer_fd) {
                uint64_t expirations;
                if (read(timer_fd, &expirations, sizeof expirations) == sizeof expirations) {
                    ticks++;
                    if (expirations > worst_expirations) {
                        worst_expirations = expirations;
                    }
                }
            } else {
                char buf[256];
                ssize_t r = read(input[0], buf, sizeof buf);
                for (ssize_t k = 0; k < r; k++) {
                    lines += buf[k] == '\n';
                }
            }
        }
    }
    double took = sim_now_ms() - start;

    tb_queue_stats stats = {.struct_size = sizeof stats};
    TRY(tb_queue_get_stats(q, &stats));
    printf("%d queries of %d ms on 64 blocking threads, served from an epoll loop in %.0f ms\n",
           done, QUERY_MS, took);
    printf("completions: %llu pushed, %llu fd wake-ups (%.1f completions per wake-up), "
           "%d loop wake-ups for the queue\n",
           (unsigned long long)stats.pushed, (unsigned long long)stats.wakeups,
           (double)stats.pushed / (double)stats.wakeups, wakeups);
    printf("meanwhile the loop served %d timer ticks (at most %llu expirations per read) and %d "
           "input lines\n",
           ticks, (unsigned long long)worst_expirations, lines);

    close(input[0]);
    pthread_join(typing, NULL);
    close(input[1]);
    close(timer_fd);
    close(epfd);
    TRY(tb_queue_free(q));
    TRY(tb_runtime_shutdown(rt, TB_FOREVER));
    return done == JOBS ? 0 : 1;
}
