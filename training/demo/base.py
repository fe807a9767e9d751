"""The demo's base model: what an MLLM already has before Finedefics, built on a CPU.

Finedefics starts from Idefics2-8B, whose vision encoder (SigLIP) was pre-trained on web image-text
pairs, whose captioning comes from instruction tuning, and whose decoder (Mistral) knows in words
what many categories look like. The demo cannot download it, so it builds a tiny stand-in with the
same three abilities and none of the category-to-image alignment Finedefics adds:

1. **vision pre-training** (``pretrain_vision``): the vision tower and perceiver resampler learn to
   see attributes by classifying every attribute of birds drawn with random attribute values (the
   attribute *pool*: no species, so nothing about any category is learned here);
2. **captioning** and **category knowledge** (``base_dataset``, trained by the ordinary recipe):
   describe pool images (captions in a fixed attribute order), and, in text only, what each
   category looks like and which category a description names (rare categories included: their
   names were seen in text, as a real LLM has read about rare birds).

The base never sees a benchmark image with its category name. With data that have no attribute
annotations (``finedefics demo --data`` on a CSV-made dataset) there is no pool: the vision tower is
not pre-trained and captioning uses the training images' own descriptions.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from finedefics_data.prompts import (
    LETTERS,
    ObjectNoun,
    description_choice_query,
    knowledge_question,
    lookup_choice_query,
    multiple_choice_prompt,
    reverse_knowledge_question,
)

from ..recipe import replace_progress_display

logger = logging.getLogger(__name__)


# A patch is supervised with an attribute's value when it shows at least this many pixels of its parts.
MIN_PART_PIXELS = 3


# ----------------------------------------------------------------------------- the attribute pool
@dataclass
class PoolImages:
    """Pool images with their visible attributes, fixed-order captions and (optionally) per-patch targets."""

    images: list
    attributes: list[dict]
    captions: list[str]
    patch_targets: list | None = None


def attribute_pool(size: int, synth_config, start: int = 0, patch_size: int | None = None) -> PoolImages:
    """``size`` pool images from index ``start``; with ``patch_size``, what each patch shows (``patch_targets``)."""
    from tqdm.auto import tqdm

    from finedefics_data.synth import describe, pool_sample

    pool = PoolImages([], [], [], [] if patch_size else None)
    for index in tqdm(range(start, start + size), desc="drawing the attribute pool", unit="img", leave=False):
        image, visible, _, parts = pool_sample(index, synth_config, part_map=True)
        pool.images.append(image)
        pool.attributes.append(visible)
        pool.captions.append(describe(visible))  # template 0: every caption lists the parts in the same order
        if patch_size:
            pool.patch_targets.append(patch_targets(parts, visible, patch_size))
    return pool


def patch_targets(parts, visible: dict[str, str], patch_size: int):
    """``(patches, attributes)`` value indices: where a patch shows an attribute's parts, that attribute's
    value; -100 (not supervised) elsewhere and for hidden attributes. Patches in row-major order, as the
    vision tower embeds them."""
    import numpy as np

    from finedefics_data.synth import ATTRIBUTE_PARTS, ATTRIBUTES, PARTS

    grid = np.asarray(parts)
    side = grid.shape[0] // patch_size
    per_patch = grid[:side * patch_size, :side * patch_size].reshape(side, patch_size, side, patch_size)
    per_patch = per_patch.transpose(0, 2, 1, 3).reshape(side * side, -1)
    targets = np.full((side * side, len(ATTRIBUTES)), -100, dtype=np.int64)
    for column, name in enumerate(ATTRIBUTES):
        if name in visible:
            codes = [PARTS.index(part) for part in ATTRIBUTE_PARTS[name]]
            shown = np.isin(per_patch, codes).sum(axis=1) >= MIN_PART_PIXELS
            targets[shown, column] = ATTRIBUTES[name].index(visible[name])
    return targets


# ----------------------------------------------------------------------------- vision pre-training
class AttributeProbe(nn.Module):
    """Vision tower + resampler of a Finedefics model with linear attribute heads at two places.

    - image heads read the mean of the resampled image tokens, the very tokens the decoder reads, so
      what they learn to separate is what the decoder will be given;
    - patch heads read every vision-tower patch: each patch that shows a part is told that part's
      attribute value. This dense signal teaches a tiny vision transformer where the parts are in a few
      thousand steps (with image-level labels alone it needs many more, and never resolves the beak).

    Only the heads are discarded afterwards.
    """

    def __init__(self, model, vocabulary: dict[str, tuple[str, ...]]):
        super().__init__()
        self.model = model
        self.names = list(vocabulary)
        hidden, vision_hidden = model.config.text_config.hidden_size, model.config.vision_config.hidden_size
        self.heads = nn.ModuleList([nn.Linear(hidden, len(values)) for values in vocabulary.values()])
        self.patch_heads = nn.ModuleList([nn.Linear(vision_hidden, len(values)) for values in vocabulary.values()])

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None,
                patch_labels: torch.Tensor | None = None):
        outputs = self.model.model.get_image_features(pixel_values, None, return_dict=True)
        tokens = torch.stack(list(outputs.pooler_output))
        pooled = tokens.reshape(pixel_values.shape[0], -1, tokens.shape[-1]).mean(1)
        logits = [head(pooled) for head in self.heads]
        loss = None
        if labels is not None:
            # -100: the attribute is hidden in this image (occluded) and is not supervised.
            loss = sum(nn.functional.cross_entropy(out, labels[:, i], ignore_index=-100)
                       for i, out in enumerate(logits))
        if patch_labels is not None:
            patches = outputs.last_hidden_state
            for i, head in enumerate(self.patch_heads):
                targets = patch_labels[..., i].reshape(-1)
                if (targets >= 0).any():
                    loss = loss + nn.functional.cross_entropy(head(patches).flatten(0, 1), targets, ignore_index=-100)
        return {"loss": loss, "logits": torch.cat(logits, dim=-1)}


@dataclass
class AttributeCollator:
    processor: object
    vocabulary: dict

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        import numpy as np

        pixels = self.processor.image_processor([[row["image"]] for row in rows], return_tensors="pt")["pixel_values"]
        labels = [[values.index(row["attributes"][name]) if name in row["attributes"] else -100
                   for name, values in self.vocabulary.items()] for row in rows]
        batch = {"pixel_values": pixels, "labels": torch.tensor(labels)}
        if rows[0].get("patch_targets") is not None:
            batch["patch_labels"] = torch.from_numpy(np.stack([row["patch_targets"] for row in rows]))
        return batch


def pretrain_vision(model_dir: Path, output_dir: Path, pool: PoolImages, vocabulary: dict, steps: int,
                    batch_size: int, learning_rate: float, seed: int, progress=None) -> dict:
    """Train the vision tower and resampler of ``model_dir`` on attribute classification; save in place.

    Returns the probe's held-out attribute accuracy (image heads) on the last 5% of the pool, never
    trained on.
    """
    from transformers import Trainer, TrainingArguments

    from modeling_finedefics import FinedeficsForConditionalGeneration, FinedeficsProcessor

    from ..checkpoints import last_complete_checkpoint

    model = FinedeficsForConditionalGeneration.from_pretrained(model_dir)
    processor = FinedeficsProcessor.from_pretrained(model_dir)
    probe = AttributeProbe(model, vocabulary)
    model.model.text_model.requires_grad_(False)
    model.lm_head.requires_grad_(False)
    held_out = max(1, len(pool.images) // 20)
    targets = pool.patch_targets or [None] * len(pool.images)
    rows = [{"image": image, "attributes": values, "patch_targets": patches}
            for image, values, patches in zip(pool.images, pool.attributes, targets)]
    train_rows, test_rows = rows[:-held_out], rows[-held_out:]
    args = TrainingArguments(
        output_dir=str(output_dir), max_steps=steps, per_device_train_batch_size=batch_size,
        learning_rate=learning_rate, lr_scheduler_type="cosine", warmup_steps=max(1, steps // 20), weight_decay=0.01,
        logging_steps=max(1, steps // 20), save_strategy="steps", save_steps=max(50, steps // 4), save_total_limit=1,
        report_to="none", seed=seed, data_seed=seed, use_cpu=True, dataloader_num_workers=0,
        remove_unused_columns=False,
    )
    trainer = Trainer(model=probe, args=args, train_dataset=_ListDataset(train_rows),
                      data_collator=AttributeCollator(processor, vocabulary))
    if progress is not None:
        replace_progress_display(trainer, progress.callback())
    trainer.train(resume_from_checkpoint=last_complete_checkpoint(output_dir))
    accuracy = probe_accuracy(probe, AttributeCollator(processor, vocabulary), test_rows)
    model.save_pretrained(model_dir)
    logger.info("vision pre-training: held-out attribute accuracy %s",
                ", ".join(f"{k} {100 * v:.0f}%" for k, v in accuracy.items()))
    return accuracy


@torch.no_grad()
def probe_accuracy(probe: AttributeProbe, collator: AttributeCollator, rows: list[dict]) -> dict[str, float]:
    probe.eval()
    correct, total = Counter(), Counter()
    for start in range(0, len(rows), 128):
        batch = collator(rows[start:start + 128])
        logits = probe(batch["pixel_values"])["logits"]
        offset = 0
        for i, (name, head) in enumerate(zip(probe.names, probe.heads)):
            width = head.out_features
            predicted = logits[:, offset:offset + width].argmax(-1)
            offset += width
            seen = batch["labels"][:, i] >= 0
            correct[name] += int((predicted[seen] == batch["labels"][seen, i]).sum())
            total[name] += int(seen.sum())
    probe.train()
    return {name: correct[name] / total[name] for name in probe.names if total[name]}


class _ListDataset(torch.utils.data.Dataset):
    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.rows[index]


# ----------------------------------------------------------------------------- captioning + knowledge
def category_descriptions(rows, categories: list[dict] | None = None) -> dict[str, str]:
    """Each category's description: its canonical one where the data have it, else its rows' most common.

    The rows' descriptions of one category may differ (per-image wording, hidden parts); the most
    frequent one is taken as what "a text about this category" says (ties: the first seen).
    """
    known = {c["name"]: c["description"] for c in categories or [] if c.get("description")}
    counts: dict[str, Counter] = {}
    for category, description in zip(rows["category"], rows["attribute"]):
        if category not in known and description:
            counts.setdefault(category, Counter())[description] += 1
    derived = {name: counter.most_common(1)[0][0] for name, counter in counts.items()}
    return {**derived, **known}


def knowledge_rows(descriptions: dict[str, str], noun: ObjectNoun, repeats: int,
                   negatives: dict[str, list[str]] | None = None, seed: int = 0) -> list[dict]:
    """Text-only rows: what a category looks like, which category a description names, and the same as a
    multiple choice among the category and its hard negatives (answered with a letter; option order
    drawn anew for every repeat)."""
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(repeats):
        for name, description in descriptions.items():
            which = reverse_knowledge_question(noun, description)
            rows.append({"category": name, "question": knowledge_question(name), "answer": description})
            rows.append({"category": name, "question": which, "answer": name})
            others = [n for n in (negatives or {}).get(name, []) if n in descriptions and n != name][:3]
            if others:
                options = [name, *others]
                rng.shuffle(options)
                rows.append({"category": name, "question": multiple_choice_prompt(which, options),
                             "answer": LETTERS[options.index(name)]})
    return rows


def description_choice_rows(pool: PoolImages, noun: ObjectNoun, seed: int = 0) -> list[tuple]:
    """``(image, question, letter)``: which of four descriptions matches the bird, the wrong ones each one
    part away from the truth (as a sibling's). Teaches answering a multiple choice about an image with a
    letter, with no category name anywhere."""
    import numpy as np

    from finedefics_data.synth import describe, lookalikes

    rng = np.random.default_rng([seed, 0xC401CE])
    rows = []
    for image, visible in zip(pool.images, pool.attributes):
        options = [describe(visible)] + [describe(other) for other in lookalikes(visible, rng, 3)]
        order = [int(i) for i in rng.permutation(len(options))]
        shown = [options[i] for i in order]
        rows.append((image, multiple_choice_prompt(description_choice_query(noun), shown), LETTERS[order.index(0)]))
    return rows


# ----------------------------------------------------------------------------- multiple choice in text
# Description wordings the base's multiple choices are asked with; the premise asks with the one left out
# (``HELD_OUT_TEMPLATE``), so its "multiple choice in text" row measures questions the base never saw.
CHOICE_TEMPLATES = (0, 1, 2, 3)
HELD_OUT_TEMPLATE = 4


def option_words(tokenizer) -> list[str]:
    """Words the tokenizer holds as one token (a leading space and at least three letters): generic options."""
    words = {token[1:] for token in tokenizer.get_vocab() if token.startswith("Ġ") and len(token) > 3}
    return sorted(word for word in words if word.isalpha())


def word_lookup_rows(words: list[str], count: int, seed: int = 0) -> list[dict]:
    """Text-only multiple choices among four words, the question naming one ("Which of these is fen?"):
    the bare skill of finding an option and writing its letter, with no category anywhere."""
    import numpy as np

    rng = np.random.default_rng([seed, 0x100C])
    rows = []
    for _ in range(count):
        options = [words[i] for i in rng.choice(len(words), 4, replace=False)]
        right = int(rng.integers(4))
        rows.append({"category": "", "question": multiple_choice_prompt(lookup_choice_query(options[right]), options),
                     "answer": LETTERS[right]})
    return rows


def category_choice_rows(categories: list[dict], negatives: dict[str, list[str]], noun: ObjectNoun, count: int,
                         seed: int = 0, lookup_share: float = 0.5) -> list[dict]:
    """Text-only multiple choices among a category and its hard negatives, in FOCI's layout: a ``lookup_share``
    of them name the category ("Which of these is Ardran Thistledart?"), the others describe it ("Which bird is
    a slender bird with ...?"), worded with one of ``CHOICE_TEMPLATES`` (details in a random order) when the
    category has attributes, else with its description. Rare categories are asked as often as the others:
    their names were read, not seen. Categories without hard negatives are skipped."""
    import numpy as np

    from finedefics_data.synth import describe

    rng = np.random.default_rng([seed, 0xC401])
    askable = [c for c in categories if [n for n in negatives.get(c["name"], []) if n != c["name"]]]
    rows = []
    for _ in range(count if askable else 0):
        category = askable[int(rng.integers(len(askable)))]
        others = [n for n in negatives[category["name"]] if n != category["name"]][:3]
        options = [others[i] for i in rng.permutation(len(others))]
        right = int(rng.integers(len(options) + 1))
        options.insert(right, category["name"])
        if rng.random() < lookup_share:
            query = lookup_choice_query(category["name"])
        else:
            wording = CHOICE_TEMPLATES[int(rng.integers(len(CHOICE_TEMPLATES)))]
            text = describe(category["attributes"], wording, rng) if category.get("attributes") \
                else category["description"]
            query = reverse_knowledge_question(noun, text)
        rows.append({"category": category["name"], "question": multiple_choice_prompt(query, options),
                     "answer": LETTERS[right]})
    return rows


def held_out_description(category: dict) -> str:
    """How the premise words a category in its multiple choice: a template the base never saw as a choice stem
    (details in a fixed shuffled order), or the category's description when it has no attributes."""
    import zlib

    import numpy as np

    from finedefics_data.synth import describe

    if not category.get("attributes"):
        return category["description"]
    rng = np.random.default_rng([zlib.crc32(category["name"].encode("utf-8")), 0x4E1D])
    return describe(category["attributes"], HELD_OUT_TEMPLATE, rng)


def base_dataset(image_rows: list[tuple], text_rows: list[dict]):
    """One ``datasets`` table: image rows ``(image, question, answer)`` + text-only rows (``category``,
    ``question``, ``answer``)."""
    import datasets

    rows = [{"image": image, "category": "", "question": question, "answer": answer}
            for image, question, answer in image_rows]
    rows += [{"image": None, **row} for row in text_rows]
    features = datasets.Features({"image": datasets.Image(), "category": datasets.Value("string"),
                                  "question": datasets.Value("string"), "answer": datasets.Value("string")})
    table = datasets.Dataset.from_list(rows, features=features)
    return table.add_column("example_id", list(range(len(table))))


__all__ = ["AttributeProbe", "PoolImages", "attribute_pool", "base_dataset", "category_choice_rows",
           "category_descriptions", "description_choice_rows", "held_out_description", "knowledge_rows",
           "option_words", "patch_targets", "pretrain_vision", "word_lookup_rows"]
