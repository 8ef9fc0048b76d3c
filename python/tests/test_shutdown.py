"""Interpreter exit with work in flight, each case in a fresh interpreter: it must exit with status
0, print nothing to stderr, and end in bounded time. The rule: running jobs are waited for,
queued jobs never start."""

import textwrap
import unittest

from support import run_script

PRELUDE = """
import asyncio, atexit, ctypes, os, sys, threading, time
started_at = time.monotonic()
# Registered before the package's handler, so it runs after it: it sees the exit's end.
atexit.register(lambda: print(f"exit took {time.monotonic() - started_at:.3f}", flush=True))
import tokio_bridge as tb
cj = ctypes.CDLL(os.environ["CJOBS"])

# Submits a job that sleeps, then prints `message`; returns once the job has started.
def start_python_job(rt, seconds, message):
    started = threading.Event()
    def job():
        started.set()
        time.sleep(seconds)
        print(f"{message}, asked to stop: {tb.cancelled()}", flush=True)
    rt.spawn_blocking(job)
    started.wait(10)
"""


class InterpreterExit(unittest.TestCase):
    def exit_cleanly(self, body: str) -> str:
        process, elapsed = run_script(PRELUDE + textwrap.dedent(body), timeout=60)
        self.assertEqual(process.returncode, 0, process.stdout + process.stderr)
        self.assertEqual(process.stderr, "", "no traceback, no 'Exception ignored', no fatal error")
        self.assertLess(elapsed, 30)
        return process.stdout

    def test_a_running_python_job_finishes_and_queued_ones_never_start(self):
        out = self.exit_cleanly(
            """
            rt = tb.Runtime(max_blocking_threads=1)
            start_python_job(rt, 0.3, "running job finished")
            def queued(i):
                print("queued job", i, "ran", flush=True)
            kept = [rt.spawn_blocking(queued, i) for i in range(50)]
            for i in range(50):
                rt.spawn_blocking(queued, i)  # no Task kept
            print("exiting", flush=True)
            """
        )
        self.assertIn("exiting\nrunning job finished, asked to stop: True\n", out)
        self.assertNotIn("queued job", out)

    def test_a_running_c_job_is_waited_for(self):
        out = self.exit_cleanly(
            """
            rt = tb.Runtime()
            rt.spawn_blocking_c(cj.cj_sleep, 300)
            rt.spawn_blocking_c(cj.cj_sum_after_20ms, (ctypes.c_int32 * 3)(1, 2, 0))
            while cj.cj_started() == 0:
                time.sleep(0.001)
            started_at = time.monotonic()
            """
        )
        took = float(out.split("exit took ")[1])
        self.assertGreaterEqual(took, 0.25, "the exit waited for the 300 ms job")

    def test_queued_jobs_with_arguments_are_dropped_on_the_exiting_thread(self):
        self.exit_cleanly(
            """
            rt = tb.Runtime(max_blocking_threads=1)
            rt.spawn_blocking_c(cj.cj_sleep, 100)
            for i in range(100):
                rt.spawn_blocking_c(cj.cj_sum_after_20ms, (ctypes.c_int32 * 3)(i, i, 0))
                rt.spawn_blocking(print, "never printed", object())
            rt.sleep(60_000)
            """
        )

    def test_a_runtime_closed_with_a_timeout_still_has_its_job_waited_for(self):
        out = self.exit_cleanly(
            """
            rt = tb.Runtime()
            start_python_job(rt, 0.3, "late job finished")
            print("closed in time:", rt.close(timeout=0.01), flush=True)
            """
        )
        self.assertIn("closed in time: False\nlate job finished, asked to stop: True\n", out)

    def test_an_asyncio_loop_ended_mid_flight_by_sys_exit(self):
        out = self.exit_cleanly(
            """
            rt = tb.Runtime(max_blocking_threads=8)
            async def main():
                pending = [asyncio.ensure_future(rt.run_blocking_c(cj.cj_sleep, 50))
                           for _ in range(200)]
                pending += [asyncio.ensure_future(rt.run_blocking(time.sleep, 0.05))
                            for _ in range(50)]
                pending.append(asyncio.ensure_future(rt.asleep(60_000)))
                await asyncio.sleep(0.1)
                print("exiting mid-flight", flush=True)
                sys.exit(0)
            asyncio.run(main())
            """
        )
        self.assertIn("exiting mid-flight", out)

    def test_an_asyncio_loop_still_running_in_a_daemon_thread(self):
        out = self.exit_cleanly(
            """
            rt = tb.Runtime(max_blocking_threads=4)
            def serve():
                async def main():
                    while True:
                        await asyncio.gather(
                            rt.run_blocking_c(cj.cj_sleep, 5),
                            rt.run_blocking(time.sleep, 0.005),
                            rt.asleep(5),
                            *(rt.run_blocking_c(cj.cj_echo, i) for i in range(1, 50)),
                        )
                try:
                    asyncio.run(main())
                except tb.ShutdownError:
                    pass  # the exit handler closed the runtime under the loop
            threading.Thread(target=serve, daemon=True).start()
            time.sleep(0.2)
            print("main thread exiting", flush=True)
            """
        )
        self.assertIn("main thread exiting", out)

    def test_threads_still_submitting_while_the_interpreter_exits(self):
        self.exit_cleanly(
            """
            rt = tb.Runtime(max_blocking_threads=2)
            def submit_forever():
                while True:
                    try:
                        rt.spawn_blocking(len, "abc")
                        rt.spawn_blocking_c(cj.cj_echo, (ctypes.c_int32 * 1)(7))
                    except tb.ShutdownError:
                        pass  # refused once the exit handler closed the runtime; keep trying
            for _ in range(2):
                threading.Thread(target=submit_forever, daemon=True).start()
            time.sleep(0.2)
            """
        )

    def test_the_default_runtime_is_closed_at_exit(self):
        out = self.exit_cleanly(
            """
            start_python_job(tb.default_runtime(), 0.1, "default runtime job finished")
            """
        )
        self.assertIn("default runtime job finished", out)

    def test_no_runtime_starts_once_the_exit_handler_ran(self):
        out = self.exit_cleanly(
            """
            def late():
                try:
                    tb.Runtime()
                except tb.ShutdownError as error:
                    print("refused:", error.detail, flush=True)
            atexit.register(late)  # runs before the package's handler
            import tokio_bridge._runtime
            atexit.unregister(tokio_bridge._runtime._close_every_runtime)
            atexit.register(tokio_bridge._runtime._close_every_runtime)  # now it runs first
            """
        )
        self.assertIn("refused: the interpreter is exiting", out)


if __name__ == "__main__":
    unittest.main()
