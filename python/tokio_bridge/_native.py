"""The C boundary: finding and loading ``libtokio_bridge``, its types and functions, the status
codes and the exceptions they become.

Every function is called through a :class:`ctypes.CDLL`, so each call releases the GIL while it
runs: a blocking call (``tb_task_wait``, ``tb_runtime_shutdown``) never stops other Python
threads, and a Python callable running on the blocking pool can always take the GIL it needs.
"""

from __future__ import annotations

import ctypes
import os
import sys
from ctypes import POINTER, c_bool, c_char_p, c_int32, c_size_t, c_uint32, c_uint64, c_void_p
from pathlib import Path
from typing import List, Optional

#: The ``major.minor`` of the C API this package is written against (``TB_VERSION_*``).
API_VERSION = (0, 1)

ENV_VAR = "TOKIO_BRIDGE_LIB"

LIBRARY_NAME = "libtokio_bridge.dylib" if sys.platform == "darwin" else "libtokio_bridge.so"


class LibraryNotFound(ImportError):
    """The shared library could not be found or loaded; the message says what to do."""


def _candidates() -> List[Path]:
    """Where the library is looked for when ``TOKIO_BRIDGE_LIB`` is not set, in order."""
    package = Path(__file__).resolve().parent
    places = [package / LIBRARY_NAME]
    checkout = package.parent.parent  # python/tokio_bridge -> the repository root
    if (checkout / "Cargo.toml").is_file():
        places += [checkout / "target" / profile / LIBRARY_NAME for profile in ("release", "debug")]
    return places


def _how_to_fix() -> str:
    checkout = Path(__file__).resolve().parent.parent.parent
    build = (
        f"build it with `cargo build --release` in {checkout}"
        if (checkout / "Cargo.toml").is_file()
        else "build it with `cargo build --release` in a checkout of tokio-bridge"
    )
    return (
        f"To fix: {build}, or set {ENV_VAR} to the full path of {LIBRARY_NAME}, or copy "
        f"{LIBRARY_NAME} next to the package ({Path(__file__).resolve().parent})."
    )


def find_library() -> Path:
    """The path of the library to load: ``$TOKIO_BRIDGE_LIB``, else the first candidate that
    exists. Raises :class:`LibraryNotFound` with instructions when there is none."""
    explicit = os.environ.get(ENV_VAR)
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise LibraryNotFound(
                f"tokio_bridge: {ENV_VAR} is set to {explicit!r}, which is not a file. "
                + _how_to_fix()
            )
        return path
    places = _candidates()
    for path in places:
        if path.is_file():
            return path
    looked = "".join(f"\n  - {p}" for p in places)
    raise LibraryNotFound(
        f"tokio_bridge: cannot find {LIBRARY_NAME}. {ENV_VAR} is not set, and it is not in:"
        f"{looked}\n" + _how_to_fix()
    )


# --- status codes (tb_status) -------------------------------------------------------------------

TB_OK = 0
TB_PENDING = 1
TB_TIMED_OUT = 2
TB_ERR_NULL = -1
TB_ERR_INVALID_ARG = -2
TB_ERR_BAD_HANDLE = -3
TB_ERR_CANCELLED = -4
TB_ERR_CALLBACK = -5
TB_ERR_PANIC = -6
TB_ERR_SHUTDOWN = -7
TB_ERR_ON_RUNTIME_THREAD = -8
TB_ERR_BUSY = -9
TB_ERR_ALREADY = -10
TB_ERR_OS = -11
TB_ERR_FORKED = -12

TB_FOREVER = 2**64 - 1
TB_MULTI_THREAD = 0
TB_CURRENT_THREAD = 1


# --- types --------------------------------------------------------------------------------------


class TbTask(ctypes.Structure):
    _fields_ = [("id", c_uint64)]


class TbRuntime(ctypes.Structure):
    _fields_ = [("id", c_uint64)]


class TbQueue(ctypes.Structure):
    _fields_ = [("id", c_uint64)]


class TbOutcome(ctypes.Structure):
    _fields_ = [
        ("status", c_int32),
        ("code", c_int32),
        ("value", c_void_p),
        ("ticks", c_uint64),
        ("queued_us", c_uint64),
        ("run_us", c_uint64),
    ]


class TbRuntimeConfig(ctypes.Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("flavor", c_uint32),
        ("worker_threads", c_uint32),
        ("max_blocking_threads", c_uint32),
        ("blocking_keep_alive_ms", c_uint32),
        ("max_queued_blocking", c_uint32),
        ("thread_stack_size", c_size_t),
        ("thread_name", c_char_p),
    ]


class TbQueueStats(ctypes.Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("pushed", c_uint64),
        ("drained", c_uint64),
        ("wakeups", c_uint64),
        ("pending", c_uint64),
    ]


#: ``tb_blocking_fn``: ``int32_t (*)(void *arg, tb_job *job)``.
BLOCKING_FN = ctypes.CFUNCTYPE(c_int32, c_void_p, c_void_p)
#: ``tb_free_fn``: ``void (*)(void *arg)``.
FREE_FN = ctypes.CFUNCTYPE(None, c_void_p)

_SIGNATURES = {
    "tb_version": (c_uint32, []),
    "tb_status_name": (c_char_p, [c_int32]),
    "tb_status_message": (c_char_p, [c_int32]),
    "tb_last_error": (c_size_t, [c_char_p, c_size_t]),
    "tb_runtime_config_init": (None, [POINTER(TbRuntimeConfig)]),
    "tb_runtime_new": (c_int32, [POINTER(TbRuntimeConfig), POINTER(TbRuntime)]),
    "tb_runtime_shutdown": (c_int32, [TbRuntime, c_uint64]),
    "tb_spawn_blocking": (c_int32, [TbRuntime, c_void_p, c_void_p, c_void_p, POINTER(TbTask)]),
    "tb_sleep": (c_int32, [TbRuntime, c_uint64, POINTER(TbTask)]),
    "tb_job_cancelled": (c_bool, [c_void_p]),
    "tb_task_wait": (c_int32, [TbTask, c_uint64]),
    "tb_task_poll": (c_int32, [TbTask]),
    "tb_task_outcome": (c_int32, [TbTask, POINTER(TbOutcome)]),
    "tb_task_cancel": (c_int32, [TbTask]),
    "tb_task_release": (c_int32, [TbTask]),
    "tb_task_notify": (c_int32, [TbTask, TbQueue, c_uint64]),
    "tb_queue_new": (c_int32, [POINTER(TbQueue)]),
    "tb_queue_fd": (c_int32, [TbQueue, POINTER(c_int32)]),
    "tb_queue_drain": (c_int32, [TbQueue, POINTER(c_uint64), c_size_t, POINTER(c_size_t)]),
    "tb_queue_get_stats": (c_int32, [TbQueue, POINTER(TbQueueStats)]),
    "tb_queue_free": (c_int32, [TbQueue]),
}


def _load(path: Path) -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as error:
        raise LibraryNotFound(f"tokio_bridge: cannot load {path}: {error}. " + _how_to_fix())
    for name, (restype, argtypes) in _SIGNATURES.items():
        try:
            function = getattr(lib, name)
        except AttributeError:
            raise LibraryNotFound(
                f"tokio_bridge: {path} has no {name}: it is older than this package. "
                + _how_to_fix()
            ) from None
        function.restype = restype
        function.argtypes = argtypes
    version = lib.tb_version()
    found = (version >> 16, (version >> 8) & 0xFF)
    # Before 1.0 a minor version may break the API; from 1.0 on only a major version does.
    if found[0] != API_VERSION[0] or (found[0] == 0 and found[1] != API_VERSION[1]):
        raise LibraryNotFound(
            f"tokio_bridge: {path} is version {found[0]}.{found[1]}, this package needs "
            f"{API_VERSION[0]}.{API_VERSION[1]}. " + _how_to_fix()
        )
    return lib


library_path = find_library()
lib = _load(library_path)


# --- errors -------------------------------------------------------------------------------------


def status_name(status: int) -> str:
    """The name of a status code, such as ``"TB_ERR_BAD_HANDLE"``."""
    return lib.tb_status_name(status).decode()


def last_error() -> str:
    """This thread's last failure as the library describes it (``tb_last_error``)."""
    size = lib.tb_last_error(None, 0)
    buf = ctypes.create_string_buffer(size + 1)
    lib.tb_last_error(buf, size + 1)
    return buf.value.decode(errors="replace")


class TokioBridgeError(Exception):
    """A failed call or a task that did not succeed.

    ``status`` is the ``tb_status`` code and ``name`` its name (``"TB_ERR_SHUTDOWN"``).
    ``detail`` is the library's own explanation: for a failed call the ``tb_last_error`` text
    (which call, which argument or handle, why); for a task's outcome the status message.
    """

    def __init__(self, status: int, detail: Optional[str] = None):
        self.status = status
        self.name = status_name(status)
        self.detail = detail or lib.tb_status_message(status).decode()
        super().__init__(f"{self.name}: {self.detail}")


class Cancelled(TokioBridgeError):
    """The task was cancelled before it ran (``TB_ERR_CANCELLED``)."""


class ShutdownError(TokioBridgeError):
    """The runtime is shut down or shutting down (``TB_ERR_SHUTDOWN``): a call was refused, or
    a queued task was dropped by the shutdown and never ran."""


class CallbackError(TokioBridgeError):
    """The job's function failed (``TB_ERR_CALLBACK``).

    ``code`` is what the function returned: a C function's non-zero value, or
    :data:`tokio_bridge.EXCEPTION_CODE` for a Python callable that raised. For a Python callable
    ``traceback`` is the formatted traceback of the exception, which is also ``__cause__``;
    for a C function both are None.
    """

    def __init__(self, code: int, traceback: Optional[str] = None):
        self.code = code
        self.traceback = traceback
        if traceback is None:
            detail = f"the job's function returned {code}"
        else:
            detail = "the Python callable raised an exception:\n" + traceback.rstrip()
        super().__init__(TB_ERR_CALLBACK, detail)


_ERRORS = {TB_ERR_CANCELLED: Cancelled, TB_ERR_SHUTDOWN: ShutdownError}


def error_for(status: int, detail: Optional[str] = None) -> TokioBridgeError:
    """The exception for a status code: :class:`Cancelled`, :class:`ShutdownError` or
    :class:`TokioBridgeError`."""
    return _ERRORS.get(status, TokioBridgeError)(status, detail)


def check(status: int) -> int:
    """Returns a non-negative status; raises the matching error, with this thread's
    ``tb_last_error`` text, for a negative one. Call it right after the failing call, on the
    same thread."""
    if status < 0:
        raise error_for(status, last_error())
    return status
