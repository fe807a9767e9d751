"""Attribute descriptions from models, following the Finedefics paper's pipeline.

1. A list of useful attributes for the super-category ("bill shape", "wing colour", ...): given, or
   asked of a text LLM with :func:`propose_attributes`.
2. Each attribute's value read off each image by a vision-language model (VQA).
3. The ``attribute: value`` pairs summarised into one sentence by a text LLM.

The models are pluggable callables, so any backend works:

- ``vqa_fn(image, question) -> str`` and ``summarize_fn(prompt) -> str`` / ``llm_fn(prompt) -> str``;
- or a transformers ``pipeline`` directly: ``visual-question-answering`` / ``image-text-to-text``
  for VQA, ``text-generation`` / ``text2text-generation`` / ``summarization`` for text. Their list-
  of-dicts outputs are read with :func:`as_text`.

The prompts live in ``description_prompts/*.txt`` beside this file (:func:`load_prompt`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from .schema import ReadReport, RecordError, Records

logger = logging.getLogger(__name__)

PROMPTS_DIR = Path(__file__).parent / "description_prompts"
# Answers meaning "cannot tell": the attribute is left out of the description, as an occluded part is.
NOT_VISIBLE = {"", "not visible", "unknown", "none", "n/a", "na", "not sure", "cannot tell", "can't tell", "invisible"}


def load_prompt(name: str) -> str:
    """The prompt template ``description_prompts/<name>.txt`` (``attribute_list``, ``attribute_question``,
    ``summary``)."""
    path = PROMPTS_DIR / f"{name}.txt"
    if not path.is_file():
        available = sorted(p.stem for p in PROMPTS_DIR.glob("*.txt"))
        raise FileNotFoundError(f"no prompt {name!r} in {PROMPTS_DIR} (available: {available})")
    return path.read_text(encoding="utf-8").rstrip("\n")


# ----------------------------------------------------------------------------- model outputs
def as_text(output, prompt: str | None = None) -> str:
    """The text in a model's output: a string, or what a transformers pipeline returns.

    Handles ``[{"generated_text": ...}]`` (prompt prefix removed), ``[{"answer": ..., "score": ...}]``
    (the first, i.e. best, answer), ``[{"summary_text": ...}]``, and chat outputs whose
    ``generated_text`` is a list of messages (the last message's content).
    """
    if isinstance(output, str):
        text = output
    elif isinstance(output, (list, tuple)):
        return as_text(output[0], prompt) if output else ""
    elif isinstance(output, dict):
        key = next((k for k in ("generated_text", "answer", "summary_text", "translation_text", "text", "content")
                    if k in output), None)
        if key is None:
            raise ValueError(f"cannot find text in model output with keys {sorted(output)}")
        value = output[key]
        if isinstance(value, list):  # chat format: a list of messages
            return as_text(value[-1] if value else "", prompt)
        text = str(value)
    else:
        raise ValueError(f"cannot read text from model output of type {type(output).__name__}")
    if prompt and text.startswith(prompt):
        text = text[len(prompt):]  # text-generation pipelines return the prompt too
    return text.strip()


def _is_pipeline(fn) -> bool:
    return hasattr(fn, "task") and hasattr(fn, "model") and callable(fn)


def vqa_caller(fn) -> Callable[[object, str], str]:
    """``(image, question) -> answer text`` for a plain callable or a transformers pipeline."""
    if not _is_pipeline(fn):
        return lambda image, question: as_text(fn(image, question))
    if fn.task == "visual-question-answering":
        return lambda image, question: as_text(fn(image=image, question=question, top_k=1))
    if fn.task == "image-text-to-text":
        def ask(image, question):
            messages = [{"role": "user",
                         "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}]
            return as_text(fn(text=messages, max_new_tokens=16, return_full_text=False))
        return ask
    raise ValueError(f"a {fn.task!r} pipeline cannot answer questions about images; use visual-question-answering or "
                     "image-text-to-text")


def text_caller(fn, max_new_tokens: int = 48) -> Callable[[str], str]:
    """``prompt -> text`` for a plain callable or a text-generation / text2text / summarization pipeline."""
    if not _is_pipeline(fn):
        return lambda prompt: as_text(fn(prompt), prompt)
    if fn.task in ("text-generation", "text2text-generation", "summarization"):
        kwargs = {"max_new_tokens": max_new_tokens, "do_sample": False}
        if fn.task == "text-generation":
            kwargs["return_full_text"] = False
        return lambda prompt: as_text(fn(prompt, **kwargs), prompt)
    raise ValueError(f"a {fn.task!r} pipeline does not generate text; use text-generation or text2text-generation")


# ----------------------------------------------------------------------------- step 1: attributes
def parse_attribute_list(text: str, max_attributes: int | None = None) -> list[str]:
    """Attribute names from an LLM's answer: one per line or comma-separated; bullets, numbers dropped."""
    items = []
    for piece in re.split(r"[\n;,]", text):
        item = re.sub(r"^\s*(?:[-*\u2022]|\d+[.)])\s*", "", piece).strip().strip(".:").strip().lower()
        if item and len(item.split()) <= 5 and item not in items:
            items.append(item)
    return items[:max_attributes] if max_attributes else items


def propose_attributes(super_category: str, llm_fn, max_attributes: int = 12, prompt: str | None = None) -> list[str]:
    """Ask a text LLM which attributes tell species of ``super_category`` apart (step 1).

    Raises:
        ValueError: the model's answer holds no attribute names.
    """
    prompt = (prompt or load_prompt("attribute_list")).format(super_category=super_category)
    answer = text_caller(llm_fn)(prompt)
    attributes = parse_attribute_list(answer, max_attributes)
    if not attributes:
        raise ValueError(f"the language model proposed no attributes for {super_category!r} (it answered "
                         f"{answer[:80]!r}); pass an attribute list instead")
    return attributes


# ----------------------------------------------------------------------------- steps 2 and 3
class Descriptions(Records):
    """One description per image (a list of strings), with ``values``: each image's attribute values."""

    def __init__(self, descriptions=(), values=(), report: ReadReport | None = None):
        super().__init__(descriptions, report)
        self.values = list(values)


def clean_answer(text: str) -> str:
    """A VQA answer as an attribute value: first line, no trailing punctuation, lower case."""
    first_line = text.strip().splitlines()[0] if text.strip() else ""
    return first_line.strip().strip(".!").strip().lower()


def one_sentence(text: str) -> str:
    """The first sentence of a model's summary (models often keep talking)."""
    text = " ".join(text.split())
    match = re.match(r"(.+?[.!?])(\s|$)", text)
    sentence = match.group(1) if match else text
    return sentence.strip()


def template_summary(values: dict[str, str], noun: str) -> str:
    """The fallback sentence when the summariser returns nothing: ``"a bird with bill shape: cone, ..."``."""
    if not values:
        return ""
    return f"a {noun} with " + ", ".join(f"{name} {value}" for name, value in values.items()) + "."


def describe_images(images: Sequence, attribute_list: Sequence[str], vqa_fn, summarize_fn, noun: str = "bird",
                    question_prompt: str | None = None, summary_prompt: str | None = None,
                    progress: bool = True) -> Descriptions:
    """One-sentence attribute descriptions of images (steps 2 and 3 of the paper's pipeline).

    For each image, every attribute in ``attribute_list`` is asked of ``vqa_fn``; answers meaning
    "not visible" are left out. The remaining ``attribute: value`` pairs are summarised by
    ``summarize_fn`` into one sentence. An empty summary falls back to a template sentence; an
    image with no visible attribute gets ``""``. Both are counted in the result's ``report``.

    Args:
        images: PIL images or image file paths.
        attribute_list: attribute names, e.g. from :func:`propose_attributes`.
        vqa_fn: ``(image, question) -> str``, or a transformers VQA / image-text-to-text pipeline.
        summarize_fn: ``prompt -> str``, or a transformers text-generation pipeline.
        noun: what the objects are ("bird", "car", ...).
        question_prompt, summary_prompt: override ``description_prompts/attribute_question.txt`` / ``summary.txt``.

    Returns:
        :class:`Descriptions`: the sentences (aligned with ``images``), ``.values`` (the attribute
        values read per image) and ``.report``.
    """
    from tqdm.auto import tqdm

    attribute_list = [a.strip() for a in attribute_list if a and a.strip()]
    if not attribute_list:
        raise ValueError("attribute_list is empty; give attribute names or use propose_attributes()")
    ask, summarise = vqa_caller(vqa_fn), text_caller(summarize_fn)
    question_prompt = question_prompt or load_prompt("attribute_question")
    summary_prompt = summary_prompt or load_prompt("summary")
    report = ReadReport("describe_images")
    sentences, all_values = [], []
    for index, image in enumerate(tqdm(images, desc="describing images", unit="img", disable=not progress)):
        report.rows_read += 1
        picture = _open_image(image, index)
        values = {}
        for attribute in attribute_list:
            answer = clean_answer(ask(picture, question_prompt.format(attribute=attribute, noun=noun)))
            if answer in NOT_VISIBLE:
                report.note("attribute answers 'not visible' or empty (left out)")
                continue
            values[attribute] = answer
        sentences.append(_summarise(values, summarise, summary_prompt, noun, report))
        all_values.append(values)
    report.rows_kept = len(sentences)
    report.log()
    return Descriptions(sentences, all_values, report)


def _summarise(values: dict[str, str], summarise, prompt: str, noun: str, report: ReadReport) -> str:
    if not values:
        report.note("images with no visible attribute (description '')")
        return ""
    pairs = "\n".join(f"{name}: {value}" for name, value in values.items())
    sentence = one_sentence(summarise(prompt.format(noun=noun, pairs=pairs)))
    if not sentence.strip(" .!?"):
        report.note("empty summaries (template sentence used)")
        return template_summary(values, noun)
    return sentence


def _open_image(image, index: int):
    if not isinstance(image, (str, Path)):
        return image
    from PIL import Image

    from .schema import check_image_file

    check_image_file(image, "images", index)
    with Image.open(image) as opened:
        return opened.convert("RGB")


def save_descriptions(path: str | Path, descriptions: Descriptions, keys: Sequence | None = None) -> Path:
    """Write descriptions as JSONL (``key``, ``attribute``, ``attributes``) for later runs."""
    path = Path(path)
    keys = list(keys) if keys is not None else list(range(len(descriptions)))
    if len(keys) != len(descriptions):
        raise RecordError(path, None, "keys", f"{len(keys)} keys for {len(descriptions)} descriptions")
    with open(path, "w", encoding="utf-8") as handle:
        for key, sentence, values in zip(keys, descriptions, descriptions.values):
            handle.write(json.dumps({"key": key, "attribute": sentence, "attributes": json.dumps(values)}) + "\n")
    return path
