"""The mathematics of federated LoRA aggregation lives in ``fedhar.lora_math`` (the library
core: fedhar.drift measures with it, and the library must not import the apps); this name
is kept for the rules and for code written against it."""

from fedhar.lora_math import *  # noqa: F403
from fedhar.lora_math import State  # noqa: F401 (a type alias the rules annotate with)
