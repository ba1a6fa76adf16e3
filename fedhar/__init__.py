"""fedhar: federated LoRA/QLoRA fine-tuning for Human Activity Recognition."""

__version__ = "0.1.0"
