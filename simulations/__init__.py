"""fedhar's Flower app: ClientApp, ServerApp, engines, sweeps, reports and figures of federated runs.

From Python: ``simulations.federate`` (simulations/api.py), imported on first use.
"""

__all__ = ["FederatedRun", "federate"]


def __getattr__(name: str):
    if name in __all__:
        from simulations import api

        return getattr(api, name)
    raise AttributeError(f"module 'simulations' has no attribute {name!r}")
