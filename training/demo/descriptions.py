"""``finedefics demo --descriptions generated``: the training images described by the base model itself.

The paper builds its attribute descriptions without annotations: a multimodal model answers one question per
attribute for each image and the answers are summarised into a sentence. This phase runs that pipeline
(``finedefics data describe``, the same code, cache and report) on the benchmark's training split, with the
demo's base model as the VQA model and the benchmark's attribute list as the questions. The variant
``finedefics_generated`` then trains on those descriptions instead of the benchmark's ground truth.

Two stand-ins, both named in ``describe_report.json`` and in the demo's report:

- the miniature base was taught to describe whole birds, not to answer one attribute at a time: asked "What is
  the beak of the bird in the image?" it answers with a whole description ("a slender bird with red plumage,
  ..., a hooked beak, ..."). :func:`read_benchmark_value` reads the asked attribute's value out of that answer
  with the benchmark's description parser; an answer that does not state it counts as "not visible";
- the summary LLM is the benchmark's own sentence grammar (:func:`benchmark_sentence`), so the generated
  descriptions differ from the ground truth only in the values the base read.

The generated descriptions are scored against the benchmark's truth by the same parser
(:func:`attribute_accuracy`): of the attribute values each training image's ground-truth description states,
the share its generated description states alike.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from finedefics_data.synth import ATTRIBUTE_QUESTION_NAMES, describe, parse_description

logger = logging.getLogger(__package__)

GENERATED = "generated"
BENCHMARK = "benchmark"
SOURCES = (BENCHMARK, GENERATED)
_KEY_OF = {question: key for key, question in ATTRIBUTE_QUESTION_NAMES.items()}
# Questions per generate call: a tiny model's decoding step costs about the same for 32 rows as for 128.
DESCRIBE_BATCH_SIZE = 128


def read_benchmark_value(attribute: str, answer: str) -> str:
    """The asked attribute's value as the benchmark's parser reads it in ``answer``, else "not visible"."""
    return parse_description(answer).get(_KEY_OF[attribute], "not visible")


def benchmark_sentence(values: dict[str, str]) -> str:
    """The benchmark's canonical sentence (template 0) for the values read; the template sentence when the base
    read no build or plumage (every benchmark sentence states both)."""
    from finedefics_data.describe import template_summary

    keyed = {_KEY_OF[attribute]: value for attribute, value in values.items()}
    if "build" not in keyed or "plumage" not in keyed:
        return template_summary(values, "bird")
    return describe(keyed)


def attribute_accuracy(truth: list[str], generated: list[str]) -> dict:
    """Of the values each ground-truth description states, the share its generated description states alike,
    overall and per attribute (both read by the benchmark's parser; scored as the premise scores descriptions)."""
    from .premise import recall

    scored = recall([parse_description(text) for text in generated], [parse_description(text) for text in truth])
    return {"overall": None if scored["recall"] is None else round(scored["recall"], 4),
            "values_scored": scored["values"],
            "per_attribute": {ATTRIBUTE_QUESTION_NAMES[key]: round(share, 4)
                              for key, share in scored["per_attribute"].items()}}


def generate_descriptions(data, base: Path, output_dir: Path, report_file: Path) -> dict:
    """Describe ``data``'s training split with ``base`` into ``output_dir`` (a dataset folder the variants train
    on); write and return the record the demo's report keeps under ``descriptions``.

    ``data`` must be the synthetic benchmark, whose parser reads the answers (``run_demo`` refuses ``--data``
    with ``--descriptions generated`` before anything runs).

    Raises:
        ValueError: the base described none of the training images (a base that does not describe, as
            ``--quick``'s micro one, or data whose answers the benchmark's parser cannot read).
    """
    from finedefics_data.describe_run import DescribeSettings, describe_folder

    from .premise import DESCRIPTION_MAX_NEW_TOKENS

    genus = {category["name"]: category["genus"] for category in data.categories}
    settings = DescribeSettings(vqa_model=str(base), attributes=list(ATTRIBUTE_QUESTION_NAMES.values()),
                                noun=data.noun, batch_size=DESCRIBE_BATCH_SIZE,
                                max_new_tokens=DESCRIPTION_MAX_NEW_TOKENS, splits=["train"], taxonomy=genus,
                                device="cpu")
    report = describe_folder(data.source, output_dir, settings, resume=True, read_value=read_benchmark_value,
                             sentence_for=benchmark_sentence)
    if report["described"] == 0:
        raise ValueError(f"the base model {base} described none of the {report['images']} training images (no "
                         "attribute value could be read from its answers): --descriptions generated needs a base "
                         "that describes images (the shipped one does; --quick's micro base does not)")
    # Scored from the folder the variants will train on (not from describe's memory): what is scored is what trains.
    generated = [row["attribute"] for row in _text_rows(output_dir)]
    truth = list(data.splits["train"]["attribute"])
    record = {"source": GENERATED, "vqa_model": str(base), "folder": str(output_dir),
              "images": report["images"], "described": report["described"],
              "attribute_accuracy": attribute_accuracy(truth, generated),
              "answers": report["answers"], "seconds": report["seconds"],
              "images_per_second": report["images_per_second"],
              "answer_reader": report["answer_reader"], "summary": report["models"]["summary"]["name"],
              "negatives": report["negatives"]}
    report_file.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    logger.info("generated descriptions: %d of %d training images described, attribute values %.1f%% right "
                "(%d scored)", record["described"], record["images"],
                100 * record["attribute_accuracy"]["overall"], record["attribute_accuracy"]["values_scored"])
    return record


def _text_rows(folder: Path):
    import datasets

    return datasets.load_from_disk(str(folder))["train"].select_columns(["attribute"])
