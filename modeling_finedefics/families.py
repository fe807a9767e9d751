"""The registry of Finedefics model families, for the rest of the package (converter, training, evaluation).

    from modeling_finedefics.families import FAMILIES, family_for_model_type
    family = family_for_model_type("qwen2_vl")         # a stock or a Finedefics model_type
    family.config, family.model, family.processor       # Finedefics classes
    family.stock_config, family.stock_model             # the stock transformers classes
    model, processor = family.build_tiny()               # tiny random model + processor, offline

A family is a ``Family`` (or a subclass saying how the family differs) holding its classes and everything the
rest of the package asks about it: the files its checkpoints ship, its LoRA targets, the published configs the
dry run knows, how its processor turns an image into tokens, which module is its image projector. Nothing
outside this package branches on a family's name: it asks the family. Adding a family is its model file (as
``llava.py``) and one ``register_family(...)`` below, as transformers' ``modular_*.py`` files and
``auto/*_mapping`` tables add a model.

Not shipped inside checkpoints (nothing there imports it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    AutoProcessor,
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
from .modeling_finedefics import FinedeficsConnector, FinedeficsForConditionalGeneration
from .processing_finedefics import FinedeficsProcessor

# The module files every Finedefics checkpoint ships: what every family's classes build on.
SHARED_CODE_FILES = ("configuration_finedefics.py", "processing_finedefics.py", "alignment.py")
# The decoder's attention and MLP projections (Llama / Qwen2 / Mistral names), anchored at the decoder: the vision
# towers use some of the same names (SigLIP's and CLIP's q_proj / k_proj / v_proj, Qwen2.5-VL's vision gate_proj /
# up_proj / down_proj), and neither the tower nor the projector (Idefics3's modality projection, Qwen's patch
# merger, LLaVA's multi_modal_projector) is matched: they stay frozen.
DECODER_LORA_TARGETS = (r"model\.{decoder}\.layers\.\d+\.(self_attn|mlp)\."
                        r"(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)")
# Idefics2 (the paper's recipe): the text model's projections, the modality projection and the perceiver
# resampler; the vision tower is not matched, so it stays frozen.
IDEFICS2_LORA_TARGETS = r"model\.(text_model|connector)\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
SPLIT_SUB_IMAGES = 5  # Idefics2's image splitting: four crops and the whole image
PLAN_IMAGE_SIDE = 448  # Qwen keeps images near their own size: the side the dry run assumes a step's images have


@dataclass(frozen=True)
class ImagePlan:
    """How one image of a training step reaches the decoder, as the dry run assumes it (see ``plan_images``)."""

    sub_images: int
    patches: int        # vision tokens per sub-image
    image_tokens: int   # decoder tokens per sub-image
    note: str           # the assumption, in words, for the printed plan
    embedding_note: str  # what the embedding pass's rows are, in words


@dataclass(frozen=True)
class ProjectorProbe:
    """The image projector (connector) of a model and how to feed it ``patches`` vision tokens of one image,
    for the dry run's activation count: ``inputs(patches, dtype, requires_grad) -> (args, kwargs)``."""

    module: torch.nn.Module
    sizes: tuple[int, ...]
    inputs: Callable[[int, torch.dtype, bool], tuple[tuple, dict]]


@dataclass(frozen=True)
class Family:
    """A model family: its classes and what the converter, training, dry run and evaluation need to know.

    The defaults describe a family whose base model merges images itself (``multimodal.py``) with a one-image,
    one-token-per-patch processor and a ``multi_modal_projector`` (LLaVA's); subclasses below say how the
    others differ.
    """

    name: str
    stock_config: type
    stock_model: type
    config: type
    model: type
    processor: type
    code_module: str  # the family's own module file a checkpoint ships, besides the shared ones
    lora_targets: str = DECODER_LORA_TARGETS.format(decoder="language_model")  # the recipe's default regex
    # Hub ids of published checkpoints -> their config written out in finedefics_training/model_configs/, so the
    # dry run plans them without a download (model_configs/README.md)
    shipped_configs: Mapping[str, str] = field(default_factory=dict, hash=False)
    mrope: bool = False  # 3-D rotary positions: the model computes its own prompt positions from image_grid_thw
    tiny_layout: str = ""  # which tiny builder of tiny_families.py makes its tiny model (default: its name)

    # What only Idefics2 does (its subclass sets them).
    shares_image_features = False  # evaluation encodes a batch's images once for every prompt (fixed image tokens)
    sized_tiny = False  # its tiny model takes a preset, image size, vocabulary size and image_seq_len
    has_perceiver_resampler = False  # what the demo's attribute pre-training (training/demo/base.py) was written for
    stock_key_prefixes = ()  # the key prefixes of a stock checkpoint; others are reported unmapped (empty: keep all)
    has_release_checkpoint = False  # the official Finedefics release (its own key names) is of this family
    plans_trained_vision_tower = True  # the dry run can count a trained vision tower's activations
    # A tensor name only this family's weights (and its siblings') hold, whatever the prefix: how a config of one
    # family over weights of another is caught. Families are tried in registration order (Idefics2 first: it also
    # holds Idefics3's "modality_projection").
    weight_signature = "multi_modal_projector"

    @property
    def stock_model_type(self) -> str:
        return self.stock_config.model_type

    @property
    def model_type(self) -> str:
        return self.config.model_type

    @property
    def stock_label(self) -> str:
        """What the converter calls the tensors it keeps from a stock checkpoint of this family."""
        return f"stock {self.name}"

    @property
    def code_files(self) -> tuple[str, ...]:
        """The module files a checkpoint of this family ships for ``trust_remote_code``: the files its classes
        import (``save_pretrained`` copies the same ones, following their relative imports)."""
        return SHARED_CODE_FILES + ("multimodal.py", f"{self.code_module}.py")

    # ------------------------------------------------------------------ loading
    def load_processor(self, path: str, trust_remote_code: bool = False):
        """The family's Finedefics processor for a stock or Finedefics checkpoint: the Finedefics class takes the
        stock tokenizer and image processor files (the stock processors may need torchvision for video)."""
        return self.processor.from_pretrained(path, trust_remote_code=trust_remote_code)

    def finedefics_config(self, stock_config, summary_token_id: int | None):
        """A stock config as this family's Finedefics config, with default alignment settings (fresh temperatures)."""
        values = stock_config.to_dict()
        for key in ("model_type", "auto_map", "architectures", "transformers_version"):
            values.pop(key, None)  # as the converter writes it (training/convert.py)
        finedefics = self.config(**values, summary_token_id=summary_token_id)
        finedefics.architectures = [self.model.__name__]
        return finedefics

    # ------------------------------------------------------- stock export
    @property
    def stock_processor(self) -> type:
        """The stock transformers processor class the family's Finedefics processor builds on."""
        return next(cls for cls in self.processor.__mro__[1:]
                    if cls.__module__.startswith("transformers.models.") and cls.__name__.endswith("Processor"))

    def stock_config_of(self, config) -> tuple[object, dict]:
        """``(stock config, left-out settings)``: the inverse of ``finedefics_config``. The alignment settings
        (``FinedeficsAlignmentConfig``'s fields) have no place in the stock class and are returned by name."""
        values = config.to_dict()
        left_out = {name: values.pop(name) for name in alignment_config_fields() if name in values}
        for key in ("model_type", "auto_map", "architectures", "transformers_version"):
            values.pop(key, None)
        stock = self.stock_config(**values)
        stock.architectures = [self.stock_model.__name__]
        return stock, left_out

    # ---------------------------------------------------------------- tiny models
    def build_tiny(self, corpus: list[str] | None = None, seed: int = 0, stock: bool = False, **overrides):
        from .tiny_families import build_tiny

        return build_tiny(self, corpus, seed=seed, stock=stock, **overrides)

    def build_tiny_for_data(self, corpus: list[str], seed: int = 0, preset: str | None = None,
                            image_size: int | None = None, vocab_size: int | None = None,
                            image_seq_len: int | None = None):
        """``(model, processor, preset)`` of the tiny model ``finedefics init-model`` writes: one size here."""
        fixed = {"preset": preset if preset not in (None, "micro") else None, "image_size": image_size,
                 "vocab_size": vocab_size, "image_seq_len": image_seq_len}
        given = [name for name, value in fixed.items() if value is not None]
        if given:
            raise ValueError(f"the tiny {self.name} model has one size (~1M parameters, preset micro) and fixes its "
                             f"image and vocabulary sizes; {', '.join(given)} apply to the idefics2 family only")
        model, processor = self.build_tiny(corpus=corpus, seed=seed)
        return model, processor, "micro"

    # -------------------------------------------------------------- the dry run
    def plan_images(self, config, numbers: dict) -> ImagePlan:
        """One image of a step as the processor makes it: one image, one token per patch (CLS dropped)."""
        side = config.vision_config.image_size
        patches = (side // config.vision_config.patch_size) ** 2
        return self._plan(1, patches, patches, f"one {side} px image, {patches} patch tokens (the CLS token dropped)")

    def _plan(self, sub_images: int, patches: int, image_tokens: int, image_note: str) -> ImagePlan:
        return ImagePlan(sub_images, patches, image_tokens, f"{self.name}: {image_note}",
                         "and one image-summary row per image (its image tokens and the summary token)")

    def projector_probe(self, core, config) -> ProjectorProbe:
        """The image projector (LLaVA's two-layer MLP) fed ``(1, patches, hidden)`` vision features."""
        return _features_probe(core.model.multi_modal_projector, (16, 32, 64), config.vision_config.hidden_size)

    def connector_checkpoint_chunk(self, sub_images: int, patches: int) -> int | None:
        """Sub-images per checkpointed chunk of the connector under activation checkpointing (None: unchunked)."""
        return None


def alignment_config_fields() -> tuple[str, ...]:
    """The settings every Finedefics config adds to its stock one (temperatures, heads, summary token, nouns)."""
    from .configuration_finedefics import FinedeficsAlignmentConfig

    return tuple(FinedeficsAlignmentConfig.__annotations__)


def _features_probe(module, sizes, hidden: int) -> ProjectorProbe:
    def inputs(patches, dtype, requires_grad):
        return (torch.randn(1, patches, hidden, dtype=dtype, requires_grad=requires_grad),), {}

    return ProjectorProbe(module, tuple(sizes), inputs)


@dataclass(frozen=True)
class Idefics2Family(Family):
    """Idefics2, the paper's model: its classes are the shared files themselves, a perceiver resampler gives a fixed
    number of image tokens, and the official Finedefics release is a checkpoint of it."""

    lora_targets: str = IDEFICS2_LORA_TARGETS
    shares_image_features = True
    sized_tiny = True
    has_perceiver_resampler = True
    weight_signature = "perceiver_resampler"
    stock_key_prefixes = ("model.vision_model.", "model.connector.", "model.text_model.", "lm_head.")
    has_release_checkpoint = True

    @property
    def stock_label(self) -> str:
        return "Idefics2"

    @property
    def code_files(self) -> tuple[str, ...]:
        return SHARED_CODE_FILES + (f"{self.code_module}.py",)

    def load_processor(self, path: str, trust_remote_code: bool = False):
        """``AutoProcessor``, re-wrapped as ``FinedeficsProcessor`` when stock."""
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        if not isinstance(processor, FinedeficsProcessor):
            processor = FinedeficsProcessor(
                image_processor=processor.image_processor, tokenizer=processor.tokenizer,
                image_seq_len=processor.image_seq_len, chat_template=processor.chat_template,
            )
        return processor

    def finedefics_config(self, stock_config, summary_token_id: int | None):
        return FinedeficsConfig(**{**stock_config.to_dict(), "model_type": None, "summary_token_id": summary_token_id})

    def build_tiny_for_data(self, corpus: list[str], seed: int = 0, preset: str | None = None,
                            image_size: int | None = None, vocab_size: int | None = None,
                            image_seq_len: int | None = None):
        from .tiny import build_tiny_model, build_tiny_processor, build_tiny_tokenizer

        preset = preset or "tiny"
        processor = build_tiny_processor(build_tiny_tokenizer(corpus, vocab_size=vocab_size or 2048),
                                         image_size=image_size or 64, image_seq_len=image_seq_len or 8)
        return build_tiny_model(processor, preset=preset, seed=seed), processor, preset

    def plan_images(self, config, numbers: dict) -> ImagePlan:
        vision = config.vision_config
        side = min(numbers.get("longest_edge") or vision.image_size, vision.image_size)
        patches = (side // vision.patch_size) ** 2
        sub_images = SPLIT_SUB_IMAGES if numbers.get("do_image_splitting") else 1
        note = (f"sub-images are padded to the batch's largest, {side} px ({patches} patch positions each, all of "
                "which the vision tower and connector process)"
                f"{'; image splitting gives 5 sub-images per image' if sub_images > 1 else ''}")
        image_tokens = numbers.get("image_seq_len") or config.perceiver_config.resampler_n_latents
        return ImagePlan(sub_images, patches, image_tokens, note,
                         "(description, name and each negative's description and name, before de-duplication)")

    def projector_probe(self, core, config) -> ProjectorProbe:
        """The connector (modality projection + perceiver resampler), with its patch attention mask."""
        hidden = config.vision_config.hidden_size

        def inputs(patches, dtype, requires_grad):
            features = torch.randn(1, patches, hidden, dtype=dtype, requires_grad=requires_grad)
            return (features,), {"attention_mask": torch.ones(1, patches, dtype=torch.long)}

        return ProjectorProbe(core.model.connector, (16, 32, 64), inputs)

    def connector_checkpoint_chunk(self, sub_images: int, patches: int) -> int | None:
        return FinedeficsConnector.sub_images_per_checkpoint(sub_images, patches)


@dataclass(frozen=True)
class Idefics3Family(Family):
    """Idefics3 and SmolVLM: image splitting into a grid of sub-images plus the global image, and pixel shuffle."""

    lora_targets: str = DECODER_LORA_TARGETS.format(decoder="text_model")
    weight_signature = "modality_projection"

    def plan_images(self, config, numbers: dict) -> ImagePlan:
        vision = config.vision_config
        side = vision.image_size
        patches = (side // vision.patch_size) ** 2
        image_tokens = patches // config.scale_factor**2
        splitting = numbers.get("do_image_splitting") or numbers.get("splitting")
        longest = numbers.get("longest_edge") if numbers.get("max_image_size") else None
        longest = longest or numbers.get("split_longest_edge")
        grid = (longest or side) // (numbers.get("max_image_size") or side)
        sub_images = grid * grid + 1 if splitting and grid > 1 else 1
        note = (f"images split into at most {grid}x{grid} sub-images of {side} px plus the global image "
                f"({sub_images} per image), {patches} patches and {image_tokens} tokens (pixel shuffle "
                f"{config.scale_factor}) each" if sub_images > 1 else
                f"one {side} px image, {patches} patches, {image_tokens} tokens (pixel shuffle)")
        return self._plan(sub_images, patches, image_tokens, note)

    def projector_probe(self, core, config) -> ProjectorProbe:
        """The connector: pixel shuffle + linear, so the patch count is a square of a multiple of the scale."""
        sizes = [(config.scale_factor * k) ** 2 for k in (2, 3, 4)]
        return _features_probe(core.model.connector, sizes, config.vision_config.hidden_size)


@dataclass(frozen=True)
class QwenVLFamily(Family):
    """Qwen2-VL and Qwen2.5-VL: images near their own size, 2x2 patch merge, 3-D rotary positions (mrope)."""

    mrope: bool = True
    weight_signature = "visual.merger"
    # Its vision blocks take packed patches with cu_seqlens and 2-D rotary positions, which the dry run's
    # one-layer probe does not build.
    plans_trained_vision_tower = False

    def plan_images(self, config, numbers: dict) -> ImagePlan:
        vision = config.vision_config
        unit = vision.patch_size * vision.spatial_merge_size
        max_side = int((numbers.get("max_pixels") or PLAN_IMAGE_SIDE**2) ** 0.5)
        side = max(unit, min(numbers.get("plan_image_side") or PLAN_IMAGE_SIDE, max_side) // unit * unit)
        patches = (side // vision.patch_size) ** 2
        image_tokens = patches // vision.spatial_merge_size**2
        note = (f"images of {side}x{side} px (Qwen keeps each image near its own size: an assumption), "
                f"{patches} patches, {image_tokens} tokens after the 2x2 merge")
        return self._plan(1, patches, image_tokens, note)

    def projector_probe(self, core, config) -> ProjectorProbe:
        """The patch merger, fed flat ``(patches, embed_dim)`` patch features (4 per token)."""
        width = getattr(config.vision_config, "embed_dim", None) or config.vision_config.hidden_size

        def inputs(patches, dtype, requires_grad):
            return (torch.randn(patches, width, dtype=dtype, requires_grad=requires_grad),), {}

        return ProjectorProbe(core.model.visual.merger, (16, 32, 64), inputs)


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Add ``family`` to ``FAMILIES`` and register its classes with the transformers Auto classes, marked for
    ``register_for_auto_class`` so that ``save_pretrained`` writes ``auto_map`` and copies the code files."""
    if family.name in FAMILIES:
        raise ValueError(f"a model family named {family.name!r} is registered already")
    AutoConfig.register(family.model_type, family.config, exist_ok=True)
    AutoModelForImageTextToText.register(family.config, family.model, exist_ok=True)
    AutoProcessor.register(family.config, family.processor, exist_ok=True)
    family.config.register_for_auto_class()
    family.model.register_for_auto_class("AutoModelForImageTextToText")
    family.processor.register_for_auto_class()
    FAMILIES[family.name] = family
    return family


def unregister_family(name: str) -> Family:
    """Take a family out of ``FAMILIES`` (a test's throwaway family); its Auto registrations stay, unused."""
    return FAMILIES.pop(name)


register_family(Idefics2Family(
    "idefics2", Idefics2Config, Idefics2ForConditionalGeneration, FinedeficsConfig,
    FinedeficsForConditionalGeneration, FinedeficsProcessor, "modeling_finedefics",
    shipped_configs={"HuggingFaceM4/idefics2-8b": "idefics2-8b.json"}))
register_family(Idefics3Family(
    "idefics3", Idefics3Config, Idefics3ForConditionalGeneration, idefics3.FinedeficsIdefics3Config,
    idefics3.FinedeficsIdefics3ForConditionalGeneration, idefics3.FinedeficsIdefics3Processor, "idefics3"))
register_family(Idefics3Family(  # SmolLM2 (Llama) decoder
    "smolvlm", SmolVLMConfig, SmolVLMForConditionalGeneration, idefics3.FinedeficsSmolVLMConfig,
    idefics3.FinedeficsSmolVLMForConditionalGeneration, idefics3.FinedeficsSmolVLMProcessor, "idefics3",
    shipped_configs={"HuggingFaceTB/SmolVLM-Instruct": "smolvlm-instruct.json"}))
register_family(QwenVLFamily(
    "qwen2_vl", Qwen2VLConfig, Qwen2VLForConditionalGeneration, qwen2_vl.FinedeficsQwen2VLConfig,
    qwen2_vl.FinedeficsQwen2VLForConditionalGeneration, qwen2_vl.FinedeficsQwen2VLProcessor, "qwen2_vl"))
register_family(QwenVLFamily(
    "qwen2_5_vl", Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, qwen2_vl.FinedeficsQwen2_5_VLConfig,
    qwen2_vl.FinedeficsQwen2_5_VLForConditionalGeneration, qwen2_vl.FinedeficsQwen2_5_VLProcessor, "qwen2_vl",
    shipped_configs={"Qwen/Qwen2.5-VL-7B-Instruct": "qwen2.5-vl-7b-instruct.json"}))
register_family(Family(  # Llama 2 (Vicuna) decoder
    "llava", LlavaConfig, LlavaForConditionalGeneration, llava.FinedeficsLlavaConfig,
    llava.FinedeficsLlavaForConditionalGeneration, llava.FinedeficsLlavaProcessor, "llava",
    shipped_configs={"llava-hf/llava-1.5-7b-hf": "llava-1.5-7b.json"}))


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


def family_of_config(config) -> Family:
    """The family of a Finedefics config, by its class (a stock Idefics2 config converted by
    ``Family.finedefics_config`` carries no ``model_type`` of its own), else by its ``model_type``."""
    for family in FAMILIES.values():
        if type(config) is family.config:
            return family
    return family_for_model_type(config.model_type)


def finedefics_config_class(model_type: str) -> type:
    """The Finedefics config class for a stock or Finedefics model_type (what the converter needs)."""
    return family_for_model_type(model_type).config


__all__ = ["FAMILIES", "Family", "ImagePlan", "ProjectorProbe", "alignment_config_fields", "family_for_model_type",
           "family_of", "family_of_config", "finedefics_config_class", "register_family", "unregister_family"]
