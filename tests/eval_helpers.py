"""Helpers for the evaluation tests: small benchmarks on disk, and tiny models whose answers are planted."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image

BIRDS = ["Velmoran Thistlewing", "Corvel Tit", "Ashcombe Reedhopper", "Mirel Finch", "Café Crème Warbler",
         "Tarrow Tit"]
COLOURS = ["red", "green", "blue", "yellow", "white", "black"]


def write_option_benchmark(folder: Path, per_category: int = 2, labels=BIRDS) -> Path:
    """A FOCI-format option file with flat-colour images (one colour per label); returns the file."""
    folder.mkdir(parents=True, exist_ok=True)
    options = {}
    for c, label in enumerate(labels):
        for index in range(per_category):
            name = f"images/{c}-{index}.png"
            (folder / "images").mkdir(exist_ok=True)
            Image.new("RGB", (64, 64), COLOURS[c % len(COLOURS)]).save(folder / name)
            others = [labels[(c + k) % len(labels)] for k in (1, 2, 3)]
            options.setdefault(label, []).append({"image": name, "options": [label, *others], "groundtruth": label})
    path = folder / "options.json"
    path.write_text(json.dumps(options, ensure_ascii=False), encoding="utf-8")
    return path


def small_synthetic_benchmark(folder: Path) -> Path:
    """A real synthetic benchmark folder (the data package's generator), kept small."""
    from finedefics_data.synth import SynthConfig, generate_benchmark

    config = SynthConfig(num_genera=2, species_per_genus=3, train_per_category=2, rare_train_per_category=1,
                         test_per_category=2, rare_fraction=0.34)
    return generate_benchmark(folder, config, progress=False)


def letter_token(scorer, letter: str) -> int:
    """The token id the likelihood scorer reads for ``letter`` (its one-token answer)."""
    (token,) = scorer.continuation_ids(letter, "unused")
    return token


def bias_lm_head(model, token_id: int, bias: float = 50.0) -> None:
    """Give ``lm_head`` a bias that makes ``token_id`` the most likely next token at every position."""
    old = model.lm_head
    new = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    new.weight = old.weight
    with torch.no_grad():
        new.bias.zero_()
        new.bias[token_id] = bias
    model.lm_head = new


@torch.no_grad()
def plant_embedding_answer(model, processor, label: str) -> None:
    """Set a one-decoder-layer model's weights so every image embedding points at ``label``'s text embedding.

    The decoder keeps only uniform causal attention (queries and keys zero) that averages the
    normalised inputs into the first ``kv`` dimensions; the summary and BOS tokens embed to zero.
    The pooled text embedding of a name is then proportional to the sum of its normalised token
    embeddings, and the perceiver (its layers zeroed) emits that same vector for every image, so
    ``cos(image, label) = 1`` and every other name scores lower.
    """
    layer = model.model.text_model.layers[0]
    if len(model.model.text_model.layers) != 1:
        raise ValueError("plant_embedding_answer needs a one-layer decoder (build with text_layers=1)")
    attention, config = layer.self_attn, model.config.text_config
    kv, hidden = attention.v_proj.weight.shape
    head_dim = kv // config.num_key_value_heads
    group = config.num_attention_heads // config.num_key_value_heads
    attention.q_proj.weight.zero_()
    attention.k_proj.weight.zero_()
    attention.v_proj.weight.copy_(torch.eye(kv, hidden))
    attention.o_proj.weight.zero_()
    for kv_head in range(config.num_key_value_heads):  # the first query head of each group writes back
        rows = slice(kv_head * head_dim, (kv_head + 1) * head_dim)
        columns = slice(kv_head * group * head_dim, (kv_head * group + 1) * head_dim)
        attention.o_proj.weight[rows, columns] = torch.eye(head_dim)
    layer.mlp.down_proj.weight.zero_()
    embeddings, tokenizer = model.get_input_embeddings().weight, processor.tokenizer
    embeddings[tokenizer.eos_token_id] = 0
    embeddings[tokenizer.bos_token_id] = 0
    ids = [i for i in processor.tokenize_texts([label])["input_ids"][0].tolist()
           if i not in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)]
    direction = torch.zeros(hidden)
    direction[:kv] = layer.input_layernorm(embeddings[ids])[:, :kv].sum(dim=0)
    resampler = model.model.connector.perceiver_resampler
    for resampler_layer in resampler.layers:
        resampler_layer.self_attn.o_proj.weight.zero_()
        resampler_layer.mlp.down_proj.weight.zero_()
    resampler.latents.copy_(direction.expand_as(resampler.latents))
