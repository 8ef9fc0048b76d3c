"""Runtimes and tasks used without asyncio: Python callables and C functions on the blocking
pool, results and typed errors, cancellation, argument lifetimes, handle releases."""

import ctypes
import gc
import threading
import time
import unittest
import weakref

from support import (
    ReleaseCounter,
    Thing,
    c_address,
    cjobs,
    hold_pool,
    os_thread_name,
    run_script,
    tokio_bridge as tb,
)
from tokio_bridge import _runtime


class PythonCallables(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.rt = tb.Runtime(workers=1, max_blocking_threads=4, thread_name="pyt")

    @classmethod
    def tearDownClass(cls):
        cls.rt.close()

    def test_a_callable_runs_on_the_blocking_pool_with_its_arguments(self):
        task = self.rt.spawn_blocking(lambda a, b, *, c: (a + b * c, os_thread_name()), 1, 2, c=3)
        value, thread = task.result(timeout=10)
        self.assertEqual(value, 7)
        self.assertRegex(thread, r"^pyt-blocking-\d+$")
        self.assertTrue(task.done())
        self.assertEqual(task.outcome().name, "TB_OK")
        self.assertEqual(task.result(), (7, thread), "the result can be read again")

    def test_an_exception_comes_back_with_its_traceback(self):
        def parse(text):
            return int(text)

        task = self.rt.spawn_blocking(parse, "forty-two")
        with self.assertRaises(tb.CallbackError) as caught:
            task.result(timeout=10)
        error = caught.exception
        self.assertEqual((error.name, error.code), ("TB_ERR_CALLBACK", tb.EXCEPTION_CODE))
        self.assertIn("in parse", error.traceback)
        self.assertIn("return int(text)", error.traceback)
        self.assertIn("ValueError: invalid literal for int()", error.traceback)
        self.assertNotIn("_run_job", error.traceback, "the package's own frame is left out")
        self.assertIsInstance(error.__cause__, ValueError)
        self.assertIn("invalid literal", str(error))
        self.assertEqual(task.outcome().code, tb.EXCEPTION_CODE)

    def test_wait_with_a_timeout_leaves_the_job_running(self):
        gate = threading.Event()
        task = self.rt.spawn_blocking(gate.wait, 10)
        self.assertFalse(task.wait(0.05))
        self.assertFalse(task.done())
        self.assertIsNone(task.outcome())
        with self.assertRaises(TimeoutError):
            task.result(timeout=0.01)
        gate.set()
        self.assertTrue(task.result(timeout=10))

    def test_a_long_wait_on_the_main_thread_lets_ctrl_c_through(self):
        process, _ = run_script(
            """
import ctypes, os, signal, threading, time
import tokio_bridge as tb
# Python leaves SIGINT ignored when its parent ignored it (as a shell does for a command it
# starts in the background): Ctrl-C must raise KeyboardInterrupt here whoever runs the test.
signal.signal(signal.SIGINT, signal.default_int_handler)
cj = ctypes.CDLL(os.environ["CJOBS"])
task = tb.Runtime().spawn_blocking_c(cj.cj_until_cancelled, 20_000)
threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
start = time.monotonic()
try:
    task.result()
except KeyboardInterrupt:
    print(f"interrupted after {time.monotonic() - start:.3f} s", flush=True)
"""
        )
        self.assertEqual((process.returncode, process.stderr), (0, ""))
        self.assertLess(float(process.stdout.split("interrupted after ")[1].split()[0]), 5)

    def test_a_running_job_is_asked_to_stop_by_cancel(self):
        started = threading.Event()

        def worker():
            started.set()
            deadline = time.monotonic() + 10
            while not tb.cancelled():
                if time.monotonic() > deadline:
                    return "never asked to stop"
                time.sleep(0.002)
            return "stopped"

        task = self.rt.spawn_blocking(worker)
        self.assertTrue(started.wait(10))
        self.assertFalse(task.cancel(), "a running job cannot be cancelled, only asked to stop")
        self.assertEqual(task.result(timeout=10), "stopped")
        self.assertFalse(task.cancel(), "finished")

    def test_cancelled_outside_a_job_is_an_error(self):
        with self.assertRaises(RuntimeError):
            tb.cancelled()

    def test_arguments_live_until_free_arg_runs_even_without_the_task(self):
        with tb.Runtime(max_blocking_threads=1) as rt:
            gate, _ = hold_pool(rt)
            arg = Thing()
            watch = weakref.ref(arg)
            rt.spawn_blocking(lambda thing: None, arg)  # the Task is dropped at once
            del arg
            gc.collect()
            self.assertIsNotNone(watch(), "queued: the job registry keeps it alive")
            gate.set()
            # One thread, jobs in order: this one starts after the previous job's free_arg ran.
            rt.spawn_blocking(lambda: None).result(timeout=10)
            self.assertIsNone(watch())
            self.assertEqual(_runtime._jobs, {})

    def test_a_queued_job_is_cancelled_and_its_arguments_released_at_once(self):
        with tb.Runtime(max_blocking_threads=1) as rt:
            gate, blocker = hold_pool(rt)
            ran = []
            arg = Thing()
            watch = weakref.ref(arg)
            queued = rt.spawn_blocking(ran.append, arg)
            del arg
            self.assertTrue(queued.cancel())
            self.assertIsNone(watch(), "free_arg ran on this thread before cancel() returned")
            self.assertTrue(queued.done())
            with self.assertRaises(tb.Cancelled) as caught:
                queued.result()
            self.assertEqual(caught.exception.name, "TB_ERR_CANCELLED")
            self.assertFalse(queued.cancel(), "already finished")
            gate.set()
            self.assertTrue(blocker.result(timeout=10))
            rt.spawn_blocking(lambda: None).result(timeout=10)
            self.assertEqual(ran, [], "the cancelled job never ran")

    def test_a_sleep_is_cancelled(self):
        start = time.monotonic()
        sleep = self.rt.sleep(10_000)
        self.assertTrue(sleep.cancel())
        with self.assertRaises(tb.Cancelled):
            sleep.result(timeout=10)
        self.assertLess(time.monotonic() - start, 5)

    def test_a_sleep_takes_its_time(self):
        start = time.monotonic()
        self.assertIsNone(self.rt.sleep(50).result(timeout=10))
        self.assertGreaterEqual(time.monotonic() - start, 0.045)

    def test_every_handle_is_released_exactly_once(self):
        with ReleaseCounter() as releases:
            ids = []
            ok = self.rt.spawn_blocking(lambda: 1)
            ok.result(timeout=10)
            ok.result()
            ok.wait()
            ok.done()
            ok.outcome()
            failed = self.rt.spawn_blocking(lambda: 1 / 0)
            self.assertRaises(tb.CallbackError, failed.result, 10)
            sleep = self.rt.sleep(10_000)
            sleep.cancel()
            self.assertRaises(tb.Cancelled, sleep.result, 10)
            sleep.cancel()
            ids += [ok._handle.id, failed._handle.id, sleep._handle.id]

            gate = threading.Event()
            shared = self.rt.spawn_blocking(gate.wait, 10)
            waiters = [
                threading.Thread(target=lambda: (shared.wait(), shared.result(), shared.done()))
                for _ in range(4)
            ]
            for waiter in waiters:
                waiter.start()
            gate.set()
            shared.result(timeout=10)
            for waiter in waiters:
                waiter.join(10)
            ids.append(shared._handle.id)

            dropped = self.rt.spawn_blocking(time.sleep, 0.05)  # released while it runs
            ids.append(dropped._handle.id)
            del dropped
            gc.collect()
            self.rt.spawn_blocking(lambda: None).result(timeout=10)
        self.assertEqual(releases.failures, [])
        for task_id in ids:
            self.assertEqual(releases.calls[task_id], 1, f"task {task_id:#x}")


class CFunctions(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cj = cjobs()
        cls.rt = tb.Runtime(workers=1, max_blocking_threads=4)

    @classmethod
    def tearDownClass(cls):
        cls.rt.close()

    def test_the_result_pointer_comes_back_as_an_int(self):
        self.assertEqual(self.rt.spawn_blocking_c(self.cj.cj_echo, 1234).result(timeout=10), 1234)
        self.assertIsNone(self.rt.spawn_blocking_c(self.cj.cj_echo).result(timeout=10))
        by_address = self.rt.spawn_blocking_c(c_address(self.cj.cj_echo), 99)
        self.assertEqual(by_address.result(timeout=10), 99)

    def test_a_non_zero_return_is_a_callback_error_with_the_code(self):
        task = self.rt.spawn_blocking_c(self.cj.cj_fail, 7)
        with self.assertRaises(tb.CallbackError) as caught:
            task.result(timeout=10)
        self.assertEqual(caught.exception.code, 7)
        self.assertIsNone(caught.exception.traceback)
        self.assertIn("returned 7", str(caught.exception))

    def test_a_ctypes_argument_is_passed_by_address_and_kept_alive(self):
        values = (ctypes.c_int32 * 3)(20, 22, 0)
        self.rt.spawn_blocking_c(self.cj.cj_sum_after_20ms, values).result(timeout=10)
        self.assertEqual(values[2], 42)
        pointer = ctypes.cast(values, ctypes.POINTER(ctypes.c_int32))
        self.rt.spawn_blocking_c(self.cj.cj_sum_after_20ms, pointer).result(timeout=10)
        self.assertEqual(values[2], 42)

        with tb.Runtime(max_blocking_threads=1) as rt:
            gate, _ = hold_pool(rt)
            dropped = (ctypes.c_int32 * 3)(1, 2, 0)
            watch = weakref.ref(dropped)
            task = rt.spawn_blocking_c(self.cj.cj_sum_after_20ms, dropped)
            del dropped
            gc.collect()
            self.assertIsNotNone(watch(), "queued: kept until the job's free_arg runs")
            gate.set()
            task.result(timeout=10)
            self.assertIsNone(watch())
        self.assertEqual(_runtime._kept, {})

    def test_a_c_function_runs_without_the_gil(self):
        task = self.rt.spawn_blocking_c(self.cj.cj_sleep, 800)
        last = time.perf_counter()
        longest_gap = 0.0
        while not task.done():
            time.sleep(0.001)
            now = time.perf_counter()
            longest_gap = max(longest_gap, now - last)
            last = now
        # Had the job held the GIL, this thread would have stalled for its whole 800 ms.
        self.assertLess(longest_gap, 0.4)

    def test_a_running_c_job_sees_the_cancel_request(self):
        before = self.cj.cj_started()
        task = self.rt.spawn_blocking_c(self.cj.cj_until_cancelled, 10_000)
        deadline = time.monotonic() + 10
        while self.cj.cj_started() == before and time.monotonic() < deadline:
            time.sleep(0.001)
        self.assertFalse(task.cancel())
        with self.assertRaises(tb.CallbackError) as caught:
            task.result(timeout=10)
        self.assertEqual(caught.exception.code, 42, "the job stopped because it was asked to")

    def test_what_is_not_a_c_function_or_argument_is_refused(self):
        python_callback = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p)(
            lambda arg, job: 0
        )
        with self.assertRaisesRegex(TypeError, "wraps a Python callable"):
            self.rt.spawn_blocking_c(python_callback)
        with self.assertRaises(TypeError):
            self.rt.spawn_blocking_c(print)
        with self.assertRaises(ValueError):
            self.rt.spawn_blocking_c(0)
        with self.assertRaises(TypeError):
            self.rt.spawn_blocking_c(self.cj.cj_echo, "text")


class Runtimes(unittest.TestCase):
    def test_every_config_field_reaches_the_runtime(self):
        running = threading.Semaphore(0)
        gate = threading.Event()

        def hold():
            running.release()
            gate.wait(10)
            return os_thread_name()

        with tb.Runtime(
            workers=2,
            max_blocking_threads=2,
            blocking_keep_alive_ms=5_000,
            max_queued_blocking=1,
            thread_stack_size=1 << 20,
            thread_name="cfg",
        ) as rt:
            first = rt.spawn_blocking(hold)
            self.assertTrue(running.acquire(timeout=10))
            second = rt.spawn_blocking(hold)
            self.assertTrue(running.acquire(timeout=10))
            third = rt.spawn_blocking(hold)  # both threads are busy: it waits in the queue
            with self.assertRaises(tb.TokioBridgeError) as caught:
                rt.spawn_blocking(hold)
            self.assertEqual(caught.exception.name, "TB_ERR_BUSY")
            self.assertIn("max_queued_blocking", caught.exception.detail)
            gate.set()
            names = {task.result(timeout=10) for task in (first, second, third)}
        self.assertLessEqual(len(names), 2, "at most max_blocking_threads threads")
        for name in names:
            self.assertRegex(name, r"^cfg-blocking-\d+$")

    def test_a_current_thread_runtime_runs_jobs_and_sleeps(self):
        with tb.Runtime(flavor="current_thread") as rt:
            self.assertEqual(rt.spawn_blocking(lambda: "done").result(timeout=10), "done")
            self.assertIsNone(rt.sleep(5).result(timeout=10))

    def test_a_bad_config_is_explained(self):
        with self.assertRaises(tb.TokioBridgeError) as caught:
            tb.Runtime(workers=5000)
        self.assertEqual(caught.exception.name, "TB_ERR_INVALID_ARG")
        self.assertIn("worker_threads", caught.exception.detail)
        with self.assertRaises(tb.TokioBridgeError):
            tb.Runtime(flavor="current_thread", workers=2)
        with self.assertRaises(ValueError):
            tb.Runtime(flavor="threads")
        with self.assertRaises(ValueError):
            tb.Runtime(max_blocking_threads=-1)

    def test_use_after_close_raises_shutdown_error_with_the_library_detail(self):
        cj = cjobs()
        rt = tb.Runtime()
        self.assertTrue(rt.close())
        self.assertTrue(rt.closed)
        self.assertTrue(rt.close(), "closing twice is harmless")
        jobs_before = dict(_runtime._jobs)
        for submit in (
            lambda: rt.spawn_blocking(print),
            lambda: rt.spawn_blocking_c(cj.cj_echo),
            lambda: rt.sleep(1),
        ):
            with self.assertRaises(tb.ShutdownError) as caught:
                submit()
            self.assertEqual(caught.exception.name, "TB_ERR_SHUTDOWN")
            self.assertRegex(caught.exception.detail, r"^tb_(spawn_blocking|sleep): .*shut down")
        self.assertEqual(_runtime._jobs, jobs_before, "a refused job leaves nothing behind")

    def test_close_waits_for_running_jobs_and_drops_queued_ones(self):
        started = threading.Event()

        def running():
            started.set()
            time.sleep(0.1)
            return tb.cancelled()

        rt = tb.Runtime(max_blocking_threads=1)
        first = rt.spawn_blocking(running)
        self.assertTrue(started.wait(10))
        queued = [rt.spawn_blocking(lambda: "ran") for _ in range(5)]
        self.assertTrue(rt.close())
        self.assertTrue(first.result(), "the running job saw the shutdown as a request to stop")
        for task in queued:
            with self.assertRaises(tb.ShutdownError):
                task.result()
        self.assertEqual(_runtime._jobs, {})

    def test_close_with_a_timeout_returns_while_a_job_still_runs(self):
        rt = tb.Runtime()
        gate, blocker = hold_pool(rt)
        self.assertFalse(rt.close(timeout=0.05))
        gate.set()
        self.assertTrue(blocker.result(timeout=10))

    def test_the_default_runtime_is_made_once(self):
        rt = tb.default_runtime()
        self.assertIs(tb.default_runtime(), rt)
        self.assertRegex(rt.spawn_blocking(os_thread_name).result(10), r"^tbpy-blocking-\d")


if __name__ == "__main__":
    unittest.main()
