"""Finedefics: attribute-augmented alignment for fine-grained visual recognition, on several MLLM families.

Importing this package registers every family's classes (``families.register_family``) with the transformers
Auto classes, so a Finedefics checkpoint loads with ``AutoModelForImageTextToText`` / ``AutoProcessor`` without
remote code, and marks them for ``register_for_auto_class`` so that ``save_pretrained`` writes ``auto_map`` and
copies the code files: the saved folder then loads anywhere with ``trust_remote_code=True``.

Families (see ``modeling_finedefics.families.FAMILIES``): Idefics2 (``FinedeficsConfig``,
``FinedeficsForConditionalGeneration``, ``FinedeficsProcessor``, model_type "finedefics"), Idefics3, SmolVLM,
Qwen2-VL, Qwen2.5-VL and LLaVA (``Finedefics<Family>Config`` / ``...ForConditionalGeneration`` /
``...Processor``, model_type "finedefics_<stock model_type>").
"""

from . import families  # noqa: F401  (registers every family with the Auto classes)
from .alignment import FinedeficsTemperatures
from .configuration_finedefics import FinedeficsConfig
from .idefics3 import (
    FinedeficsIdefics3Config,
    FinedeficsIdefics3ForConditionalGeneration,
    FinedeficsIdefics3Processor,
    FinedeficsSmolVLMConfig,
    FinedeficsSmolVLMForConditionalGeneration,
    FinedeficsSmolVLMProcessor,
)
from .llava import FinedeficsLlavaConfig, FinedeficsLlavaForConditionalGeneration, FinedeficsLlavaProcessor
from .modeling_finedefics import FinedeficsForConditionalGeneration
from .processing_finedefics import FinedeficsProcessor
from .qwen2_vl import (
    FinedeficsQwen2_5_VLConfig,
    FinedeficsQwen2_5_VLForConditionalGeneration,
    FinedeficsQwen2_5_VLProcessor,
    FinedeficsQwen2VLConfig,
    FinedeficsQwen2VLForConditionalGeneration,
    FinedeficsQwen2VLProcessor,
)

__all__ = [
    "FinedeficsConfig",
    "FinedeficsForConditionalGeneration",
    "FinedeficsProcessor",
    "FinedeficsTemperatures",
    "FinedeficsIdefics3Config", "FinedeficsIdefics3ForConditionalGeneration", "FinedeficsIdefics3Processor",
    "FinedeficsSmolVLMConfig", "FinedeficsSmolVLMForConditionalGeneration", "FinedeficsSmolVLMProcessor",
    "FinedeficsQwen2VLConfig", "FinedeficsQwen2VLForConditionalGeneration", "FinedeficsQwen2VLProcessor",
    "FinedeficsQwen2_5_VLConfig", "FinedeficsQwen2_5_VLForConditionalGeneration", "FinedeficsQwen2_5_VLProcessor",
    "FinedeficsLlavaConfig", "FinedeficsLlavaForConditionalGeneration", "FinedeficsLlavaProcessor",
]
