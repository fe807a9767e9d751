"""Chat-formatted batches for both Finedefics stages, with every contrastive text of a step in one batch.

A training record (see ``data/schema.py``) holds ``image``, ``category``, ``attribute`` (this image's
attribute description), ``neg_categories`` and ``neg_attributes`` (hard negatives, most similar first),
and may hold an explicit ``question`` and ``answer``. What each kind of row is asked follows
``data/kinds.py``:

- rows with an explicit question are trained as given in either stage, except description rows
  (answer == attribute) in stage II, which are asked a recognition question instead;
- Stage I instruction: "describe the object's attributes" -> the attribute description (rows without a
  description fall back to the open-set name question, so no row is dropped).
- Stage II instructions: open-set ("What is the species of the car in the image?" -> name) and
  closed-set multiple choice whose wrong options are the row's hard negatives, in a seeded order.
- Ablation switches: ``use_attribute_descriptions=False`` treats every row as having no description (stage I
  asks it the open-set name question, description rows included, and no description text enters the
  contrastive batch); ``stage1_recognition_ratio`` asks that share of stage I's description rows (chosen
  per example, seeded) a stage II recognition question instead.

The question texts come from ``finedefics_data.prompts``, the same module the evaluation builds its
prompts with, for the objects' noun the collator is given.

Every model family (``modeling_finedefics.families``) is built the same way: the prompt is the processor's
own chat template, the images go to the processor in the layout it takes (one list per row for Idefics2,
Idefics3 and SmolVLM; one flat list for Qwen2-VL, Qwen2.5-VL and LLaVA, whose pixels are never stacked by
row), and where a template closes no turn after the answer (LLaVA's) the answer ends with EOS.

Only answer tokens are supervised: prompt, image and padding positions get label -100. The answer is what
follows the family's generation prompt ("Assistant:", "<|im_start|>assistant", "ASSISTANT:"), checked
token by token against the processed row.

Work that gives the same result every time it is repeated is cached, keyed by content, in memory bounded
per collator (``cache=True``, the default; ``cache=False`` is the uncached path, kept for the benchmark
``benchmarks/bench_demo_step.py`` and the test that both give the same batches tensor for tensor): decoded
images (keyed by a hash of the file's bytes), rendered chat templates (keyed by the template, the question,
the answer and whether the row has an image), the answer-mask tokenisation (keyed by the text) and the
contrastive texts' tokens (keyed by the text). The processor call that pads the batch and expands the image
tokens runs every step, as do every random choice.

For stage I the collator also tokenises, in ONE padded batch, every distinct text the contrastive
terms need (descriptions, negative descriptions, category names, negative names), and returns index
tensors into it, so the trainer embeds them all in a single decoder pass. For every family but Idefics2 it
also returns the image-summary rows of the batch's images (``summary_input_ids`` /
``summary_attention_mask``, from ``processor.image_embedding_inputs``), which the model's forward turns
into the contrastive image embeddings with the vision features of the same pass.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
from collections import OrderedDict
from dataclasses import dataclass, replace

import torch
from transformers import Idefics2Processor

from finedefics_data.kinds import DESCRIPTION, row_kind
from finedefics_data.prompts import (
    DEFAULT_NOUN,
    LETTERS,
    ObjectNoun,
    describe_instruction,
    multiple_choice_answer,
    multiple_choice_prompt,
    multiple_choice_query,
    open_set_question,
)
from modeling_finedefics.processing_finedefics import read_image

from .losses import ContrastiveTexts

IGNORE_INDEX = -100


def stable_category_id(name: str) -> int:
    """A category id that is the same on every rank and in every process (names are the identity)."""
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8"), digest_size=7).digest(), "big")


def _example_rng(seed: int, example: dict, row: int) -> random.Random:
    """Per-example randomness that does not depend on batch order, so resumed runs see the same data."""
    key = example.get("example_id", row)
    return random.Random(f"{seed}:{key}:{example.get('category', '')}")


@dataclass
class FinedeficsDataCollator:
    """Builds model inputs, answer-only labels and (stage I) contrastive text batches.

    Args:
        processor: a ``FinedeficsProcessor``.
        stage: 1 (attribute description + contrastive texts) or 2 (recognition instructions).
        num_negatives: hard negatives per row used by the contrastive terms and the multiple choice.
        closed_set_ratio: share of stage II rows asked as multiple choice (the rest are open-set).
        multiple_choice_answer: ``"letter"`` ("B", what FOCI's rule reads) or ``"letter_name"`` ("B. <name>":
            the letter, then the option it names; FOCI's rule still reads the letter).
        noun: what the objects are called in the instructions: an ``ObjectNoun`` ("car"/"cars") or a
            singular word whose plural follows the regular English rule.
        seed: seeds the per-example choice of question and option order.
        use_attribute_descriptions: False treats every row as having no attribute description (an ablation).
        stage1_recognition_ratio: share of stage I rows asked a stage II recognition question instead of the
            description instruction (chosen per example with the seeded per-example randomness).
        max_length: prompts longer than this raise an error rather than being truncated (truncation
            would cut image tokens).
        contrastive: stage I builds the contrastive text batch (False: the LM inputs only).
        cache: keep decoded images, rendered chat templates and tokenised texts in bounded, content-keyed
            memory caches (the batches are the same either way; False is the uncached path).
    """

    processor: object
    stage: int = 1
    num_negatives: int = 3
    closed_set_ratio: float = 0.5
    multiple_choice_answer: str = "letter"
    noun: ObjectNoun | str = DEFAULT_NOUN
    seed: int = 0
    max_length: int | None = None
    contrastive: bool = True
    cache: bool = True
    use_attribute_descriptions: bool = True
    stage1_recognition_ratio: float = 0.0

    def __post_init__(self):
        if isinstance(self.noun, str):
            self.noun = ObjectNoun.of(self.noun)
        self._caches = CollatorCaches() if self.cache else None

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        images = self._caches.images if self._caches is not None else None
        for row, example in enumerate(examples):
            _check_example(example, row, self.processor, images)
        if self.stage == 1 and self.contrastive:
            _check_contrastive_rows(examples)
        conversations = [self._conversation(example, row) for row, example in enumerate(examples)]
        batch = self._tokenize_conversations(examples, conversations)
        if self.stage == 1 and self.contrastive:
            texts = self._contrastive_texts(examples)
            if uses_image_summary_rows(self.processor):
                summary_input_ids, summary_attention_mask = self._image_summary_rows(examples, batch)
                texts = replace(texts, summary_input_ids=summary_input_ids,
                                summary_attention_mask=summary_attention_mask)
            batch.update(texts.as_batch_columns())
        return batch

    # ------------------------------------------------------------ instructions
    def _conversation(self, example: dict, row: int) -> tuple[str, str]:
        """(user text, assistant answer) for one example (``data/kinds.py`` says which rows keep their own)."""
        rng = _example_rng(self.seed, example, row)
        # Stage II asks recognition questions; stage I asks a seeded share of its rows the same (single stage).
        recognition = self.stage == 2 or (self.stage1_recognition_ratio > 0
                                          and rng.random() < self.stage1_recognition_ratio)
        description = example.get("attribute") if self.use_attribute_descriptions else None
        if example.get("question") and not (row_kind(example) == DESCRIPTION and (recognition or not description)):
            return example["question"], example["answer"]  # an explicit question, trained as given
        if not recognition and description:
            return describe_instruction(self.noun), description
        negatives = [n for n in (example.get("neg_categories") or []) if n != example["category"]]
        if recognition and negatives and rng.random() < self.closed_set_ratio:
            options = [example["category"]] + negatives[: self.num_negatives]
            rng.shuffle(options)
            prompt = multiple_choice_prompt(multiple_choice_query(self.noun), options)
            letter = LETTERS[options.index(example["category"])]
            return prompt, multiple_choice_answer(letter, example["category"], self.multiple_choice_answer)
        return open_set_question(self.noun), example["category"]

    def _tokenize_conversations(self, examples: list[dict], conversations: list[tuple[str, str]]) -> dict:
        processor = self.processor
        eos = processor.tokenizer.eos_token
        prompts, full_texts = [], []
        for example, (question, answer) in zip(examples, conversations):
            has_image = example.get("image") is not None
            if self._caches is None:
                prompt, full = _chat_texts(processor, eos, has_image, question, answer)
            else:
                key = (processor.chat_template, eos, has_image, question, answer)
                prompt, full = self._caches.chat.get_or_make(
                    key, lambda: _chat_texts(processor, eos, has_image, question, answer))
            prompts.append(prompt)
            full_texts.append(full)
        images = processor.images_per_text([example.get("image") for example in examples])
        batch = processor(images=images, text=full_texts, return_tensors="pt", padding=True, padding_side="right",
                          **processor.chat_text_kwargs(full_texts))
        if self.max_length is not None and batch["input_ids"].shape[1] > self.max_length:
            raise ValueError(
                f"a training sequence is {batch['input_ids'].shape[1]} tokens, more than "
                f"max_length={self.max_length}; raise max_length (truncation would cut image tokens)"
            )
        tokens = self._caches.tokens if self._caches is not None else None
        batch["labels"] = _answer_labels(processor, prompts, full_texts, batch, tokens)
        return dict(batch)

    def _image_summary_rows(self, examples: list[dict], batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage I's image-summary rows (``processor.image_embedding_inputs``) of the batch's images, in order.

        Families other than Idefics2 embed an image as its expanded placeholder + summary token through their
        multimodal base model; the model's forward runs them beside the prompts, reusing the prompts' vision
        features (the vision tower runs once), so the rows must stand for the same images in the same order.
        """
        summary = self.processor.image_embedding_inputs([example["image"] for example in examples])
        for name, value in summary.items():
            if name in batch and not name.endswith(("input_ids", "attention_mask", "mm_token_type_ids")):
                if not torch.equal(value, batch[name]):
                    raise ValueError(f"the image-summary rows' {name} differ from the prompts' (the processor does "
                                     "not encode an image the same way twice): the forward could not reuse them")
        return summary["input_ids"], summary["attention_mask"]

    # ------------------------------------------------------- contrastive texts
    def _contrastive_texts(self, examples: list[dict]) -> ContrastiveTexts:
        texts: dict[str, int] = {}

        def index_of(text: str | None) -> int:
            if not text or not text.strip():
                return -1
            return texts.setdefault(text, len(texts))

        k = self.num_negatives
        attribute_index, category_index, category_ids = [], [], []
        neg_attribute_index, neg_category_index, neg_category_ids = [], [], []
        for example in examples:
            attribute_index.append(index_of(example.get("attribute") if self.use_attribute_descriptions else None))
            category_index.append(index_of(example["category"]))
            category_ids.append(stable_category_id(example["category"]))
            names = list(example.get("neg_categories") or [])[:k]
            descriptions = list(example.get("neg_attributes") or [])[:k] if self.use_attribute_descriptions else []
            neg_category_index.append(_pad([index_of(n) for n in names], k))
            neg_category_ids.append(_pad([stable_category_id(n) for n in names], k))
            neg_attribute_index.append(_pad([index_of(d) for d in descriptions], k))
        encoded = self._tokenize_texts(list(texts))

        def per_negative(values: list[list[int]]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.long).reshape(len(examples), k)

        return ContrastiveTexts(
            contrastive_input_ids=encoded["input_ids"], contrastive_attention_mask=encoded["attention_mask"],
            attribute_index=torch.tensor(attribute_index), category_index=torch.tensor(category_index),
            category_ids=torch.tensor(category_ids), neg_attribute_index=per_negative(neg_attribute_index),
            neg_category_index=per_negative(neg_category_index), neg_category_ids=per_negative(neg_category_ids),
        )


    def _tokenize_texts(self, texts: list[str]):
        """``processor.tokenize_texts(texts, padding_side="right")``. Cached: a step whose texts were all seen before
        pads their stored rows as ``tokenize_texts`` pads them; any other step calls ``tokenize_texts`` itself
        (which checks every text, with its own errors) and stores its rows."""
        processor = self.processor
        if self._caches is None:
            return processor.tokenize_texts(texts, padding_side="right")
        cache = self._caches.contrastive_rows
        keys = [(id(processor.tokenizer), text) for text in texts]
        if not all(key in cache for key in keys):
            encoded = processor.tokenize_texts(texts, padding_side="right")
            for key, ids, mask in zip(keys, encoded["input_ids"], encoded["attention_mask"]):
                cache.put(key, ids[mask.bool()].tolist())
            return encoded
        rows = [cache.get(key) for key in keys]
        return processor.tokenizer.pad({"input_ids": rows}, padding=True, return_tensors="pt", padding_side="right")


def _chat_texts(processor, eos: str | None, has_image: bool, question: str, answer: str) -> tuple[str, str]:
    """(prompt with the generation prompt, prompt + answer) of one row, in the processor's chat template."""
    image_part = [{"type": "image"}] if has_image else []
    user = {"role": "user", "content": image_part + [{"type": "text", "text": question}]}
    assistant = {"role": "assistant", "content": [{"type": "text", "text": answer}]}
    prompt = processor.apply_chat_template([user], add_generation_prompt=True)
    full = processor.apply_chat_template([user, assistant]).rstrip("\n")
    if eos and full.rstrip().endswith(answer.rstrip()):
        # The template closes no turn after the answer (LLaVA's "ASSISTANT: answer "): end it with EOS, as
        # the family's own training data does, so the model learns to stop where generation stops.
        full = full.rstrip() + eos
    return prompt, full


class BoundedCache:
    """A least-recently-used mapping holding at most ``max_entries`` values and ``max_bytes`` of them (as
    ``size`` measures each); a value larger than the whole budget is returned but not kept."""

    def __init__(self, max_entries: int, max_bytes: int | None = None, size=None):
        self.max_entries, self.max_bytes, self.size = max_entries, max_bytes, size
        self._values: OrderedDict = OrderedDict()
        self._sizes: dict = {}
        self.bytes = 0
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, key) -> bool:
        return key in self._values

    def get(self, key):
        self.hits += 1
        self._values.move_to_end(key)
        return self._values[key]

    def put(self, key, value) -> None:
        nbytes = self.size(value) if self.size is not None else 0
        if self.max_bytes is not None and nbytes > self.max_bytes:
            return
        if key in self._values:
            self.bytes -= self._sizes[key]
        self._values[key] = value
        self._values.move_to_end(key)
        self._sizes[key] = nbytes
        self.bytes += nbytes
        while len(self._values) > self.max_entries or (self.max_bytes is not None and self.bytes > self.max_bytes):
            old, _ = self._values.popitem(last=False)
            self.bytes -= self._sizes.pop(old)

    def get_or_make(self, key, make):
        if key in self._values:
            return self.get(key)
        self.misses += 1
        value = make()  # raises for a bad input, which is then not cached
        self.put(key, value)
        return value


def _image_bytes(image) -> int:
    return image.width * image.height * len(image.getbands())


class CollatorCaches:
    """The collator's content-keyed caches (see the module docstring); sizes are per collator."""

    IMAGE_BYTES = 256 * 2**20  # decoded pixels kept (4096 RGB images of 64 px take 48 MiB)
    IMAGE_ENTRIES = 65536
    TEXT_ENTRIES = 65536

    def __init__(self):
        self.images = BoundedCache(self.IMAGE_ENTRIES, self.IMAGE_BYTES, size=_image_bytes)
        self.chat = BoundedCache(self.TEXT_ENTRIES)
        self.tokens = BoundedCache(self.TEXT_ENTRIES)
        self.contrastive_rows = BoundedCache(self.TEXT_ENTRIES)


def uses_image_summary_rows(processor) -> bool:
    """Whether the model embeds images from image-summary rows that the batch must carry (every family but
    Idefics2, whose forward builds its summary rows from the resampled image features itself)."""
    return not isinstance(processor, Idefics2Processor) and hasattr(processor, "image_embedding_inputs")


def _answer_labels(processor, prompts: list[str], full_texts: list[str], batch,
                   cache: BoundedCache | None = None) -> torch.Tensor:
    """Labels that supervise each row's answer tokens only (what follows its prompt), -100 elsewhere.

    The answer is the part of the chat-formatted row after the generation prompt, whatever the family's
    assistant prefix ("Assistant:", "<|im_start|>assistant\\n", "ASSISTANT:"). Its tokens are counted on the
    text before image expansion (which only touches the prompt) and are the last real tokens of the
    processed row; both facts are checked, so a template whose prompt does not tokenise as a prefix of
    prompt + answer is an error rather than a silently shifted mask.
    """
    tokenizer = processor.tokenizer
    prompt_ids = _token_ids(tokenizer, prompts, processor.chat_text_kwargs(prompts), cache)
    full_ids = _token_ids(tokenizer, full_texts, processor.chat_text_kwargs(full_texts), cache)
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    for row, (prompt, full) in enumerate(zip(prompt_ids, full_ids)):
        if full[: len(prompt)] != prompt or len(full) == len(prompt):
            raise ValueError(f"row {row}: the chat template's prompt {prompts[row][-40:]!r} does not tokenise as a "
                             "prefix of the prompt + answer, so the answer tokens cannot be told apart")
        answer = torch.tensor(full[len(prompt):], dtype=input_ids.dtype)
        real = attention_mask[row].nonzero().flatten()
        positions = real[len(real) - len(answer):]
        if len(real) < len(answer) or not torch.equal(input_ids[row, positions], answer):
            raise ValueError(f"row {row}: the processor's tokens do not end with the answer's tokens "
                             f"({full_texts[row][-40:]!r}); the answer mask would be wrong")
        labels[row, positions] = answer  # prompt, image and padding tokens are never supervised
    return labels


def _token_ids(tokenizer, texts: list[str], kwargs: dict, cache: BoundedCache | None) -> list[list[int]]:
    """``tokenizer(texts, **kwargs)["input_ids"]`` (no padding: each text's ids depend on that text alone); with a
    cache, the texts not seen before are tokenised in one call."""
    if cache is None:
        return tokenizer(texts, **kwargs)["input_ids"]
    flags = tuple(sorted(kwargs.items()))
    keys = [(id(tokenizer), flags, text) for text in texts]
    known = {key: cache.get(key) for key in dict.fromkeys(keys) if key in cache}
    missing = list(dict.fromkeys(text for key, text in zip(keys, texts) if key not in known))
    if missing:
        for text, ids in zip(missing, tokenizer(missing, **kwargs)["input_ids"]):
            known[(id(tokenizer), flags, text)] = ids
            cache.put((id(tokenizer), flags, text), ids)
    return [known[key] for key in keys]


def _check_contrastive_rows(examples: list[dict]) -> None:
    """Stage I's contrastive terms align each row's image with its category: both must be there."""
    for row, example in enumerate(examples):
        if example.get("image") is None or not example.get("category"):
            missing = "image" if example.get("image") is None else "category"
            raise ValueError(f"{_where(example, row)}: stage I rows need an image and a category for the contrastive "
                             f"terms; this one has no {missing} (an instruction row: train it in stage II)")


def _pad(values: list[int], k: int) -> list[int]:
    return (values + [-1] * k)[:k]


def _where(example: dict, row: int) -> str:
    return f"example {example.get('example_id', row)}"


def _check_example(example: dict, row: int, processor, images: BoundedCache | None = None) -> None:
    where = _where(example, row)
    category = example.get("category")
    if example.get("question") and not example.get("answer"):
        raise ValueError(f"{where}: field 'answer' is empty for question {example['question']!r}")
    if not example.get("question") and (not isinstance(category, str) or not category.strip()):
        raise ValueError(f"{where}: field 'category' is empty; a row without its own question needs a category name")
    if example.get("image") is None:
        if example.get("question") and example.get("answer"):
            return  # a text-only instruction row (e.g. category knowledge)
        raise ValueError(f"{where} ({category}): field 'image' is missing")
    if isinstance(example["image"], (str, dict)):
        # A path, or a dataset's undecoded image: open it now (with the processor's loader) so that a bad file
        # is reported with its name and row.
        try:
            example["image"] = _open_image(example["image"], processor, images)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from error


def _open_image(image: str | dict, processor, cache: BoundedCache | None = None):
    """A file path, or a ``datasets`` image cell ``{"bytes", "path"}`` (see ``load_training_dataset``), as RGB.

    With a cache, a file whose bytes were decoded before is not decoded again (the key is a hash of its bytes, so
    a changed file is decoded afresh); the caller gets its own copy of the image.
    """
    if cache is None:
        return _decode_image(image, processor)
    data = image.get("bytes") if isinstance(image, dict) else None
    if data is None:
        path = image if isinstance(image, str) else image.get("path")
        if not path or not os.path.isfile(path):
            return _decode_image(image, processor)  # the uncached path's error
        with open(path, "rb") as file:
            data = file.read()
    key = hashlib.blake2b(data, digest_size=20).digest()
    return cache.get_or_make(key, lambda: _decode_image(image, processor)).copy()


def _decode_image(image: str | dict, processor):
    if isinstance(image, str):
        return processor.load_image(image)
    data, path = image.get("bytes"), image.get("path")
    if data is None:
        if not path:
            raise ValueError("field 'image' holds neither bytes nor a path")
        return processor.load_image(path)
    return read_image(io.BytesIO(data), f"{path or 'image'} (as stored in the dataset)")
