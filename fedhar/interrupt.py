"""SIGTERM handled like Ctrl-C, so every engine stops the same way (``with`` blocks clean up,
the round in flight is abandoned, the last finished round's checkpoint stays), and a command
that was interrupted ends even when a library left a thread blocked for good."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from contextlib import contextmanager

LEAVE_GRACE_S = 2.0  # how long threads still running after an interrupt get to finish


def _interrupt(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


@contextmanager
def interrupt_on_sigterm():
    """SIGTERM raises KeyboardInterrupt (as Ctrl-C does) while the block runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def reclaim_sigterm() -> None:
    """Put fedhar's SIGTERM handler back after a library replaced it (``ray.init`` installs
    one that calls ``sys.exit``, which skips fedhar's clean-up of the run)."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is not _interrupt:
        signal.signal(signal.SIGTERM, _interrupt)


def _holds_exit(thread: threading.Thread) -> bool:
    """Whether the interpreter waits for this thread at exit: a non-daemon thread, or a
    ``ThreadPoolExecutor`` worker (joined at exit whatever its daemon flag)."""
    return thread is not threading.main_thread() and thread.is_alive() and (
        not thread.daemon or thread.name.startswith("ThreadPoolExecutor"))


def leave(code: int) -> None:
    """End the process with ``code`` after an interrupt, once every clean-up has run.

    Threads the interpreter would wait for get ``LEAVE_GRACE_S`` seconds; after that the
    process exits without them (``os._exit``): Flower's worker threads of the Ray engine stay
    blocked in ``ray.get`` once Ray is shut down, and the interpreter would wait for ever."""
    deadline = time.monotonic() + LEAVE_GRACE_S
    for thread in [t for t in threading.enumerate() if _holds_exit(t)]:
        thread.join(max(0.0, deadline - time.monotonic()))
    if any(_holds_exit(t) for t in threading.enumerate()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
