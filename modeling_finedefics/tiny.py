"""Tiny Finedefics models for tests, the CPU demo and debugging: built from configs, no download.

    from modeling_finedefics.tiny import build_tiny_tokenizer, build_tiny_processor, build_tiny_model

    tokenizer = build_tiny_tokenizer(corpus)            # BPE trained offline with `tokenizers`
    processor = build_tiny_processor(tokenizer)         # 64 px images, 8 image tokens per image
    model = build_tiny_model(processor, preset="tiny")  # ~4M parameters, same architecture as Idefics2-8B

The tokenizer has the special tokens Idefics2 needs (``<s>``, ``</s>``, ``<unk>``, ``<pad>``,
``<fake_token_around_image>``, ``<image>``, ``<end_of_utterance>``) and Idefics2's chat template.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import Idefics2ImageProcessorPil, PreTrainedTokenizerFast

from .configuration_finedefics import FinedeficsConfig
from .modeling_finedefics import FinedeficsForConditionalGeneration
from .processing_finedefics import FinedeficsProcessor

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<fake_token_around_image>", "<image>", "<end_of_utterance>"]

# Idefics2's chat template (as shipped with HuggingFaceM4/idefics2-8b).
CHAT_TEMPLATE = (
    "{% for message in messages %}{{message['role'].capitalize()}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# Words any instruction-tuned recognition model sees, so a tiny tokenizer covers the prompts.
BASE_CORPUS = [
    "User: What is the species of the bird in the image? Assistant: The bird is a",
    "Which of these birds is shown in the image? Choices: A. B. C. D. "
    "Answer with the letter from the given choices directly.",
    "Describe the attributes of the object in the image. The object has a, an, the, with, and, of, its, is, it.",
    "Answer: A B C D E. a b c d e. 0 1 2 3 4 5 6 7 8 9 . , : ; ! ? ' \" ( ) - _ /",
]

PRESETS = {
    # ~1M parameters: unit tests.
    "micro": dict(vision_hidden=64, vision_layers=2, vision_heads=2, text_hidden=128, text_layers=2,
                  text_heads=4, text_kv_heads=2, text_intermediate=384, resampler_depth=1),
    # ~4M parameters: the CPU demo.
    "tiny": dict(vision_hidden=96, vision_layers=3, vision_heads=4, text_hidden=192, text_layers=4,
                 text_heads=4, text_kv_heads=2, text_intermediate=512, resampler_depth=2),
}


def build_tiny_tokenizer(corpus: list[str] | None = None, vocab_size: int = 2048, model_max_length: int = 512):
    """A byte-level BPE tokenizer trained offline on ``corpus`` (plus prompt words), Idefics2 special tokens."""
    texts = list(BASE_CORPUS) + list(corpus or [])
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    bos_id = backend.token_to_id("<s>")
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=model_max_length,
        extra_special_tokens=["<fake_token_around_image>", "<image>", "<end_of_utterance>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    # Batched generation needs left padding; `tokenize_texts` and the training collators choose their own.
    tokenizer.padding_side = "left"
    return tokenizer


def build_tiny_processor(tokenizer, image_size: int = 64, image_seq_len: int = 8) -> FinedeficsProcessor:
    """The Idefics2 processor at ``image_size`` px (no image splitting) with ``image_seq_len`` tokens per image."""
    image_processor = Idefics2ImageProcessorPil(
        do_image_splitting=False,
        size={"height": image_size, "width": image_size},
    )
    return FinedeficsProcessor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_len=image_seq_len, chat_template=CHAT_TEMPLATE
    )


def tiny_config(processor: FinedeficsProcessor, preset: str = "tiny", **overrides) -> FinedeficsConfig:
    """A FinedeficsConfig sized by ``preset`` ("micro" or "tiny"), with token ids from the processor."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    size = {**PRESETS[preset], **{k: v for k, v in overrides.items() if k in PRESETS[preset]}}
    extra = {k: v for k, v in overrides.items() if k not in PRESETS[preset]}
    tokenizer = processor.tokenizer
    image_size = processor.image_processor.size["height"]
    head_dim = size["text_hidden"] // size["text_heads"]
    return FinedeficsConfig(
        vision_config=dict(
            hidden_size=size["vision_hidden"], intermediate_size=4 * size["vision_hidden"],
            num_hidden_layers=size["vision_layers"], num_attention_heads=size["vision_heads"],
            image_size=image_size, patch_size=8,
        ),
        perceiver_config=dict(
            hidden_size=size["text_hidden"], resampler_n_latents=processor.image_seq_len,
            resampler_depth=size["resampler_depth"], resampler_n_heads=size["text_heads"],
            resampler_head_dim=head_dim, num_key_value_heads=size["text_kv_heads"],
        ),
        text_config=dict(
            model_type="mistral", vocab_size=len(tokenizer), hidden_size=size["text_hidden"],
            intermediate_size=size["text_intermediate"], num_hidden_layers=size["text_layers"],
            num_attention_heads=size["text_heads"], num_key_value_heads=size["text_kv_heads"],
            head_dim=head_dim, max_position_embeddings=tokenizer.model_max_length,
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, rms_norm_eps=1e-5,
        ),
        image_token_id=processor.image_token_id,
        summary_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **extra,
    )


def build_tiny_model(processor: FinedeficsProcessor, preset: str = "tiny", seed: int = 0, **overrides):
    """A randomly initialised FinedeficsForConditionalGeneration, deterministic for ``seed``."""
    config = tiny_config(processor, preset, **overrides)
    torch.manual_seed(seed)
    model = FinedeficsForConditionalGeneration(config)
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.generation_config.eos_token_id = [
        processor.tokenizer.eos_token_id,
        processor.tokenizer.convert_tokens_to_ids("<end_of_utterance>"),
    ]
    return model


__all__ = ["build_tiny_tokenizer", "build_tiny_processor", "build_tiny_model", "tiny_config", "PRESETS"]
