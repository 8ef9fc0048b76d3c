/* database: a blocking database driver, called from the blocking pool.
 *
 * sim_db_query sleeps 100 ms like a round trip to a server, then returns rows as text. The
 * job hands the rows back through tb_job_set_result; the reader of the outcome frees them. */
#include "example.h"

static int32_t query(void *arg, tb_job *job) {
    tb_job_set_result(job, sim_db_query(arg, 100));
    return 0;
}

int main(void) {
    static const char *sql[] = {"SELECT * FROM users", "SELECT * FROM orders",
                                "SELECT count(*) FROM items"};
    tb_runtime rt;
    tb_task t[3];
    TRY(tb_runtime_default(&rt));
    double start = sim_now_ms();
    for (int i = 0; i < 3; i++) {
        TRY(tb_spawn_blocking(rt, query, (void *)sql[i], NULL, &t[i]));
    }
    for (int i = 0; i < 3; i++) {
        tb_outcome o = finish(t[i]);
        printf("%-28s -> %s\n", sql[i], (char *)o.value);
        free(o.value);
    }
    printf("three 100 ms queries in %.0f ms\n", sim_now_ms() - start);
    return 0;
}
