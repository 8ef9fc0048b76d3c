"""What the tests and ``python/bench_queue.py`` share: the package on ``sys.path``, the C jobs of
``cjobs.c`` built once per process against the very library file the package loaded, a counter
of task-handle releases, and a runner for scripts in a fresh interpreter."""

import asyncio
import atexit
import collections
import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from ctypes import POINTER, c_int32, c_size_t, c_uint64, c_void_p
from pathlib import Path
from typing import Callable, Optional, Tuple

ROOT = Path(__file__).resolve().parents[2]
PYTHON_DIR = ROOT / "python"
if str(PYTHON_DIR) not in sys.path:
    sys.path.insert(0, str(PYTHON_DIR))

import tokio_bridge  # noqa: E402
from tokio_bridge import _native  # noqa: E402

_built: Optional[Path] = None
_cjobs: Optional[ctypes.CDLL] = None


def cjobs_path() -> Path:
    """Builds ``cjobs.c`` into a temporary directory (once per process) and returns the file.

    It is linked to ``tokio_bridge.library_path`` by its full path, so that its calls to
    ``tb_job_set_result`` reach the library instance the package loaded."""
    global _built
    if _built is None:
        out_dir = Path(tempfile.mkdtemp(prefix="tb-cjobs-"))
        atexit.register(shutil.rmtree, out_dir, True)
        out = out_dir / "libcjobs.so"
        command = [
            os.environ.get("CC", "cc"),
            "-std=c11",
            "-O2",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-shared",
            "-fPIC",
            f"-I{ROOT / 'include'}",
            str(Path(__file__).with_name("cjobs.c")),
            str(Path(tokio_bridge.library_path).resolve()),
            "-o",
            str(out),
        ]
        subprocess.run(command, check=True)
        _built = out
    return _built


def cjobs() -> ctypes.CDLL:
    """The C jobs, loaded with the signatures of the helpers that are not ``tb_blocking_fn``."""
    global _cjobs
    if _cjobs is None:
        lib = ctypes.CDLL(str(cjobs_path()))
        lib.cj_completions.restype = c_uint64
        lib.cj_completions.argtypes = []
        lib.cj_started.restype = c_int32
        lib.cj_started.argtypes = []
        lib.cj_spawn_noops.restype = c_int32
        lib.cj_spawn_noops.argtypes = [
            _native.TbRuntime,
            c_int32,
            _native.TbQueue,
            c_size_t,
            POINTER(_native.TbTask),
        ]
        lib.cj_release_all.restype = None
        lib.cj_release_all.argtypes = [POINTER(_native.TbTask), c_size_t]
        _cjobs = lib
    return _cjobs


class ReleaseCounter:
    """Counts ``tb_task_release`` calls per task id while active, by wrapping the library
    function; the real function still runs and its failures are recorded."""

    def __enter__(self) -> "ReleaseCounter":
        self.calls: collections.Counter = collections.Counter()
        self.failures: list = []
        self._original = _native.lib.tb_task_release
        self._lock = threading.Lock()

        def release(handle: _native.TbTask) -> int:
            status = self._original(handle)
            with self._lock:
                self.calls[handle.id] += 1
                if status != 0:
                    self.failures.append((handle.id, _native.status_name(status)))
            return status

        _native.lib.tb_task_release = release
        return self

    def __exit__(self, *exc_info: object) -> None:
        _native.lib.tb_task_release = self._original


class Thing:
    """A Python object whose lifetime a weak reference can watch."""


def hold_pool(runtime: "tokio_bridge.Runtime") -> Tuple[threading.Event, "tokio_bridge.Task"]:
    """Occupies one blocking thread until the returned gate is set; returns once it does, so that
    on a one-thread pool later jobs stay queued."""
    gate = threading.Event()
    started = threading.Event()
    blocker = runtime.spawn_blocking(lambda: started.set() or gate.wait(10))
    assert started.wait(10)
    return gate, blocker


def os_thread_name() -> str:
    """The calling thread's name as the operating system knows it (set by the library)."""
    with open(f"/proc/self/task/{threading.get_native_id()}/comm") as f:
        return f.read().strip()


def c_address(function: ctypes._CFuncPtr) -> int:  # type: ignore[name-defined]
    """A C function's address as an int."""
    return c_void_p.from_address(ctypes.addressof(function)).value or 0


async def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Lets the event loop run until ``condition()`` holds or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


def run_script(
    code: str, timeout: float = 60.0, **env_changes: Optional[str]
) -> Tuple[subprocess.CompletedProcess, float]:
    """Runs ``code`` in a fresh interpreter that imports the package from this checkout, loads
    the library this process loaded and finds the C jobs library in ``$CJOBS``; ``env_changes``
    override those variables (None removes one). Returns the finished process and its run time in
    seconds; raises ``subprocess.TimeoutExpired`` (after killing it) if it hangs."""
    env = dict(
        os.environ,
        PYTHONPATH=str(PYTHON_DIR),
        TOKIO_BRIDGE_LIB=str(tokio_bridge.library_path),
        CJOBS=str(cjobs_path()),
    )
    for name, value in env_changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    start = time.monotonic()
    process = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return process, time.monotonic() - start
