"""Completion throughput: no-op C jobs completed through the queue into asyncio, and the same
workload with C completion callbacks versus a queue drained from Python.

    cargo build --release && python3 python/bench_queue.py [--jobs 100000] [--rounds 3]

Every figure is the median of ``--rounds`` runs. It prints, does not assert: the numbers depend
on the machine and its load.
"""

import argparse
import asyncio
import ctypes
import statistics
import sys
import time
from ctypes import byref, c_size_t, c_uint64
from pathlib import Path
from typing import Callable, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent / "tests"))

from support import cjobs, hold_pool, tokio_bridge  # noqa: E402
from tokio_bridge._native import (  # noqa: E402
    TB_FOREVER,
    TbQueue,
    TbQueueStats,
    TbTask,
    check,
    lib,
)

IN_FLIGHT = 10_000  # awaits in flight at once in the asyncio run


def asyncio_awaits(rt: tokio_bridge.Runtime, cj: ctypes.CDLL, jobs: int) -> Tuple[float, str]:
    """``await rt.run_blocking_c(cj_echo, i)`` for every job, IN_FLIGHT at a time."""

    async def main() -> str:
        for start in range(1, jobs + 1, IN_FLIGHT):
            batch = range(start, min(start + IN_FLIGHT, jobs + 1))
            results = await asyncio.gather(*(rt.run_blocking_c(cj.cj_echo, i) for i in batch))
            assert results == list(batch)
        stats = rt.queue_stats()
        return (
            f"{stats.pushed} through the queue in {stats.wakeups} wake-ups (the rest had "
            "finished before their await began); includes submitting from Python"
        )

    start = time.perf_counter()
    note = asyncio.run(main())
    return time.perf_counter() - start, note


def asyncio_delivery(rt: tokio_bridge.Runtime, cj: ctypes.CDLL, jobs: int) -> Tuple[float, str]:
    """Only the way back: IN_FLIGHT awaits at a time wait behind a job holding the runtime's one
    blocking thread; timed from releasing it until every await has its result."""

    async def main() -> Tuple[float, str]:
        took = 0.0
        for start in range(1, jobs + 1, IN_FLIGHT):
            batch = range(start, min(start + IN_FLIGHT, jobs + 1))
            gate, _ = hold_pool(rt)
            awaits = [asyncio.ensure_future(rt.run_blocking_c(cj.cj_echo, i)) for i in batch]
            await asyncio.sleep(0)  # each coroutine submits its job and awaits it
            began = time.perf_counter()
            gate.set()
            results = await asyncio.gather(*awaits)
            took += time.perf_counter() - began
            assert results == list(batch)
        stats = rt.queue_stats()
        return took, f"{stats.pushed} through the queue in {stats.wakeups} wake-ups"

    return asyncio.run(main())


def no_delivery(rt: tokio_bridge.Runtime, cj: ctypes.CDLL, jobs: int) -> Tuple[float, str]:
    """The baseline: the same jobs submitted from C, with no completion delivery at all; the run
    ends when tb_wait_all says every one has finished."""
    tasks = (TbTask * jobs)()
    start = time.perf_counter()
    check(cj.cj_spawn_noops(rt._handle, 0, TbQueue(0), jobs, tasks))
    check(lib.tb_wait_all(tasks, jobs, TB_FOREVER))
    took = time.perf_counter() - start
    cj.cj_release_all(tasks, jobs)
    return took, "submission and running only"


def c_callbacks(rt: tokio_bridge.Runtime, cj: ctypes.CDLL, jobs: int) -> Tuple[float, str]:
    """Submitted from C, each with a completion callback counting in C on the pool thread; the
    run ends when the count is complete (checked every 0.2 ms)."""
    tasks = (TbTask * jobs)()
    target = cj.cj_completions() + jobs
    start = time.perf_counter()
    check(cj.cj_spawn_noops(rt._handle, 1, TbQueue(0), jobs, tasks))
    while cj.cj_completions() < target:
        time.sleep(0.0002)
    took = time.perf_counter() - start
    check(lib.tb_wait_all(tasks, jobs, TB_FOREVER))  # finished, not only counted, before release
    cj.cj_release_all(tasks, jobs)
    return took, "callbacks run on the pool threads"


def queue_drain(rt: tokio_bridge.Runtime, cj: ctypes.CDLL, jobs: int) -> Tuple[float, str]:
    """Submitted from C, each notifying a queue that this thread drains (tb_queue_wait, then
    tb_queue_drain in batches of 4096)."""
    tasks = (TbTask * jobs)()
    tags = (c_uint64 * 4096)()
    got = c_size_t()
    queue = TbQueue()
    check(lib.tb_queue_new(byref(queue)))
    drained = 0
    start = time.perf_counter()
    check(cj.cj_spawn_noops(rt._handle, 2, queue, jobs, tasks))
    while drained < jobs:
        check(lib.tb_queue_wait(queue, TB_FOREVER))
        check(lib.tb_queue_drain(queue, tags, len(tags), byref(got)))
        drained += got.value
    took = time.perf_counter() - start
    stats = TbQueueStats(struct_size=ctypes.sizeof(TbQueueStats))
    check(lib.tb_queue_get_stats(queue, byref(stats)))
    check(lib.tb_queue_free(queue))
    cj.cj_release_all(tasks, jobs)
    return took, f"{stats.pushed} tags in {stats.wakeups} wake-ups"


def measure(
    name: str,
    run: Callable[[tokio_bridge.Runtime, ctypes.CDLL, int], Tuple[float, str]],
    rt: tokio_bridge.Runtime,
    cj: ctypes.CDLL,
    jobs: int,
    rounds: int,
) -> None:
    times: List[float] = []
    note = ""
    for _ in range(rounds):
        took, note = run(rt, cj, jobs)
        times.append(took)
    median = statistics.median(times)
    print(f"| {name} | {median * 1000:.0f} ms | {jobs / median:,.0f} | {note} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    lib.tb_wait_all.restype = ctypes.c_int32
    lib.tb_wait_all.argtypes = [ctypes.POINTER(TbTask), c_size_t, c_uint64]
    lib.tb_queue_wait.restype = ctypes.c_int32
    lib.tb_queue_wait.argtypes = [TbQueue, c_uint64]
    cj = cjobs()
    print(f"{args.jobs:,} no-op C jobs (cj_echo), median of {args.rounds} runs; library "
          f"{tokio_bridge.library_path}; 1 async worker, up to 4 blocking threads (1 for the "
          "first row)")
    print("| delivery | time | completions/s | note |")
    print("|---|---|---|---|")
    with tokio_bridge.Runtime(workers=1, max_blocking_threads=1) as rt:
        measure(f"asyncio: only the completions, {IN_FLIGHT:,} awaits at a time",
                asyncio_delivery, rt, cj, args.jobs, args.rounds)
    with tokio_bridge.Runtime(workers=1, max_blocking_threads=4) as rt:
        measure(f"asyncio: await run_blocking_c, {IN_FLIGHT:,} in flight", asyncio_awaits,
                rt, cj, args.jobs, args.rounds)
        measure("C: no delivery (baseline)", no_delivery, rt, cj, args.jobs, args.rounds)
        measure("C completion callbacks (tb_task_on_complete)", c_callbacks,
                rt, cj, args.jobs, args.rounds)
        measure("queue drained from Python (tb_task_notify)", queue_drain,
                rt, cj, args.jobs, args.rounds)


if __name__ == "__main__":
    main()
