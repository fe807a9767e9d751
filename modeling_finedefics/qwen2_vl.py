"""Finedefics for Qwen2-VL and Qwen2.5-VL: the stock classes plus the shared Finedefics mechanism.

Differences from the stock classes: pixels come as flattened patches ``(n_patches, C * T * P * P)`` with
``image_grid_thw`` (a variable number of image tokens per image); a summary row built inside ``forward``
needs ``mm_token_type_ids`` (1 at image tokens) for the 3-D rotary positions; the vision tower is
``model.visual``. The summary token is the tokenizer's EOS (``<|im_end|>`` for the instruct checkpoints).
Ships inside every Finedefics-Qwen checkpoint; imports nothing from the rest of the repository.
"""

from __future__ import annotations

import torch
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLProcessor,
)
from transformers.processing_utils import ProcessorMixin

from .configuration_finedefics import FinedeficsAlignmentConfig
from .multimodal import FinedeficsMultimodalMixin, inherit_conversion_mapping
from .processing_finedefics import FinedeficsProcessorMixin


class FinedeficsQwen2VLConfig(FinedeficsAlignmentConfig, Qwen2VLConfig):
    model_type = "finedefics_qwen2_vl"


class FinedeficsQwen2_5_VLConfig(FinedeficsAlignmentConfig, Qwen2_5_VLConfig):
    model_type = "finedefics_qwen2_5_vl"


class _FinedeficsQwenMixin(FinedeficsMultimodalMixin):
    image_input_names = ("pixel_values", "image_grid_thw")
    pixel_values_dims = (2,)

    def _vision_tower(self):
        return self.model.visual

    def _vision_input_embeddings(self):
        return self.model.visual.patch_embed

    def _summary_row_inputs(self, summary_input_ids: torch.Tensor) -> dict:
        # What the processor returns beside the ids: 1 at image tokens (mrope needs it to place the image grid).
        return {"mm_token_type_ids": (summary_input_ids == self.config.image_token_id).to(torch.int32)}


class FinedeficsQwen2VLForConditionalGeneration(_FinedeficsQwenMixin, Qwen2VLForConditionalGeneration):
    config_class = FinedeficsQwen2VLConfig

    def __init__(self, config: FinedeficsQwen2VLConfig):
        super().__init__(config)
        self._add_alignment_modules(config)
        self.post_init()


class FinedeficsQwen2_5_VLForConditionalGeneration(_FinedeficsQwenMixin, Qwen2_5_VLForConditionalGeneration):
    config_class = FinedeficsQwen2_5_VLConfig

    def __init__(self, config: FinedeficsQwen2_5_VLConfig):
        super().__init__(config)
        self._add_alignment_modules(config)
        self.post_init()


class _FinedeficsQwenProcessorMixin(FinedeficsProcessorMixin):
    """Images only: the stock processors require a video processor, which needs torchvision; image recognition
    uses none. Prompts, image expansion and the chat template are the stock processor's."""

    image_summary_prompt = "<|vision_start|><|image_pad|><|vision_end|>"

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        kwargs.pop("video_processor", None)
        self.image_token = getattr(tokenizer, "image_token", "<|image_pad|>")
        self.video_token = getattr(tokenizer, "video_token", "<|video_pad|>")
        convert = tokenizer.convert_tokens_to_ids
        self.image_token_id = getattr(tokenizer, "image_token_id", None) or convert(self.image_token)
        self.video_token_id = getattr(tokenizer, "video_token_id", None) or convert(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


class FinedeficsQwen2VLProcessor(_FinedeficsQwenProcessorMixin, Qwen2VLProcessor):
    pass


class FinedeficsQwen2_5_VLProcessor(_FinedeficsQwenProcessorMixin, Qwen2_5_VLProcessor):
    pass


inherit_conversion_mapping(FinedeficsQwen2VLForConditionalGeneration, Qwen2VLForConditionalGeneration)
inherit_conversion_mapping(FinedeficsQwen2_5_VLForConditionalGeneration, Qwen2_5_VLForConditionalGeneration)

__all__ = [
    "FinedeficsQwen2VLConfig", "FinedeficsQwen2VLForConditionalGeneration", "FinedeficsQwen2VLProcessor",
    "FinedeficsQwen2_5_VLConfig", "FinedeficsQwen2_5_VLForConditionalGeneration", "FinedeficsQwen2_5_VLProcessor",
]
