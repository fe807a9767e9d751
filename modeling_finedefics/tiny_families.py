"""Tiny random models of every Finedefics family, with their processors and offline-trained tokenizers.

    from modeling_finedefics.families import FAMILIES
    model, processor = FAMILIES["qwen2_vl"].build_tiny()               # Finedefics classes
    stock, stock_processor = FAMILIES["llava"].build_tiny(stock=True)  # the stock transformers classes, same weights

Each family gets a byte-level BPE tokenizer trained with ``tokenizers`` on a few prompts (no download),
with that family's special tokens and a chat template in the family's style, its stock image processor
(the PIL variant: no torchvision) at 32-64 px, and a ~1M-parameter config. ``stock=True`` builds the stock
classes from the same config and seed, so the stock and Finedefics models share every stock weight.
Idefics2 goes through ``tiny.py`` (``build_tiny_processor`` / ``build_tiny_model``), unchanged.
The builders take the ``Family`` (``families.py``) and build its classes; this module does not import the
registry, which imports it.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    LlavaImageProcessorPil,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    Qwen2VLImageProcessorPil,
    SmolVLMImageProcessorPil,
)

from .idefics3 import FinedeficsSmolVLMProcessor
from .tiny import BASE_CORPUS

ROW_COL_TOKENS = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]

_IDEFICS3_STYLE_TEMPLATE = (
    "{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
CHAT_TEMPLATES = {
    # HuggingFaceM4/Idefics3-8B-Llama3 and SmolVLM-Instruct: Idefics2's template after a BOS-like prefix.
    "idefics3": "<|begin_of_text|>" + _IDEFICS3_STYLE_TEMPLATE,
    "smolvlm": "<|im_start|>" + _IDEFICS3_STYLE_TEMPLATE,
    # Qwen2-VL-Instruct's template (images only).
    "qwen2_vl": (
        "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
        "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
        "{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' %}"
        "<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'text' %}{{ content['text'] }}"
        "{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
    # llava-hf/llava-1.5-7b-hf's template: "USER: <image>\n... ASSISTANT:".
    "llava": (
        "{% for message in messages %}"
        "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
        "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
        "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
        "{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
    ),
}
CHAT_TEMPLATES["qwen2_5_vl"] = CHAT_TEMPLATES["qwen2_vl"]

# bos / eos / pad / unk and the extra special tokens of each family's real tokenizer.
TOKENS = {
    "idefics3": dict(bos="<|begin_of_text|>", eos="<|end_of_text|>", pad="<pad>", unk="<unk>",
                     extra=["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>",
                            *ROW_COL_TOKENS]),
    "smolvlm": dict(bos="<|im_start|>", eos="<end_of_utterance>", pad="<|im_end|>", unk="<unk>",
                    extra=["<fake_token_around_image>", "<image>", "<global-img>", *ROW_COL_TOKENS]),
    "qwen2_vl": dict(bos=None, eos="<|im_end|>", pad="<|endoftext|>", unk=None,
                     extra=["<|im_start|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]),
    "llava": dict(bos="<s>", eos="</s>", pad="<pad>", unk="<unk>", extra=["<image>"]),
}
TOKENS["qwen2_5_vl"] = TOKENS["qwen2_vl"]


def build_family_tokenizer(family: str, corpus: list[str] | None = None, vocab_size: int = 1024,
                           model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained offline on ``corpus`` plus prompt words, with ``family``'s special tokens."""
    spec = TOKENS[family]
    named = [spec[key] for key in ("unk", "bos", "eos", "pad") if spec[key] is not None]
    specials = list(dict.fromkeys(named + spec["extra"]))
    backend = Tokenizer(models.BPE(unk_token=spec["unk"]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(list(BASE_CORPUS) + list(corpus or []), trainer=trainer)
    if spec["bos"] is not None:
        bos_id = backend.token_to_id(spec["bos"])
        backend.post_processor = processors.TemplateProcessing(
            single=f"{spec['bos']} $A", pair=f"{spec['bos']} $A {spec['bos']} $B",
            special_tokens=[(spec["bos"], bos_id)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=spec["bos"], eos_token=spec["eos"], unk_token=spec["unk"],
        pad_token=spec["pad"], model_max_length=model_max_length,
        extra_special_tokens=[token for token in spec["extra"] if token not in named],
    )
    tokenizer.chat_template = CHAT_TEMPLATES[family]
    tokenizer.padding_side = "left"  # batched generation; tokenize_texts and image_embedding_inputs choose their own
    return tokenizer


def _text_config(tokenizer, model_type: str, hidden: int = 64, **extra) -> dict:
    return dict(model_type=model_type, vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4,
                max_position_embeddings=tokenizer.model_max_length, pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, rms_norm_eps=1e-5, **extra)


def _idefics3_like(family, layout, tokenizer, stock):
    image_size, patch, scale = 32, 8, 2
    seq_len = (image_size // patch) ** 2 // scale**2
    image_processor_class = Idefics3ImageProcessorPil if layout == "idefics3" else SmolVLMImageProcessorPil
    # Splitting on: an image up to 64 px is cut into up to 2x2 sub-images of 32 px plus the global image.
    image_processor = image_processor_class(
        do_image_splitting=True, size={"longest_edge": 2 * image_size}, max_image_size={"longest_edge": image_size})
    config = dict(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=image_size, patch_size=patch),
        text_config=_text_config(tokenizer, "llama"), scale_factor=scale,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), pad_token_id=tokenizer.pad_token_id,
    )
    if layout == "idefics3":
        processor_class = Idefics3Processor if stock else family.processor
    else:  # the stock SmolVLMProcessor needs torchvision and num2words: the images-only Finedefics one (same prompts)
        processor_class = FinedeficsSmolVLMProcessor if stock else family.processor
    processor = processor_class(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=seq_len,
                                chat_template=CHAT_TEMPLATES[layout])
    return config, processor


def _qwen_like(family, layout, tokenizer, stock):
    patch, merge = 8, 2
    # 2x2 to 4x4 merged tokens per image, following its size and aspect ratio (as the real processor does).
    image_processor = Qwen2VLImageProcessorPil(patch_size=patch, merge_size=merge, temporal_patch_size=2,
                                               min_pixels=16 * 16, max_pixels=64 * 64)
    image_processor.size = {"shortest_edge": 16 * 16, "longest_edge": 64 * 64}
    vision = dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, patch_size=patch, spatial_merge_size=merge,
                  temporal_patch_size=2, in_channels=3)
    text = _text_config(tokenizer, layout + "_text", rope_parameters={
        "rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
    if layout == "qwen2_vl":
        vision.update(mlp_ratio=2)
    else:
        vision.update(intermediate_size=64, out_hidden_size=64, window_size=2 * patch * merge,
                      fullatt_block_indexes=[0])
        vision.pop("embed_dim")
        vision["hidden_size"] = 32
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    config = dict(vision_config=vision, text_config=text, **ids)
    # The stock Qwen processors need a video processor (torchvision): the images-only Finedefics one, same prompts.
    processor = family.processor(image_processor=image_processor, tokenizer=tokenizer,
                                 chat_template=CHAT_TEMPLATES[layout])
    return config, processor


def _llava(family, layout, tokenizer, stock):
    image_size, patch = 32, 8
    image_processor = LlavaImageProcessorPil(size={"shortest_edge": image_size},
                                             crop_size={"height": image_size, "width": image_size})
    processor_class = LlavaProcessor if stock else family.processor
    processor = processor_class(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
                                vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                chat_template=CHAT_TEMPLATES[layout])
    config = dict(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=image_size, patch_size=patch, projection_dim=32),
        text_config=_text_config(tokenizer, "llama"), image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default", vision_feature_layer=-1, pad_token_id=tokenizer.pad_token_id,
    )
    return config, processor


_BUILDERS = {"idefics3": _idefics3_like, "smolvlm": _idefics3_like, "qwen2_vl": _qwen_like,
             "qwen2_5_vl": _qwen_like, "llava": _llava}


def _layout(family) -> str:
    layout = family.tiny_layout or family.name
    if layout not in _BUILDERS:
        raise ValueError(f"no tiny builder for family {family.name!r}; the builders are "
                         f"{sorted(_BUILDERS) + ['idefics2']}")
    return layout


def tiny_family_config(family, processor, stock: bool = False, **overrides):
    """The tiny config of ``family`` (a ``Family``) for ``processor``'s tokenizer: Finedefics (default) or the
    stock class's."""
    tokenizer = processor.tokenizer
    layout = _layout(family)
    config, _ = _BUILDERS[layout](family, layout, tokenizer, stock=False)
    if stock:
        return family.stock_config(**config, **overrides)
    return family.config(**config, summary_token_id=tokenizer.eos_token_id, **overrides)


def build_tiny(family, corpus: list[str] | None = None, seed: int = 0, stock: bool = False, **overrides):
    """``(model, processor)`` of a tiny random model of ``family`` (a ``Family``; Idefics2 goes through
    ``tiny.py``). ``stock=True``: the stock transformers classes (the same weights for the same seed), for testing
    that stock checkpoints load unchanged; its processor is the stock one where it can be built here (LLaVA,
    Idefics3), else the Finedefics one (Qwen and SmolVLM's need torchvision for their video processors), whose
    prompts and pixels are the stock processor's."""
    if (family.tiny_layout or family.name) == "idefics2":
        from .tiny import build_tiny_model, build_tiny_processor, build_tiny_tokenizer

        if stock:
            raise ValueError("build the stock Idefics2 from tiny.tiny_config (see tests/test_convert.py)")
        processor = build_tiny_processor(build_tiny_tokenizer(corpus))
        return build_tiny_model(processor, preset="micro", seed=seed, **overrides), processor
    layout = _layout(family)
    tokenizer = build_family_tokenizer(layout, corpus)
    _, processor = _BUILDERS[layout](family, layout, tokenizer, stock)
    config = tiny_family_config(family, processor, stock=stock, **overrides)
    torch.manual_seed(seed)
    model = (family.stock_model if stock else family.model)(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.eval(), processor


__all__ = ["build_tiny", "build_family_tokenizer", "tiny_family_config", "CHAT_TEMPLATES", "TOKENS"]
