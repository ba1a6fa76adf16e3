"""fedhar: federated LoRA/QLoRA fine-tuning for Human Activity Recognition."""

from fedhar.console import quiet_libraries

__version__ = "0.1.0"

quiet_libraries()  # every process that imports fedhar (Ray actors and workers too); --verbose undoes it
