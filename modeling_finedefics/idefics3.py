"""Finedefics for Idefics3 and SmolVLM (the Idefics3 architecture under its own ``model_type``): the stock
classes plus the shared Finedefics mechanism.

Differences from the stock classes: pixels are ``(B, n_sub_images, 3, H, W)`` with a ``pixel_attention_mask``;
with image splitting, one image is a grid of sub-images plus the global image, and the processor writes the
``<fake_token_around_image>``, ``<row_i_col_j>`` and ``<global-img>`` tokens around each sub-image's
pixel-shuffled tokens; the decoder is ``model.text_model``. The summary token is the tokenizer's EOS.
SmolVLM's stock processor needs a video processor (torchvision) and ``num2words`` (video prompts): the
Finedefics SmolVLM processor is images-only and needs neither.
Ships inside every Finedefics-Idefics3/SmolVLM checkpoint; imports nothing from the rest of the repository.
"""

from __future__ import annotations

from transformers import (
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3Processor,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
    SmolVLMProcessor,
)
from transformers.processing_utils import ProcessorMixin

from .configuration_finedefics import FinedeficsAlignmentConfig
from .multimodal import FinedeficsMultimodalMixin, inherit_conversion_mapping
from .processing_finedefics import FinedeficsProcessorMixin


class FinedeficsIdefics3Config(FinedeficsAlignmentConfig, Idefics3Config):
    model_type = "finedefics_idefics3"


class FinedeficsSmolVLMConfig(FinedeficsAlignmentConfig, SmolVLMConfig):
    model_type = "finedefics_smolvlm"


class _FinedeficsIdefics3Mixin(FinedeficsMultimodalMixin):
    image_input_names = ("pixel_values", "pixel_attention_mask")
    pixel_values_dims = (5,)

    def _decoder(self):
        return self.model.text_model


class FinedeficsIdefics3ForConditionalGeneration(_FinedeficsIdefics3Mixin, Idefics3ForConditionalGeneration):
    config_class = FinedeficsIdefics3Config

    def __init__(self, config: FinedeficsIdefics3Config):
        super().__init__(config)
        self._add_alignment_modules(config)
        self.post_init()


class FinedeficsSmolVLMForConditionalGeneration(_FinedeficsIdefics3Mixin, SmolVLMForConditionalGeneration):
    config_class = FinedeficsSmolVLMConfig

    def __init__(self, config: FinedeficsSmolVLMConfig):
        super().__init__(config)
        self._add_alignment_modules(config)
        self.post_init()


class FinedeficsIdefics3Processor(FinedeficsProcessorMixin, Idefics3Processor):
    image_summary_prompt = "<image>"
    nested_images = True


class FinedeficsSmolVLMProcessor(FinedeficsProcessorMixin, SmolVLMProcessor):
    image_summary_prompt = "<image>"
    nested_images = True

    def __init__(self, image_processor, tokenizer, image_seq_len: int = 169, chat_template: str | None = None,
                 **kwargs):
        # Images only: SmolVLM's video processor needs torchvision and its video prompts num2words, neither of
        # which image recognition uses. SmolVLMProcessor.__init__ without the video processor and that check.
        self.fake_image_token = getattr(tokenizer, "fake_image_token", "<fake_token_around_image>")
        self.image_token = getattr(tokenizer, "image_token", "<image>")
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.end_of_utterance_token = getattr(tokenizer, "end_of_utterance_token", "<end_of_utterance>")
        self.global_image_token = getattr(tokenizer, "global_image_token", "<global-img>")
        self.image_seq_len = image_seq_len
        self.video_token = getattr(tokenizer, "video_token", "<video>")
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)

    def apply_chat_template(self, conversation, chat_template=None, **kwargs):
        # SmolVLMProcessor's override only adds the video processor's frame-sampling defaults (no video here).
        return ProcessorMixin.apply_chat_template(self, conversation, chat_template=chat_template, **kwargs)


inherit_conversion_mapping(FinedeficsIdefics3ForConditionalGeneration, Idefics3ForConditionalGeneration)
inherit_conversion_mapping(FinedeficsSmolVLMForConditionalGeneration, SmolVLMForConditionalGeneration)

__all__ = [
    "FinedeficsIdefics3Config", "FinedeficsIdefics3ForConditionalGeneration", "FinedeficsIdefics3Processor",
    "FinedeficsSmolVLMConfig", "FinedeficsSmolVLMForConditionalGeneration", "FinedeficsSmolVLMProcessor",
]
