"""Material for the `finedefics data describe` tests: small labelled image folders and tiny model folders (stock
image-text-to-text families and a causal LM), all built offline from configs."""

from pathlib import Path

import torch
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
DEMO_BASE = REPO / "training" / "demo_base"
VEHICLES = {"Halden Rook": "red", "Mirel Vane": "blue", "Corvel Dart": "green"}
ISSUE_ATTRIBUTES = "body colour,wheels,windows,roof,stripe"


def draw_vehicle(colour: str, variant: int, size=(64, 48)) -> Image.Image:
    """A flat-coloured body with a dark window band and two wheels; ``variant`` moves the parts a little."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([6 + variant, 16, 58 - variant, 36], fill=colour)
    draw.rectangle([16, 18 + variant % 3, 44, 24 + variant % 3], fill="black")
    for x in (14, 46):
        draw.ellipse([x - 5, 32, x + 5, 42], fill="dimgray")
    return image


def write_image_folder(root: Path, per_split: dict[str, int] | None = None, categories=VEHICLES) -> Path:
    """``root/<split>/<category>/<n>.png`` (``per_split=None``: no split folders, 2 images per category)."""
    splits = per_split or {"": 2}
    for split, count in splits.items():
        for category, colour in categories.items():
            folder = root / split / category if split else root / category
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                variant = index + (10 if split == "test" else 0)
                draw_vehicle(colour, variant).save(folder / f"{index}.png")
    return root


def save_stock_idefics2(folder: Path, chat_template: bool = True) -> Path:
    """A tiny random stock Idefics2 (transformers' own classes and processor), saved as a Hub model would be."""
    from transformers import Idefics2Config, Idefics2ForConditionalGeneration, Idefics2Processor

    from modeling_finedefics.tiny import build_tiny_processor, build_tiny_tokenizer, tiny_config

    processor = build_tiny_processor(build_tiny_tokenizer(["a red car with black wheels"]))
    config = tiny_config(processor, "micro").to_dict()
    for key in ("embed_dim", "init_temperature", "min_temperature", "max_temperature", "summary_token_id",
                "model_type", "auto_map", "architectures", "object_noun", "object_noun_plural"):
        config.pop(key, None)
    torch.manual_seed(0)
    Idefics2ForConditionalGeneration(Idefics2Config(**config)).save_pretrained(folder)
    tokenizer = processor.tokenizer
    if not chat_template:
        tokenizer.chat_template = None
    Idefics2Processor(image_processor=processor.image_processor, tokenizer=tokenizer,
                      image_seq_len=processor.image_seq_len,
                      chat_template=processor.chat_template if chat_template else None).save_pretrained(folder)
    return folder


def save_stock_family(family: str, folder: Path) -> Path:
    """A tiny random stock model of ``family`` ("qwen2_vl", "smolvlm", ...) with its processor."""
    from modeling_finedefics.families import FAMILIES

    model, processor = FAMILIES[family].build_tiny(stock=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def save_tiny_causal_lm(folder: Path, teach: dict[str, str] | None = None, seed: int = 0, steps: int = 150) -> Path:
    """A tiny Llama causal LM with an offline-trained tokenizer and no chat template (a base LM).

    ``teach`` maps prompts to the completions the model learns to write after them (a few hundred optimiser
    steps on those sequences): a random model writes nothing an attribute-list parser can read.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    from modeling_finedefics.tiny import build_tiny_tokenizer

    texts = [prompt + completion for prompt, completion in (teach or {}).items()]
    tokenizer = build_tiny_tokenizer(["body colour", "wheels", "windows", *texts], vocab_size=512)
    tokenizer.chat_template = None
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    if texts:
        _teach(model, tokenizer, texts, steps)
    model.eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _teach(model, tokenizer, texts: list[str], steps: int) -> None:
    tokenizer.padding_side = "right"
    batch = tokenizer([text + tokenizer.eos_token for text in texts], padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimiser.step()
        optimiser.zero_grad()
    tokenizer.padding_side = "left"
