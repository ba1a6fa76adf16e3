"""The LoRA rules' server classes under their earlier import path.

Each rule is one module now (strategies/fedit.py, ffa.py, fedsa.py, fedex.py, flora.py,
hetlora.py, flexlora.py; the interface in strategies/base.py); this module only re-exports
them so that ``from strategies.lora_strategies import FedIT`` keeps working.
"""

from strategies.fedex import FedExLoRA
from strategies.fedit import FedIT
from strategies.fedsa import FedSALoRA
from strategies.ffa import FFALoRA
from strategies.flexlora import FlexLoRA
from strategies.flora import FLoRA
from strategies.hetlora import HetLoRA
from strategies.records import DELTA_SUFFIX, delta_key, is_delta_key, numpy_to_record, record_to_numpy

__all__ = ["DELTA_SUFFIX", "FFALoRA", "FLoRA", "FedExLoRA", "FedIT", "FedSALoRA", "FlexLoRA", "HetLoRA",
           "delta_key", "is_delta_key", "numpy_to_record", "record_to_numpy"]
