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

    # transformers saves a stock LLaVA's LM head as ``language_model.lm_head`` and its conversion table maps it
    # back only for the stock class itself (a subclass, even an empty one, loses it): name the rename here.
    stock_key_mapping = {r"^language_model\.lm_head": "lm_head"}

    def __init__(self, config: FinedeficsLlavaConfig):
        super().__init__(config)
        self._add_alignment_modules(config)
        self.post_init()

    def _vision_tower(self):
        return self.model.vision_tower


class FinedeficsLlavaProcessor(FinedeficsProcessorMixin, LlavaProcessor):
    image_summary_prompt = "<image>"


inherit_conversion_mapping(FinedeficsLlavaForConditionalGeneration, LlavaForConditionalGeneration)

__all__ = ["FinedeficsLlavaConfig", "FinedeficsLlavaForConditionalGeneration", "FinedeficsLlavaProcessor"]
