"""Finedefics for LLaVA (1.5-style ``LlavaForConditionalGeneration``): the stock classes plus the shared
Finedefics mechanism.

Differences from the stock classes: pixels are ``(B, 3, H, W)``, one image per ``<image>`` placeholder, which
the processor expands to one token per patch (the CLS token dropped under the "default" feature strategy);
the vision tower is ``model.vision_tower``. The summary token is the tokenizer's EOS (``</s>``).
Ships inside every Finedefics-LLaVA checkpoint; imports nothing from the rest of the repository.
"""

from __future__ import annotations

from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

from .configuration_finedefics import FinedeficsAlignmentConfig
from .multimodal import FinedeficsMultimodalMixin, inherit_conversion_mapping
from .processing_finedefics import FinedeficsProcessorMixin


class FinedeficsLlavaConfig(FinedeficsAlignmentConfig, LlavaConfig):
    model_type = "finedefics_llava"


class FinedeficsLlavaForConditionalGeneration(FinedeficsMultimodalMixin, LlavaForConditionalGeneration):
    config_class = FinedeficsLlavaConfig
    image_input_names = ("pixel_values", "image_sizes")
    pixel_values_dims = (4,)

    def __init__(self, config: FinedeficsLlavaConfig):
        super().__init__(config)
        self._add_alignment_modules(config)
        self.post_init()

    def _vision_tower(self):
        return self.model.vision_tower


class FinedeficsLlavaProcessor(FinedeficsProcessorMixin, LlavaProcessor):
    image_summary_prompt = "<image>"


inherit_conversion_mapping(FinedeficsLlavaConfig.model_type, LlavaConfig.model_type)

__all__ = ["FinedeficsLlavaConfig", "FinedeficsLlavaForConditionalGeneration", "FinedeficsLlavaProcessor"]
