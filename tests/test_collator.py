"""The training collator: chat formatting, answer-only labels, seeded multiple choice, contrastive text batches."""

import pytest
import torch
from PIL import Image

from finedefics_training.collator import (
    IGNORE_INDEX,
    FinedeficsDataCollator,
    multiple_choice_prompt,
    stable_category_id,
)


def _example(i, category="Velmoran Thistlewing", attribute="a small bird with a red crown", negatives=None):
    negatives = negatives if negatives is not None else ["Velmoran Ashwing", "Corvel Tit", "Ashcombe Reedhopper"]
    return {
        "image": Image.new("RGB", (64, 64), (30 * i % 255, 80, 120)),
        "category": category,
        "attribute": attribute,
        "neg_categories": negatives,
        "neg_attributes": [f"a bird like number {j}" for j in range(len(negatives))],
        "example_id": i,
    }


def _supervised_text(processor, batch, row):
    labels = batch["labels"][row]
    return processor.tokenizer.decode(labels[labels != IGNORE_INDEX])


def test_stage_one_supervises_only_the_attribute_description(tiny_processor):
    batch = FinedeficsDataCollator(tiny_processor, stage=1)([_example(0), _example(1, attribute="")])
    assert _supervised_text(tiny_processor, batch, 0) == " a small bird with a red crown<end_of_utterance>"
    # A row without a description falls back to naming the bird: nothing is dropped.
    assert _supervised_text(tiny_processor, batch, 1) == " Velmoran Thistlewing<end_of_utterance>"
    image_token = tiny_processor.image_token_id
    assert torch.all(batch["labels"][batch["input_ids"] == image_token] == IGNORE_INDEX)
    assert torch.all(batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX)


def test_stage_two_multiple_choice_uses_hard_negatives_in_a_seeded_order(tiny_processor):
    examples = [_example(i) for i in range(12)]
    collator = FinedeficsDataCollator(tiny_processor, stage=2, closed_set_ratio=1.0, seed=3)
    batch = collator(examples)
    again = FinedeficsDataCollator(tiny_processor, stage=2, closed_set_ratio=1.0, seed=3)(examples)
    other_seed = FinedeficsDataCollator(tiny_processor, stage=2, closed_set_ratio=1.0, seed=4)(examples)
    assert torch.equal(batch["input_ids"], again["input_ids"])
    assert not torch.equal(batch["input_ids"], other_seed["input_ids"])
    letters = {_supervised_text(tiny_processor, batch, row).split("<")[0].strip() for row in range(12)}
    assert letters <= set("ABCD") and len(letters) > 1  # the right answer is not always in one place
    text = tiny_processor.tokenizer.decode(batch["input_ids"][0])
    for name in ["Velmoran Thistlewing", "Velmoran Ashwing", "Corvel Tit", "Ashcombe Reedhopper"]:
        assert name in text
    # The supervised letter points at the true category.
    letter = _supervised_text(tiny_processor, batch, 0).split("<")[0].strip()
    assert f"{letter}. Velmoran Thistlewing" in text


def test_letter_name_answers_give_the_letter_then_the_option_it_names(tiny_processor):
    from finedefics_training.config import FinedeficsTrainingConfig

    examples = [_example(i) for i in range(6)]
    batch = FinedeficsDataCollator(tiny_processor, stage=2, closed_set_ratio=1.0, multiple_choice_answer="letter_name",
                                   seed=3)(examples)
    for row in range(6):
        answer = _supervised_text(tiny_processor, batch, row).split("<")[0].strip()
        letter = answer[0]
        assert answer == f"{letter}. Velmoran Thistlewing"
        assert f"{letter}. Velmoran Thistlewing" in tiny_processor.tokenizer.decode(batch["input_ids"][row])
    with pytest.raises(ValueError, match="multiple_choice_answer"):
        FinedeficsTrainingConfig(output_dir="unused", use_cpu=True, bf16=False, multiple_choice_answer="name")


def test_multiple_choice_prompt_matches_the_foci_layout():
    prompt = multiple_choice_prompt("Which of these birds is shown in the image?", ["w", "x", "y", "z"])
    assert prompt == (
        "Which of these birds is shown in the image?\nChoices:\nA. w\nB. x\nC. y\nD. z\n"
        "Answer with the letter from the given choices directly."
    )


def test_contrastive_texts_are_deduplicated_into_one_batch(tiny_processor):
    examples = [_example(0), _example(1), _example(2, category="Corvel Tit", negatives=["Velmoran Thistlewing"])]
    batch = FinedeficsDataCollator(tiny_processor, stage=1, num_negatives=3)(examples)
    texts = tiny_processor.tokenizer.batch_decode(batch["contrastive_input_ids"], skip_special_tokens=True)
    assert len(texts) == len(set(texts))  # one row per distinct text
    assert batch["category_index"][0] == batch["category_index"][1]
    assert batch["neg_category_index"][2, 0] == batch["category_index"][0]  # a negative that is another row's category
    assert torch.equal(batch["neg_category_index"][2, 1:], torch.tensor([-1, -1]))  # padding
    assert batch["category_ids"][0] == batch["category_ids"][1] == stable_category_id("Velmoran Thistlewing")
    assert batch["neg_attribute_index"].shape == (3, 3)


def test_empty_category_missing_image_and_text_only_stage_one_are_clear_errors(tmp_path, tiny_processor):
    collator = FinedeficsDataCollator(tiny_processor, stage=1)
    with pytest.raises(ValueError, match="example 0: field 'category' is empty"):
        collator([_example(0, category=" ")])
    missing = _example(1)
    missing["image"] = str(tmp_path / "gone.png")
    with pytest.raises(ValueError, match="example 1: image file not found: .*gone.png"):
        collator([missing])
    no_image = _example(2)
    no_image["image"] = None
    with pytest.raises(ValueError, match="field 'image' is missing"):
        collator([no_image])


def test_text_only_instruction_rows_mix_with_image_rows(tiny_processor):
    text_row = {"image": None, "category": "Corvel Tit", "question": "What does a Corvel Tit look like?",
                "answer": "a small grey bird", "example_id": 7}
    batch = FinedeficsDataCollator(tiny_processor, stage=2)([_example(0), text_row])
    assert _supervised_text(tiny_processor, batch, 1) == " a small grey bird<end_of_utterance>"
    assert (batch["input_ids"][1] == tiny_processor.image_token_id).sum() == 0


def test_a_batch_of_text_only_rows_has_no_pixel_values(tiny_processor):
    rows = [{"image": None, "category": "Corvel Tit", "question": "What does a Corvel Tit look like?",
             "answer": "a small grey bird", "example_id": i} for i in range(2)]
    batch = FinedeficsDataCollator(tiny_processor, stage=2)(rows)
    assert "pixel_values" not in batch
    assert _supervised_text(tiny_processor, batch, 0) == " a small grey bird<end_of_utterance>"


# ---------------------------------------------------------------- kinds of rows and the questions' noun
def _prompt_text(processor, batch, row):
    """The chat-formatted prompt of a row: every token before the supervised answer."""
    labels = batch["labels"][row]
    first_answer = int((labels != IGNORE_INDEX).nonzero()[0])
    return processor.tokenizer.decode(batch["input_ids"][row, :first_answer])


def test_description_rows_are_asked_recognition_questions_in_stage_two(tiny_processor):
    # A row as `finedefics data csv` saves pretrain.csv: its own description question, answer = attribute.
    described = {**_example(0), "question": "Describe the car in the picture.",
                 "answer": "a small bird with a red crown"}
    stage_one = FinedeficsDataCollator(tiny_processor, stage=1)([described])
    assert _supervised_text(tiny_processor, stage_one, 0) == " a small bird with a red crown<end_of_utterance>"
    rows = [{**described, "example_id": i} for i in range(8)]
    stage_two = FinedeficsDataCollator(tiny_processor, stage=2, closed_set_ratio=0.5, noun="car")(rows)
    answers = {_supervised_text(tiny_processor, stage_two, i).removesuffix("<end_of_utterance>").strip()
               for i in range(8)}
    assert answers <= {"Velmoran Thistlewing", *"ABCD"} and "Velmoran Thistlewing" in answers and answers & set("ABCD")
    prompts = [_prompt_text(tiny_processor, stage_two, i) for i in range(8)]
    assert not any("Describe" in p for p in prompts)
    assert any("What is the model of the car in the image?" in p for p in prompts)
    assert any("Which of these cars is shown in the image?" in p for p in prompts)


def test_explicit_questions_are_trained_as_given_in_both_stages(tiny_processor):
    open_set = {**_example(0), "question": "Which bird is this?", "answer": "Velmoran Thistlewing"}
    instruction = {"image": None, "category": None, "question": "What is a crown?", "answer": "the top of the head",
                   "example_id": 1}
    batch = FinedeficsDataCollator(tiny_processor, stage=2)([open_set, instruction])
    assert "Which bird is this?" in _prompt_text(tiny_processor, batch, 0)
    assert _supervised_text(tiny_processor, batch, 1) == " the top of the head<end_of_utterance>"
    # Stage I's contrastive terms need an image and a category: an instruction row is refused, by name.
    with pytest.raises(ValueError, match="example 1: stage I rows need an image and a category .* no image"):
        FinedeficsDataCollator(tiny_processor, stage=1)([_example(0), instruction])


def test_training_and_evaluation_ask_the_same_questions_byte_for_byte(tmp_path, tiny_processor):
    """For a noun with an irregular plural: the collator's questions are the evaluation's, as text and as tokens."""
    import json

    from finedefics_data.prompts import ObjectNoun, multiple_choice_options
    from finedefics_eval.benchmarks import load_benchmark
    from finedefics_eval.foci import foci_prompt
    from finedefics_eval.scoring import chat_prompts

    noun = ObjectNoun.of("aircraft", "aircraft")
    names = ["Vireo 200", "Vireo 300", "Kestrel LX", "Osprey 9"]
    example = {**_example(0, category=names[0], negatives=names[1:]), "attribute": ""}
    options_file = tmp_path / "options.json"
    options_file.write_text(json.dumps({names[0]: [{"image": "x.png", "options": names, "groundtruth": names[0]}]}))
    benchmark = load_benchmark(str(options_file), noun=noun)
    assert benchmark.query == "Which of these aircraft is shown in the image?"

    for ratio in (1.0, 0.0):  # multiple choice, then open set
        collator = FinedeficsDataCollator(tiny_processor, stage=2, closed_set_ratio=ratio, noun=noun)
        trained_question, _ = collator._conversation(example, 0)
        shown = list((multiple_choice_options(trained_question) or {}).values())  # the order training showed
        evaluated_question = foci_prompt(benchmark.query, shown) if ratio else benchmark.open_set_question
        assert trained_question == evaluated_question
        batch = collator([example])
        prompt_length = int((batch["labels"][0] != IGNORE_INDEX).nonzero()[0])
        evaluated = tiny_processor(images=[[example["image"]]],
                                   text=chat_prompts(tiny_processor, [evaluated_question]), return_tensors="pt")
        assert torch.equal(batch["input_ids"][0, :prompt_length], evaluated["input_ids"][0])


# ---------------------------------------------------------------- the ablation switches
def _asked(processor, batch, rows):
    """Per row: "describe", "open-set" or "multiple choice", read from the prompt and the supervised answer."""
    kinds = []
    for row in range(rows):
        prompt = _prompt_text(processor, batch, row)
        if "Describe the" in prompt:  # the instruction, or a description row's own question
            kinds.append("describe")
        elif "Choices:" in prompt:
            kinds.append("multiple choice")
        else:
            assert "What is the species of the object in the image?" in prompt, prompt
            kinds.append("open-set")
    return kinds


def _contrastive_texts(processor, batch):
    return set(processor.tokenizer.batch_decode(batch["contrastive_input_ids"], skip_special_tokens=True))


def test_without_attribute_descriptions_stage_one_names_every_row_and_embeds_no_description(tiny_processor):
    described = {**_example(3), "question": "Describe the car in the picture.",
                 "answer": "a small bird with a red crown"}
    rows = [_example(0), _example(1, category="Corvel Tit"), _example(2, attribute=""), described]
    collator = FinedeficsDataCollator(tiny_processor, stage=1, use_attribute_descriptions=False)
    batch = collator(rows)
    # Every row, the description row with its own question included, is asked to name the bird.
    assert _asked(tiny_processor, batch, 4) == ["open-set"] * 4
    assert [_supervised_text(tiny_processor, batch, i) for i in range(4)] == \
        [f" {row['category']}<end_of_utterance>" for row in rows]
    # No description or negative description enters the contrastive batch; names and negative names do.
    texts = _contrastive_texts(tiny_processor, batch)
    assert texts == {"Velmoran Thistlewing", "Corvel Tit", "Velmoran Ashwing", "Ashcombe Reedhopper"}
    assert batch["attribute_index"].tolist() == [-1] * 4
    assert (batch["neg_attribute_index"] == -1).all() and batch["neg_attribute_index"].shape == (4, 3)
    assert (batch["neg_category_index"] >= 0).all()
    # With descriptions (the default) the same rows are described and their descriptions embedded.
    default = FinedeficsDataCollator(tiny_processor, stage=1)(rows)
    assert _asked(tiny_processor, default, 4) == ["describe", "describe", "open-set", "describe"]
    assert "a small bird with a red crown" in _contrastive_texts(tiny_processor, default)
    assert torch.equal(collator(rows)["input_ids"], batch["input_ids"])  # deterministic


def test_stage_one_recognition_ratio_asks_a_seeded_share_recognition_questions(tiny_processor):
    import random

    rows = [_example(i) for i in range(24)]
    collator = FinedeficsDataCollator(tiny_processor, stage=1, stage1_recognition_ratio=0.5, closed_set_ratio=0.5,
                                      seed=7)
    batch = collator(rows)
    asked = _asked(tiny_processor, batch, 24)
    # The choice is the per-example seeded draw: the same rows every call, whatever the batch order.
    chosen = [random.Random(f"7:{i}:Velmoran Thistlewing").random() < 0.5 for i in range(24)]
    assert [kind != "describe" for kind in asked] == chosen
    assert {"describe", "open-set", "multiple choice"} <= set(asked)
    assert torch.equal(collator(rows)["input_ids"], batch["input_ids"])
    again = FinedeficsDataCollator(tiny_processor, stage=1, stage1_recognition_ratio=0.5, closed_set_ratio=0.5, seed=7)
    assert torch.equal(again(rows)["input_ids"], batch["input_ids"])
    reversed_kinds = _asked(tiny_processor, again(rows[::-1]), 24)[::-1]
    assert reversed_kinds == asked
    # Multiple-choice answers name the row's category by its letter; open-set answers name it.
    for row, kind in enumerate(asked):
        answer = _supervised_text(tiny_processor, batch, row).removesuffix("<end_of_utterance>").strip()
        if kind == "multiple choice":
            assert f"{answer}. Velmoran Thistlewing" in _prompt_text(tiny_processor, batch, row)
        elif kind == "open-set":
            assert answer == "Velmoran Thistlewing"
    # The contrastive terms still train on every row, with its description.
    plain = FinedeficsDataCollator(tiny_processor, stage=1, seed=7)(rows)
    for key in ("contrastive_input_ids", "attribute_index", "category_index", "neg_attribute_index",
                "neg_category_index"):
        assert torch.equal(batch[key], plain[key]), key
    assert (batch["attribute_index"] >= 0).all()
    assert set(_asked(tiny_processor, plain, 24)) == {"describe"}
    everyone = FinedeficsDataCollator(tiny_processor, stage=1, stage1_recognition_ratio=1.0, closed_set_ratio=0.0)
    assert set(_asked(tiny_processor, everyone(rows), 24)) == {"open-set"}
    # Stage II is unchanged by the stage I switch.
    stage_two = [FinedeficsDataCollator(tiny_processor, stage=2, seed=7, stage1_recognition_ratio=ratio)(rows)
                 for ratio in (0.0, 0.5)]
    assert torch.equal(stage_two[0]["input_ids"], stage_two[1]["input_ids"])
