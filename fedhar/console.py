"""What fedhar prints: its own progress, not the libraries' chatter.

By default the libraries' noise is off: bitsandbytes' "Failed to load CPU gemm_4bit_forward"
line (fedhar's QLoRA runs on its CPU fallback), Ray, torch and Flower deprecation warnings,
Flower's INFO log and its DEPRECATED banner for ``run_simulation``, and colour codes when the
output is not a terminal. ``--verbose`` (or ``FEDHAR_VERBOSE=1``, which Ray actors and worker
processes inherit) shows them all. Failures are never hidden: they are rows in clients.csv
and counted in the per-round line.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

VERBOSE_ENV = "FEDHAR_VERBOSE"
FLOWER_LOGGER = "flwr"  # the logging logger Flower writes to
NOISY_MODULES = r"(torch|ray|flwr|peft|bitsandbytes|transformers|typer|click)(\..*)?"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "0") == "1"


def set_verbose(on: bool) -> None:
    """Choose for this process and the processes it starts."""
    os.environ[VERBOSE_ENV] = "1" if on else "0"
    quiet_libraries()


def stderr_is_tty() -> bool:
    """sys.stderr.isatty(), False for streams without it (Ray Tune's log_to_file wraps them in a Tee)."""
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def quiet_libraries() -> None:
    """Silence third-party noise in this process, unless verbose. Cheap: imports nothing."""
    if verbose():
        return
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    for category in (DeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category, module=NOISY_MODULES)
    if not stderr_is_tty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # Ray's coloured "(pid=...)" prefixes


class _DropBanners(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        return not any(word in text for word in ("DEPRECATED FEATURE", "FEATURE UPDATE"))


def quiet_flower() -> None:
    """Flower's console log: warnings only and no colours off a terminal (INFO with --verbose).

    Flower logs through Python's logging, to the "flwr" logger, whose console handler is a
    StreamHandler: its level is set with the logging API. Colours have no public switch: the
    handler's ``colored`` flag is the one Flower's own (non-public) ``update_console_handler``
    sets; tests/test_flower_public_api.py checks that no colour code reaches a file."""
    import flwr.common  # noqa: F401  (importing Flower adds its console handler to the "flwr" logger)

    quiet_libraries()
    flower = logging.getLogger(FLOWER_LOGGER)
    for handler in flower.handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.INFO if verbose() else logging.WARNING)
            if hasattr(handler, "colored"):
                handler.colored = stderr_is_tty()
    for f in [f for f in flower.filters if isinstance(f, _DropBanners)]:
        flower.removeFilter(f)
    if not verbose():
        flower.addFilter(_DropBanners())


def progress(iterable=None, **kwargs):
    """A tqdm bar on stderr, shown only on a terminal (logs get the per-round lines instead)."""
    from tqdm import tqdm

    kwargs.setdefault("disable", None)  # None: off when stderr is not a TTY
    kwargs.setdefault("leave", False)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, file=sys.stderr, **kwargs)


def say(line: str) -> None:
    """Print a line to stdout without breaking a progress bar."""
    from tqdm import tqdm

    tqdm.write(line, file=sys.stdout)
    sys.stdout.flush()
