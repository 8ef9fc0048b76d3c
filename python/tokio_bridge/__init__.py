"""tokio-bridge for Python: Tokio's blocking pool and async timers, with asyncio integration.

Standard library only (:mod:`ctypes`); Python >= 3.9. ::

    import tokio_bridge

    with tokio_bridge.Runtime(max_blocking_threads=16) as rt:
        task = rt.spawn_blocking(sum, range(10**6))      # a Python callable on the pool
        print(task.result())

    async def main(rt):
        rows = await rt.run_blocking(query, "SELECT 1")  # completes through the loop's queue fd
        await rt.asleep(10)

**Finding the library.** ``$TOKIO_BRIDGE_LIB`` (the full path of ``libtokio_bridge.so``), else
a ``libtokio_bridge.so`` next to this package, else, when the package runs from a checkout of
the repository, ``target/release`` then ``target/debug``. When none is there, importing raises
:class:`LibraryNotFound` (an :class:`ImportError`) that says how to build or point to it.

**Shutdown rule.** Importing the package registers an :mod:`atexit` handler that closes every
runtime still open, before the interpreter starts finalizing: jobs that are running are waited
for, like non-daemon threads (they see :func:`cancelled` turn true and may stop early); queued
jobs never start (their arguments are released on the exiting thread); sleeps end. After that no
new runtime can be created. A job that never returns therefore keeps the process from exiting.
"""

from ._aio import QueueStats
from ._native import (
    CallbackError,
    Cancelled,
    LibraryNotFound,
    ShutdownError,
    TokioBridgeError,
    library_path,
)
from ._runtime import EXCEPTION_CODE, Outcome, Runtime, Task, cancelled, default_runtime

__version__ = "0.1.0"

__all__ = [
    "EXCEPTION_CODE",
    "CallbackError",
    "Cancelled",
    "LibraryNotFound",
    "Outcome",
    "QueueStats",
    "Runtime",
    "ShutdownError",
    "Task",
    "TokioBridgeError",
    "cancelled",
    "default_runtime",
    "library_path",
]
