"""llm-sculpt: carve a smaller, faster model out of a pretrained decoder LLM without retraining.

Importing this package registers the sculpted-model classes with transformers' Auto
classes, so `AutoModelForCausalLM.from_pretrained(dir)` loads a sculpted model.
"""

from transformers import AutoConfig, AutoModelForCausalLM

from .models.configuration_sculpted import SculptedConfig
from .models.modeling_sculpted import SculptedForCausalLM

__version__ = "0.1.0"

AutoConfig.register(SculptedConfig.model_type, SculptedConfig, exist_ok=True)
AutoModelForCausalLM.register(SculptedConfig, SculptedForCausalLM, exist_ok=True)
# Saved directories carry these two files and an `auto_map`, for trust_remote_code loading without llm-sculpt.
SculptedConfig.register_for_auto_class()
SculptedForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["SculptedConfig", "SculptedForCausalLM", "__version__"]
