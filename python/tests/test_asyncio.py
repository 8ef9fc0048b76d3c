"""asyncio: awaits complete through one completion queue per (runtime, event loop), cancelling
an awaiting coroutine cancels the job, and the loop stays responsive while jobs run."""

import asyncio
import gc
import sys
import threading
import time
import unittest
import weakref

from support import ReleaseCounter, Thing, cjobs, eventually, hold_pool, tokio_bridge as tb
from tokio_bridge import _runtime


async def awaited(task: tb.Task):
    return await task


class Asyncio(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cj = cjobs()
        cls.rt = tb.Runtime(workers=1, max_blocking_threads=64, thread_name="aio")

    @classmethod
    def tearDownClass(cls):
        cls.rt.close()

    def test_python_callables_c_functions_and_sleeps_are_awaited(self):
        rt, cj = self.rt, self.cj

        async def main():
            self.assertEqual(await rt.run_blocking(pow, 2, 10), 1024)
            self.assertEqual(await rt.run_blocking(sorted, [3, 1, 2], reverse=True), [3, 2, 1])
            self.assertEqual(await rt.run_blocking_c(cj.cj_echo_after_2ms, 5), 5)
            start = time.monotonic()
            self.assertIsNone(await rt.asleep(30))
            self.assertGreaterEqual(time.monotonic() - start, 0.025)
            task = rt.spawn_blocking(lambda: "value")
            self.assertEqual(await task, "value")
            self.assertEqual(await task, "value", "a finished task can be awaited again")
            with self.assertRaises(tb.CallbackError) as caught:
                await rt.run_blocking(lambda: {}["missing"])
            self.assertIn("KeyError: 'missing'", caught.exception.traceback)
            with self.assertRaises(tb.CallbackError) as caught:
                await rt.run_blocking_c(cj.cj_fail, 9)
            self.assertEqual(caught.exception.code, 9)
            stats = rt.queue_stats()
            self.assertEqual((stats.pushed, stats.pending), (stats.drained, 0))

        asyncio.run(main())

    def test_ten_thousand_concurrent_awaits_of_c_jobs(self):
        rt, cj = self.rt, self.cj
        n = 10_000
        threads_before = threading.active_count()

        async def main():
            start = time.monotonic()
            results = await asyncio.gather(
                *(rt.run_blocking_c(cj.cj_echo_after_2ms, i) for i in range(1, n + 1))
            )
            return results, time.monotonic() - start, rt.queue_stats(), threading.active_count()

        results, elapsed, stats, threads_during = asyncio.run(main())
        self.assertEqual(results, list(range(1, n + 1)), "each await got its own job's result")
        self.assertEqual(threads_during, threads_before, "no Python thread per await")
        self.assertEqual((stats.pushed, stats.pending), (stats.drained, 0))
        self.assertGreater(stats.pushed, n * 0.9, "nearly every job was still running when awaited")
        self.assertLess(elapsed, 60)
        print(
            f"\n  {n} awaits of 2 ms C jobs on 64 threads: {elapsed:.2f} s, "
            f"{stats.pushed} completions through the queue in {stats.wakeups} fd wake-ups",
            file=sys.stderr,
        )

    def test_a_burst_of_completions_costs_few_wake_ups(self):
        cj = self.cj

        async def main(rt):
            gate, _ = hold_pool(rt)
            jobs = range(1, 1001)
            awaits = [asyncio.ensure_future(rt.run_blocking_c(cj.cj_echo, i)) for i in jobs]
            await asyncio.sleep(0)  # every coroutine has submitted its job and awaits it
            gate.set()
            self.assertEqual(await asyncio.gather(*awaits), list(jobs))
            return rt.queue_stats()

        with tb.Runtime(max_blocking_threads=1) as rt:
            stats = asyncio.run(main(rt))
        self.assertEqual((stats.pushed, stats.drained), (1000, 1000))
        self.assertLessEqual(stats.wakeups, 100, "1000 completions, few wake-ups of the loop")

    def test_cancelling_the_awaiting_coroutine_cancels_a_queued_job(self):
        ran = []
        arg = Thing()
        watch = weakref.ref(arg)
        with tb.Runtime(max_blocking_threads=1) as rt:
            gate, blocker = hold_pool(rt)
            blocker_only = set(_runtime._jobs)

            async def main():
                nonlocal arg
                with ReleaseCounter() as releases:
                    waiter = asyncio.ensure_future(rt.run_blocking(ran.append, arg))
                    arg = None
                    await asyncio.sleep(0.02)  # it is now awaiting its job, queued behind blocker
                    self.assertIsNotNone(watch())
                    waiter.cancel()
                    with self.assertRaises(asyncio.CancelledError):
                        await waiter
                    self.assertEqual(set(_runtime._jobs), blocker_only, "its free_arg ran")
                    # Its tag comes in at once; the reader releases the handle.
                    self.assertTrue(await eventually(lambda: len(releases.calls) == 1))
                self.assertEqual(list(releases.calls.values()), [1])
                self.assertEqual(releases.failures, [])

            asyncio.run(main())
            # Only now: asyncio may keep the cancelled coroutine's frame, with the arguments, as
            # long as the loop lives (Python 3.9 does).
            gc.collect()
            self.assertIsNone(watch())
            gate.set()
            self.assertTrue(blocker.result(timeout=10))
            rt.spawn_blocking(lambda: None).result(timeout=10)
        self.assertEqual(ran, [], "the cancelled job never ran")

    def test_cancelling_the_awaiting_coroutine_asks_a_running_job_to_stop(self):
        started = threading.Event()
        asked_to_stop = threading.Event()

        def worker():
            started.set()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if tb.cancelled():
                    asked_to_stop.set()
                    break
                time.sleep(0.002)

        async def main():
            with ReleaseCounter() as releases:
                waiter = asyncio.ensure_future(self.rt.run_blocking(worker))
                self.assertTrue(await eventually(started.is_set))
                waiter.cancel()
                with self.assertRaises(asyncio.CancelledError):
                    await waiter
                # The job ends once it sees the request; then its tag comes in and the handle
                # is released, once.
                self.assertTrue(await eventually(lambda: len(releases.calls) == 1))
            self.assertTrue(asked_to_stop.is_set())
            self.assertEqual(list(releases.calls.values()), [1])
            self.assertEqual(_runtime._jobs, {})

        asyncio.run(main())

    def test_a_timeout_around_an_await_cancels_the_sleep(self):
        async def main():
            with ReleaseCounter() as releases:
                start = time.monotonic()
                with self.assertRaises(asyncio.TimeoutError):
                    await asyncio.wait_for(self.rt.asleep(10_000), 0.05)
                self.assertTrue(await eventually(lambda: len(releases.calls) == 1))
                self.assertLess(time.monotonic() - start, 5, "the sleep stopped at once")

        asyncio.run(main())

    def test_the_loop_keeps_ticking_while_c_jobs_run(self):
        cj = self.cj

        async def main(rt):
            ticks = 0
            running = True

            async def ticker():
                nonlocal ticks
                while running:
                    await asyncio.sleep(0.01)
                    ticks += 1

            ticking = asyncio.ensure_future(ticker())
            start = time.monotonic()
            await asyncio.gather(*(rt.run_blocking_c(cj.cj_sleep, 20) for _ in range(200)))
            elapsed = time.monotonic() - start
            running = False
            await ticking
            return ticks, elapsed

        with tb.Runtime(max_blocking_threads=8) as rt:
            ticks, elapsed = asyncio.run(main(rt))
        expected = elapsed / 0.01
        self.assertGreaterEqual(elapsed, 0.4, "200 jobs of 20 ms on 8 threads: 25 rounds")
        self.assertGreaterEqual(ticks, 0.7 * expected, f"{ticks} ticks of {expected:.0f}")

    def test_each_event_loop_gets_its_own_queue(self):
        cj = self.cj
        outcomes = {}

        def run_loop(name):
            async def main():
                values = await asyncio.gather(
                    *(self.rt.run_blocking_c(cj.cj_echo_after_2ms, i) for i in range(1, 201))
                )
                return values, self.rt.queue_stats()

            outcomes[name] = asyncio.run(main())

        threads = [threading.Thread(target=run_loop, args=(name,)) for name in ("a", "b")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        self.assertEqual(sorted(outcomes), ["a", "b"])
        for values, stats in outcomes.values():
            self.assertEqual(values, list(range(1, 201)))
            self.assertLessEqual(stats.pushed, 200, "only this loop's completions")
            self.assertEqual((stats.pushed, stats.pending), (stats.drained, 0))

    def test_a_task_is_awaited_by_one_coroutine_at_a_time(self):
        async def main():
            gate = threading.Event()
            task = self.rt.spawn_blocking(gate.wait, 10)
            first = asyncio.ensure_future(awaited(task))
            await asyncio.sleep(0.01)
            with self.assertRaisesRegex(RuntimeError, "already awaited"):
                await task
            gate.set()
            self.assertTrue(await first)
            self.assertTrue(await task)

        asyncio.run(main())

    def test_closing_the_runtime_ends_pending_awaits(self):
        cj = self.cj
        rt = tb.Runtime(max_blocking_threads=1)

        def until_asked_to_stop():
            started.set()
            while not tb.cancelled():  # the shutdown asks: the queued jobs cannot start before
                time.sleep(0.001)
            return "finished"

        started = threading.Event()

        async def main():
            running = asyncio.ensure_future(rt.run_blocking(until_asked_to_stop))
            queued = [asyncio.ensure_future(rt.run_blocking_c(cj.cj_echo, i)) for i in range(5)]
            sleeping = asyncio.ensure_future(rt.asleep(10_000))
            self.assertTrue(await eventually(started.is_set))
            self.assertTrue(rt.close(), "waits for the running job")
            self.assertEqual(await running, "finished")
            for task in queued + [sleeping]:
                with self.assertRaises(tb.ShutdownError):
                    await task
            with self.assertRaises(tb.ShutdownError):
                await rt.run_blocking(print)

        asyncio.run(main())
        gc.collect()
        self.assertEqual(_runtime._jobs, {})


if __name__ == "__main__":
    unittest.main()
