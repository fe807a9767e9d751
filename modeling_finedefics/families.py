"""The registry of Finedefics model families, for the rest of the package (converter, training, evaluation).

    from modeling_finedefics.families import FAMILIES, family_for_model_type
    family = family_for_model_type("qwen2_vl")         # a stock or a Finedefics model_type
    family.config, family.model, family.processor       # Finedefics classes
    family.stock_config, family.stock_model             # the stock transformers classes
    model, processor = family.build_tiny()               # tiny random model + processor, offline

Not shipped inside checkpoints (nothing there imports it).
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import (
    Idefics2Config,
    Idefics2ForConditionalGeneration,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    LlavaConfig,
    LlavaForConditionalGeneration,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
)

from . import idefics3, llava, qwen2_vl
from .configuration_finedefics import FinedeficsConfig
from .modeling_finedefics import FinedeficsForConditionalGeneration
from .processing_finedefics import FinedeficsProcessor


@dataclass(frozen=True)
class Family:
    name: str
    stock_config: type
    stock_model: type
    config: type
    model: type
    processor: type
    code_module: str  # the module file (besides the three shared ones) a checkpoint of this family ships
    pixel_inputs: tuple[str, ...]  # the model inputs that carry its images, besides input_ids / attention_mask

    @property
    def stock_model_type(self) -> str:
        return self.stock_config.model_type

    @property
    def model_type(self) -> str:
        return self.config.model_type

    def build_tiny(self, corpus: list[str] | None = None, seed: int = 0, stock: bool = False, **overrides):
        from .tiny_families import build_tiny

        return build_tiny(self.name, corpus, seed=seed, stock=stock, **overrides)


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family("idefics2", Idefics2Config, Idefics2ForConditionalGeneration, FinedeficsConfig,
               FinedeficsForConditionalGeneration, FinedeficsProcessor, "modeling_finedefics",
               ("pixel_values", "pixel_attention_mask")),
        Family("idefics3", Idefics3Config, Idefics3ForConditionalGeneration, idefics3.FinedeficsIdefics3Config,
               idefics3.FinedeficsIdefics3ForConditionalGeneration, idefics3.FinedeficsIdefics3Processor, "idefics3",
               ("pixel_values", "pixel_attention_mask")),
        Family("smolvlm", SmolVLMConfig, SmolVLMForConditionalGeneration, idefics3.FinedeficsSmolVLMConfig,
               idefics3.FinedeficsSmolVLMForConditionalGeneration, idefics3.FinedeficsSmolVLMProcessor, "idefics3",
               ("pixel_values", "pixel_attention_mask")),
        Family("qwen2_vl", Qwen2VLConfig, Qwen2VLForConditionalGeneration, qwen2_vl.FinedeficsQwen2VLConfig,
               qwen2_vl.FinedeficsQwen2VLForConditionalGeneration, qwen2_vl.FinedeficsQwen2VLProcessor, "qwen2_vl",
               ("pixel_values", "image_grid_thw", "mm_token_type_ids")),
        Family("qwen2_5_vl", Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, qwen2_vl.FinedeficsQwen2_5_VLConfig,
               qwen2_vl.FinedeficsQwen2_5_VLForConditionalGeneration, qwen2_vl.FinedeficsQwen2_5_VLProcessor,
               "qwen2_vl", ("pixel_values", "image_grid_thw", "mm_token_type_ids")),
        Family("llava", LlavaConfig, LlavaForConditionalGeneration, llava.FinedeficsLlavaConfig,
               llava.FinedeficsLlavaForConditionalGeneration, llava.FinedeficsLlavaProcessor, "llava",
               ("pixel_values",)),
    )
}


def family_for_model_type(model_type: str) -> Family:
    """The family of a stock ("qwen2_vl") or Finedefics ("finedefics_qwen2_vl", "finedefics") model_type."""
    for family in FAMILIES.values():
        if model_type in (family.stock_model_type, family.model_type):
            return family
    known = sorted({f.stock_model_type for f in FAMILIES.values()} | {f.model_type for f in FAMILIES.values()})
    raise ValueError(f"no Finedefics family for model_type {model_type!r}; supported: {', '.join(known)}")


def family_of(model) -> Family:
    """The family of a model, PEFT-wrapped or not: by its config's ``model_type`` (Finedefics or stock), else by
    its class (a stock Idefics2 config converted in memory carries no ``model_type`` of its own)."""
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    model_type = getattr(model.config, "model_type", None)
    if model_type:
        return family_for_model_type(model_type)
    for family in FAMILIES.values():
        if isinstance(model, family.model):
            return family
    raise ValueError(f"{type(model).__name__} is not a model of any Finedefics family")


def finedefics_config_class(model_type: str) -> type:
    """The Finedefics config class for a stock or Finedefics model_type (what the converter needs)."""
    return family_for_model_type(model_type).config


__all__ = ["FAMILIES", "Family", "family_for_model_type", "family_of", "finedefics_config_class"]
