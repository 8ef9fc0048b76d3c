// A C++ user's program, built by tests/packaging.rs against the installed library. The header's
// extern "C" block must give every function C linkage: every_function.cpp, which the test
// writes from abi/symbols.txt, takes the address of each exported function, so the link fails
// if any of them is declared with C++ (mangled) linkage.
#include <tokio_bridge.h>

#include <cstddef>
#include <cstdio>
#include <string>

using any_fn = void (*)();
extern const any_fn every_function[];
extern const std::size_t every_function_count;

int main() {
    std::string greeting;
    tb_runtime rt;
    tb_task task;
    tb_outcome outcome;
    tb_blocking_fn job = [](void *arg, tb_job *) -> int32_t {
        *static_cast<std::string *>(arg) = "hello from the blocking pool";
        return 0;
    };
    if (tb_runtime_new(nullptr, &rt) != TB_OK || tb_spawn_blocking(rt, job, &greeting, nullptr, &task) != TB_OK ||
        tb_task_wait(task, TB_FOREVER) != TB_OK || tb_task_outcome(task, &outcome) != TB_OK) {
        char detail[256];
        tb_last_error(detail, sizeof detail);
        std::fprintf(stderr, "%s\n", detail);
        return 1;
    }
    std::size_t linked = 0;
    for (std::size_t i = 0; i < every_function_count; i++) linked += every_function[i] != nullptr;
    std::printf("C++: %s, %s; %zu functions linked\n", tb_status_name(outcome.status), greeting.c_str(), linked);
    tb_task_release(task);
    return tb_runtime_shutdown(rt, TB_FOREVER) == TB_OK ? 0 : 1;
}
