"""Finedefics: Idefics2 with attribute-augmented alignment for fine-grained visual recognition.

Importing this package registers the classes with the transformers Auto classes, so a Finedefics
checkpoint loads with ``AutoModelForImageTextToText`` / ``AutoProcessor`` without remote code, and
marks them for ``register_for_auto_class`` so that ``save_pretrained`` writes ``auto_map`` and copies
the code files: the saved folder then loads anywhere with ``trust_remote_code=True``.
"""

from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from .configuration_finedefics import FinedeficsConfig
from .modeling_finedefics import FinedeficsForConditionalGeneration, FinedeficsTemperatures
from .processing_finedefics import FinedeficsProcessor

AutoConfig.register(FinedeficsConfig.model_type, FinedeficsConfig, exist_ok=True)
AutoModelForImageTextToText.register(FinedeficsConfig, FinedeficsForConditionalGeneration, exist_ok=True)
AutoProcessor.register(FinedeficsConfig, FinedeficsProcessor, exist_ok=True)

FinedeficsConfig.register_for_auto_class()
FinedeficsForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
FinedeficsProcessor.register_for_auto_class()

__all__ = [
    "FinedeficsConfig",
    "FinedeficsForConditionalGeneration",
    "FinedeficsProcessor",
    "FinedeficsTemperatures",
]
