"""Objects named "module:attr" (a user's rule or reader outside the package), imported with an
error that says what failed and where: shared by the dataset and the strategy registries."""

from __future__ import annotations

import importlib
import traceback

from fedhar.errors import FedharError


def import_target(target: str, what: str):
    """The object ``module:attr`` names (or the module when there is no ``:attr``)."""
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise FedharError(f"{what} {target!r}: cannot import module {module_name!r} ({e}); it must be importable "
                          f"wherever the run's processes start (installed, or on PYTHONPATH)") from None
    except Exception as e:  # the module's own code failed: its error, where it was raised, in one line
        if isinstance(e, SyntaxError):
            where = f"{e.filename}:{e.lineno}"
        else:
            frame = traceback.extract_tb(e.__traceback__)[-1]
            where = f"{frame.filename}:{frame.lineno}"
        raise FedharError(f"{what} {target!r}: importing module {module_name!r} raised {type(e).__name__}: "
                          f"{e} (at {where})") from None
    if not attr:
        return module
    try:
        return getattr(module, attr)
    except AttributeError:
        raise FedharError(f"{what} {target!r}: module {module_name!r} ({module.__file__}) has no {attr!r}") from None
