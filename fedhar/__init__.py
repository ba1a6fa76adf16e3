"""fedhar: federated LoRA/QLoRA fine-tuning for Human Activity Recognition.

From Python: ``fedhar.run_lodo``, ``fedhar.evaluate``, ``fedhar.load_model`` (fedhar/api.py),
imported on first use so that ``import fedhar`` stays light. A federation: ``simulations.federate``
(the library core never imports the Flower app).
"""

from fedhar.console import quiet_libraries

__version__ = "0.1.0"
__all__ = ["__version__", "evaluate", "load_model", "run_lodo"]

quiet_libraries()  # every process that imports fedhar (Ray actors and workers too); --verbose undoes it


def __getattr__(name: str):
    if name in ("run_lodo", "evaluate", "load_model"):
        from fedhar import api

        return getattr(api, name)
    if name in ("data", "model"):  # `import fedhar; fedhar.data.activities()`, as README writes it
        import importlib

        return importlib.import_module(f"fedhar.{name}")
    raise AttributeError(f"module 'fedhar' has no attribute {name!r}")
