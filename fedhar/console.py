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
    """Flower's console log: warnings only and no colours off a terminal (INFO with --verbose)."""
    from flwr.supercore.logger import FLOWER_LOGGER, update_console_handler

    quiet_libraries()
    update_console_handler(level=logging.INFO if verbose() else logging.WARNING, colored=stderr_is_tty())
    for f in [f for f in FLOWER_LOGGER.filters if isinstance(f, _DropBanners)]:
        FLOWER_LOGGER.removeFilter(f)
    if not verbose():
        FLOWER_LOGGER.addFilter(_DropBanners())


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
