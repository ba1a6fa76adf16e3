"""SIGTERM handled like Ctrl-C, so every engine stops the same way (``with`` blocks clean up,
the round in flight is abandoned, the last finished round's checkpoint stays)."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


@contextmanager
def interrupt_on_sigterm():
    """SIGTERM raises KeyboardInterrupt (as Ctrl-C does) while the block runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
